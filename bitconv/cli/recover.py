"""`bitconv recover` and `bitconv synth`: the Typer commands over `bitconv.train.pipeline.recover` and
`bitconv.train.synthesize.synthesize` (no logic here)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

HELP = """Train a quantized model back to accuracy (straight-through QAT, optional distillation) and write it
as a bitconv folder.

Examples:

  bitconv recover MODEL_DIR --bits 1.58 --task classify --train ../shared/data/sst2/train.tsv
      --eval ../shared/data/sst2/validation.tsv --out minilm-sst2-1.58
      (classify defaults: --distill --hidden-weight 1 --attention-weight 1 --augment 2 --lr 2e-4, the recipe
      measured best on held-out SST-2; --no-distill, --hidden-weight 0, ... switch parts off)

  bitconv recover ./SmolLM2-135M-Instruct.Q4_1.gguf --task lm --out smol-1.58
      (no --train: text the model writes itself, teacher:30M read 8 times)

  bitconv recover MODEL --task lm --train 'corpus/*.jsonl?column=body&weight=0.7' --train teacher:10M?weight=0.3
      --eval heldout.txt --eval hf:wikitext?config=wikitext-2-raw-v1&split=test --out model-1.58

  torchrun --nproc_per_node 2 -m bitconv recover ... [--fsdp]   (data parallel, or sharded with FSDP2)

Sources (--train, --eval; repeatable): a text file; a folder or glob of .txt/.md/.jsonl/.parquet/.csv/.tsv;
hf:NAME for `datasets.load_dataset` (?config=&split=&column=&data_files=&streaming=1); a folder written by
save_to_disk; teacher:N (N tokens sampled from the original model; ?top_k=&top_p=&temperature=&length=&batch=). Add &weight=W
to mix training sources in those shares.
"""


SYNTH_HELP = """Write text the original model samples itself, the data of `recover --train teacher:N`, as JSON
lines ({"text": ...}, one document a line), to read before training on it or to train on elsewhere.

The tokens are kept in the token cache (--cache-dir): `bitconv recover MODEL --task lm --train teacher:N` with the
same options, --seed and cache then starts without generating.

Examples:

  bitconv synth ./SmolLM2-135M-Instruct.Q4_1.gguf --tokens 2M --out smol-text.jsonl

  torchrun --nproc_per_node 2 -m bitconv synth MODEL --tokens 50M --out text.jsonl   (every GPU writes a share)
"""


def register(app: typer.Typer) -> None:
    @app.command("synth", help=SYNTH_HELP)
    def synth_command(
        source: Annotated[str, typer.Argument(help="Causal LM: model folder, .gguf file or Hub id (full precision).")],
        out: Annotated[Path, typer.Option("--out", "-o", help="Output .jsonl file.")],
        tokens: Annotated[Optional[str], typer.Option(help="Tokens to sample, e.g. 2M (whole sequences: a little more); default: what recover --task lm without --train generates.")] = None,
        length: Annotated[int, typer.Option(help="Tokens per sampled sequence, the start token included.")] = 512,
        batch: Annotated[Optional[int], typer.Option(help="Sequences sampled together (default: as many as fit, up to 2048, on a GPU; 16 on the CPU).")] = None,
        top_k: Annotated[int, typer.Option(help="Sample among the k most likely tokens (0: all).")] = 50,
        top_p: Annotated[float, typer.Option(help="... then among the fewest whose probability reaches p.")] = 0.95,
        temperature: Annotated[float, typer.Option(help="Logits divided by this before sampling.")] = 1.0,
        seed: Annotated[int, typer.Option(help="Random seed (recover's teacher:N uses its --seed).")] = 0,
        device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
        cache_dir: Annotated[Optional[Path], typer.Option(help="Token cache (default: ~/.cache/bitconv/tokens).")] = None,
        force: Annotated[bool, typer.Option(help="Replace an existing --out file.")] = False,
        progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    ) -> None:
        from bitconv.train.synthesize import synthesize

        result = synthesize(source, out, tokens=tokens, length=length, batch=batch, top_k=top_k, top_p=top_p,
                            temperature=temperature, seed=seed, device=device, cache_dir=cache_dir,
                            force=force, progress=progress)
        if result.out is not None:
            typer.echo(f"wrote {result.out}: {result.n_documents:,} documents from {result.n_tokens:,} sampled tokens "
                       f"(token stream cached at {result.stream})")

    @app.command("recover", help=HELP)
    def recover_command(
        source: Annotated[str, typer.Argument(help="Model folder, .gguf file or Hub id (full precision).")],
        out: Annotated[Path, typer.Option("--out", "-o", help="Output bitconv folder.")],
        task: Annotated[str, typer.Option(help="classify (adds a classifier head where needed), image-classify (...ForImageClassification, e.g. ViT) or lm.")] = "classify",
        train: Annotated[Optional[list[str]], typer.Option(help="Training data: TSV/CSV of text and label (classify); an image folder with one sub-folder per class or a saved `datasets` split (image-classify); sources (lm, repeatable; default teacher:30M, read 8 times).")] = None,
        eval: Annotated[Optional[list[str]], typer.Option(help="Held-out data (same format), each reported separately; lm default: the held-out tail of the first --train.")] = None,
        bits: Annotated[str, typer.Option(help="Target width: 1.58 (ternary), 1, 2, 4 or 8.")] = "1.58",
        granularity: Annotated[Optional[str], typer.Option(help="tensor | channel | group:N (default by scheme, as convert).")] = None,
        scale: Annotated[str, typer.Option(help="Scale estimator: absmean, absmax, median, mse.")] = "absmean",
        activations: Annotated[str, typer.Option(help="none, or int8 for W1.58A8 (per-token absmax, also at inference).")] = "none",
        keep_outliers: Annotated[str, typer.Option(help="Fraction of largest weights per tensor kept in fp16, e.g. 0.1%.")] = "0",
        super_weights: Annotated[int, typer.Option(help="Find this many super weights on the training text; keep them in fp16.")] = 0,
        distill: Annotated[Optional[bool], typer.Option("--distill/--no-distill", help="Distil from the full-precision teacher (KL on logits; default: lm and classify yes, image-classify no).")] = None,
        teacher: Annotated[Optional[str], typer.Option(help="classify: the fp teacher, a fine-tuned classifier folder or a base model fine-tuned first (default: the source, fine-tuned first).")] = None,
        temperature: Annotated[Optional[float], typer.Option(help="Distillation temperature (default: lm 1, classify 2).")] = None,
        distill_weight: Annotated[Optional[float], typer.Option(help="Share of the KL term in the loss, the rest the task loss (default: lm 1, classify 0.5).")] = None,
        hidden_weight: Annotated[Optional[float], typer.Option(help="Weight of the hidden-state matching loss, 0: off (default: classify 1, lm and image-classify 0).")] = None,
        attention_weight: Annotated[Optional[float], typer.Option(help="Classification: weight of the attention-map KL to the same-architecture teacher, 0: off (default: classify 1, image-classify 0).")] = None,
        logits_teacher: Annotated[Optional[str], typer.Option(help="Classification: a (larger) teacher for the logits and the augmented texts; a base model is fine-tuned first.")] = None,
        augment: Annotated[Optional[int], typer.Option(help="classify + distill: teacher-labelled edited variants per training text, 0: off (default: classify 2).")] = None,
        quant_warmup_steps: Annotated[int, typer.Option(help="Blend fp -> quantized over N steps: w = (1-l) w + l q(w).")] = 0,
        learn_scales: Annotated[bool, typer.Option(help="Ternary: train each scale (LSQ) instead of recomputing its absmean; the folder stores the learned scales.")] = False,
        progressive: Annotated[str, typer.Option(help="Widths trained before the target, e.g. 8,4,2.")] = "",
        phase_steps: Annotated[int, typer.Option(help="Steps at each --progressive width.")] = 0,
        steps: Annotated[Optional[int], typer.Option(help="Training steps (default: --epochs over the data).")] = None,
        epochs: Annotated[Optional[float], typer.Option(help="Epochs when --steps is not given (default: 1; 6 on lm's default teacher data).")] = None,
        batch_size: Annotated[Optional[int], typer.Option(help="Batch size per process (default: lm 64 blocks, classify 64 texts, image-classify 32 images).")] = None,
        lr: Annotated[Optional[float], typer.Option(help="Peak learning rate of the latent weights (default: lm 1e-3, classify 2e-4, image-classify 1e-4).")] = None,
        lr_warmup: Annotated[float, typer.Option(help="Fraction of steps of linear learning-rate warm-up.")] = 0.05,
        weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.")] = 0.0,
        init: Annotated[str, typer.Option(help="classify + teacher: start the student from 'teacher' or 'source'.")] = "teacher",
        teacher_epochs: Annotated[float, typer.Option(help="Epochs of fp teacher fine-tuning (classify).")] = 1.0,
        teacher_lr: Annotated[float, typer.Option(help="Learning rate of the fp teacher fine-tuning.")] = 5e-5,
        max_length: Annotated[int, typer.Option(help="classify: tokens per text.")] = 128,
        seq_len: Annotated[int, typer.Option(help="lm: tokens per training block (and evaluation window).")] = 1024,
        eval_fraction: Annotated[float, typer.Option(help="lm without --eval: held-out tail of --train.")] = 0.05,
        eval_tokens: Annotated[int, typer.Option(help="lm: at most this many held-out tokens are scored.")] = 200_000,
        text_column: Annotated[Optional[str], typer.Option(help="Text column name or index (default: found); for lm sources, the default column.")] = None,
        label_column: Annotated[Optional[str], typer.Option(help="Label column name or index (default: found).")] = None,
        precision: Annotated[Optional[str], typer.Option(help="fp32, or bf16 autocast on CUDA (default: lm bf16, classify fp32).")] = None,
        seed: Annotated[int, typer.Option(help="Random seed (CPU runs are deterministic).")] = 0,
        device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
        checkpoint_dir: Annotated[Optional[Path], typer.Option(help="Checkpoints (default: OUT.ckpt).")] = None,
        save_every: Annotated[int, typer.Option(help="Checkpoint every N steps.")] = 500,
        log_every: Annotated[int, typer.Option(help="Read the loss every N steps (progress, log, divergence check).")] = 10,
        compile: Annotated[Optional[bool], typer.Option("--compile/--no-compile", help="torch.compile the transformer blocks and the LM head's loss (default: on with CUDA).")] = None,
        fsdp: Annotated[bool, typer.Option(help="Under torchrun: shard the model with FSDP2 instead of replicating it (DDP).")] = False,
        cache_dir: Annotated[Optional[Path], typer.Option(help="Token cache (default: ~/.cache/bitconv/tokens).")] = None,
        resume: Annotated[bool, typer.Option(help="Continue from the checkpoint (same options only).")] = False,
        force: Annotated[bool, typer.Option(help="Replace an existing --out and checkpoint.")] = False,
        progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    ) -> None:
        from bitconv.evaluate.results import headline
        from bitconv.quantize.config import QuantConfig
        from bitconv.train.config import RecoverConfig
        from bitconv.train.pipeline import recover

        quant = QuantConfig.for_bits(bits, granularity, scale_method=scale, keep_outliers=keep_outliers,
                                     activations=activations)
        cfg = RecoverConfig(
            task=task, quant=quant, super_weights=super_weights, distill=distill, teacher=teacher,
            temperature=temperature, distill_weight=distill_weight, hidden_weight=hidden_weight,
            attention_weight=attention_weight, logits_teacher=logits_teacher, augment=augment,
            quant_warmup_steps=quant_warmup_steps, learn_scales=learn_scales,
            progressive=tuple(p for p in progressive.split(",") if p.strip()),
            phase_steps=phase_steps, steps=steps, epochs=epochs, batch_size=batch_size, lr=lr, lr_warmup=lr_warmup,
            weight_decay=weight_decay, init=init, teacher_epochs=teacher_epochs, teacher_lr=teacher_lr,
            max_length=max_length, seq_len=seq_len, eval_fraction=eval_fraction, eval_tokens=eval_tokens,
            precision=precision, seed=seed, text_column=text_column, label_column=label_column,
        )
        result = recover(source, out, train=train, eval=eval, config=cfg, device=device, checkpoint_dir=checkpoint_dir,
                         resume=resume, force=force, save_every=save_every, progress=progress, log_every=log_every,
                         compile=compile, fsdp=fsdp, cache_dir=cache_dir)
        if not result.metrics:
            return  # a data-parallel worker other than rank 0
        m = result.metrics
        for key in ("original", "teacher", "logits_teacher", "before", "after", "converted"):
            if key in m:
                sets = m[key].get("sets") or {"": m[key]}
                for name, scored in sets.items():
                    typer.echo(f"{key:>9}: {headline(scored)}" + (f"  ({name})" if len(sets) > 1 else ""))
        typer.echo(f"wrote {result.out} (recipe and metrics in {result.out / 'recovery.json'})")
