"""`recover()`: quantization-aware training that brings a quantized model's accuracy back, end to end.

    source model (fp) --> [fp teacher: the original LM, or a classifier fine-tuned first]
    --> latent fp student, fake-quantized as `convert` quantizes (straight-through estimator; optional
        distillation, warm-up blend, progressive widths, int8 activations, fp16 super weights)
    --> latent weights saved as a Hugging Face checkpoint --> bitconv.convert --> the output folder.

The folder computes what the last training step computed; `recovery.json` in it records the recipe and the
metrics of the original, the model before and after training and the converted folder, all measured by
bitconv.evaluate.metrics (the code `bitconv eval` runs).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from bitconv.data.tokens import TokenCache
from bitconv.errors import OptionError, OutputError, SourceError
from bitconv.format.atomic import PARTIAL, check_output, scratch_folder, staged_folder, write_json_atomic
from bitconv.train import checkpoints, qat
from bitconv.train.config import RecoverConfig
from bitconv.train.runtime import Runtime, full_state_dicts, seed_everything, shard, start_runtime, stop_runtime
from bitconv.train.tasks import TASK_TYPES, Context, steps_for, with_epochs_resolved
from bitconv.train.trainer import Checkpointing, LoopOptions, compile_blocks, train_model


@dataclass
class RecoverResult:
    out: Path
    metrics: dict = field(default_factory=dict)  # also in out/recovery.json
    timings: dict = field(default_factory=dict)  # wall clock and throughput per phase (not in the folder)


def recover(source: str, out: str | Path, *, train: Sources = None, eval: Sources = None,
            config: RecoverConfig | None = None, device: str = "auto", checkpoint_dir: str | Path | None = None,
            resume: bool = False, force: bool = False, save_every: int = 500, progress: bool = True,
            log_every: int = 10, compile: bool | None = None, fsdp: bool = False,
            cache_dir: str | Path | None = None, say: Callable[[str], None] | None = None) -> RecoverResult:
    """Train a quantized model back to accuracy and write it as a bitconv folder at `out`.

    `train` and `eval` are one source or a list (bitconv.data.sources: files, folders, globs, `hf:` datasets,
    `teacher:N`); a language model without `train` learns from text it writes itself. `compile` (default: on
    with CUDA) compiles the transformer blocks; `fsdp` shards the model over the torchrun processes (FSDP2)
    instead of replicating it. Under torchrun (WORLD_SIZE > 1) every process calls this; rank 0 writes the
    folder and gets the metrics, the others return an empty result.
    """
    rt = start_runtime(device)
    say = say or (lambda text: print(text, file=sys.stderr))
    try:
        run = Run(str(source), Path(out), _as_list(train), _as_list(eval), config or RecoverConfig(), rt,
                  checkpoint_dir, resume, force, save_every,
                  LoopOptions(log_every, rt.device.type == "cuda" if compile is None else compile, fsdp, progress),
                  cache_dir, say if rt.main else (lambda text: None))
        if fsdp and rt.world == 1:
            raise OptionError("--fsdp shards the model over several processes: start them with torchrun "
                              "--nproc_per_node N")
        if fsdp and run.cfg.learn_scales:
            raise OptionError("--learn-scales is not available with --fsdp (the scales are baked into whole "
                              "weights); leave one of them out")
        return _recover(run)
    finally:
        stop_runtime(rt)


Sources = str | Path | list | tuple | None


def _as_list(sources: Sources) -> list:
    if sources is None:
        return []
    return [str(s) for s in sources] if isinstance(sources, (list, tuple)) else [str(sources)]


@dataclass
class Run:
    source: str
    out: Path
    train: list
    eval: list
    cfg: RecoverConfig
    rt: Runtime
    checkpoint_dir: str | Path | None
    resume: bool
    force: bool
    save_every: int
    loop: LoopOptions
    cache_dir: str | Path | None
    say: Callable[[str], None]


def source_name(source: str) -> str:
    path = Path(str(source))
    return path.stem if path.suffix == ".gguf" else path.name


def _refuse_packed(source: str) -> None:
    path = Path(source).expanduser()
    if path.is_dir():
        import json

        from bitconv.format.reader import is_bitconv_folder

        if is_bitconv_folder(path):
            origin = json.loads((path / "config.json").read_text()).get("quantization_config", {}).get("source")
            raise SourceError(f"{path} is already a bitconv folder; recover trains from the full-precision model "
                              f"it was converted from ({origin}): pass that instead")


def _recover(run: Run) -> RecoverResult:
    cfg, rt, source = run.cfg, run.rt, run.source
    local = [Path(p).expanduser() for p in [source, *run.train, *run.eval]]
    out = check_output(run.out, force=run.force, inputs=[p for p in local if p.exists()])
    ckpt_dir = Path(run.checkpoint_dir) if run.checkpoint_dir is not None else out.with_name(out.name + ".ckpt")
    if checkpoints.exists(ckpt_dir) and not run.resume and not run.force:
        raise OutputError(f"{ckpt_dir} holds a checkpoint from an earlier run; pass --resume to continue it or "
                          "--force to start afresh")
    if run.force and not run.resume:
        (ckpt_dir / checkpoints.LEGACY_PICKLE).unlink(missing_ok=True)  # bitconv's own, never loaded
    _refuse_packed(source)
    seed_everything(cfg.seed)
    task_type = TASK_TYPES[cfg.task]
    tok = task_type.processor_for(source)  # a tokenizer, or an image model's image processor
    cache = TokenCache(run.cache_dir) if cfg.task == "lm" else None
    ctx = Context(source, rt, cache, run.loop.progress and rt.main, run.say)
    preparing = time.perf_counter()
    task_type.before_prepare(cfg, tok, run.train, run.eval, ctx)
    if not rt.main:
        rt.barrier()  # rank 0 tokenizes and generates first; the others then read its cache
    task = task_type.prepare(cfg, tok, run.train, run.eval, ctx)
    if rt.main:
        rt.barrier()
    prepared_s = time.perf_counter() - preparing
    cfg = with_epochs_resolved(cfg, task)
    fp = checkpoints.fingerprint(cfg.to_dict(), source, task.data, rt.world)
    resume_state = checkpoints.load_checkpoint(ckpt_dir, fp) if run.resume and checkpoints.exists(ckpt_dir) else None
    log: list[dict] = []
    # reading, tokenizing and generating the data (seconds when the token cache has it)
    timings: dict = {"prepare": {"seconds": round(prepared_s, 1)}}
    metrics: dict = {"task": cfg.task, "source": source, **task.described}
    evaluate = task.evaluate

    def fine_tune(model: nn.Module, steps: int, lr: float, label: str, on=None) -> None:
        """Full-precision training of a teacher on `on` (the task, or its view through the teacher's tokenizer)."""
        st = train_model(model, on or task, cfg=cfg, rt=rt, total_steps=steps, lr=lr, loop=run.loop, label=label,
                         log=log)
        timings[label] = {"seconds": round(st.seconds, 1), task.unit + "_per_s": round(st.rate, 1)}

    model = task.load_model(source).to(rt.device)
    teacher = None
    if cfg.distill or cfg.teacher:
        teacher = task.teacher(ckpt_dir, fp, fine_tune)
        teacher.eval().requires_grad_(False)
        metrics["teacher"] = evaluate(teacher)
        metrics.update(task.extra_metrics)
        task.start_student(model, teacher)
        if not cfg.distill:
            teacher = None  # a teacher given only to start from
    if task.name == "lm":
        metrics["original"] = metrics.get("teacher") or evaluate(model)
    if teacher is not None and cfg.precision == "bf16" and rt.device.type == "cuda":
        teacher = teacher.to(torch.bfloat16)  # measured above in full precision; it only runs forward from here
    qcfg = cfg.quant_config()
    names = qat.quantized_weight_names(model, qcfg)
    outliers = {}
    if cfg.super_weights:
        from bitconv.train import super_weights as sw

        found = sw.find_super_weights(model, task.calibration_batches(rt.device), cfg.super_weights, candidates=names)
        outliers = sw.as_outlier_indices(found, sw.linear_shapes(model, {f.tensor for f in found}))
        metrics["super_weights"] = [f.to_dict() for f in found]
        with sw.zeroed(model, found):  # what they carry: the fp model with them set to zero
            metrics["fp_without_super_weights"] = evaluate(model)
    attached = qat.attach(model, names, qcfg, outliers, learn_scales=cfg.learn_scales)
    metrics["n_quantized_tensors"] = len(names)
    metrics["before"] = evaluate(model)
    total = steps_for(cfg, task.n_items, rt.world)
    if run.loop.sharded:
        shard(model)
    if run.loop.compile:
        compile_blocks(model)
        if teacher is not None:
            compile_blocks(teacher)
    if rt.main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    state = train_model(model, task, cfg=cfg, rt=rt, total_steps=total, lr=cfg.lr, teacher=teacher, attached=attached,
                        saving=Checkpointing(ckpt_dir, fp, run.save_every), resume=resume_state, loop=run.loop,
                        log=log)
    timings["recover"] = {"seconds": round(state.seconds, 1), task.unit + "_per_s": round(state.rate, 1),
                          "device": str(rt.device), "world_size": rt.world}
    qat.set_quantization(attached, qcfg, 1.0)
    metrics["after"] = evaluate(model)
    metrics["steps"] = state.step
    metrics["batch_size"] = cfg.batch_size * rt.world
    metrics["train_" + task.unit] = state.tokens
    if run.loop.sharded:  # whole tensors, gathered by every process, kept by rank 0 in a plain model
        full, _ = full_state_dicts(model)
        model = task.load_model(source) if rt.main else None
        if model is not None:
            model.load_state_dict(full)
    else:
        qat.detach(model, attached)
    rt.barrier()
    if rt.main:
        write_folder(model, tok, task, source, out, cfg, outliers, metrics, log, rt)
    return RecoverResult(out, metrics if rt.main else {}, timings)


def write_folder(model: nn.Module, tok, task, source: str, out: Path, cfg: RecoverConfig, outliers: dict,
                 metrics: dict, log: list, rt: Runtime) -> None:
    """Latent weights -> temporary HF checkpoint -> bitconv.convert -> measured -> `out`, replaced atomically."""
    from bitconv import load
    from bitconv.quantize.convert import convert
    from bitconv.report.model_card import recovery_card

    # the latent checkpoint, beside the output (a killed run's is removed by the next one, as staged outputs are)
    with scratch_folder(f".{out.name}.latent{PARTIAL}", beside=out) as tmp:
        # named after the source: convert records the checkpoint folder's name as the source
        latent = tmp / source_name(source)
        model.save_pretrained(latent, safe_serialization=True)
        tok.save_pretrained(latent)
        with staged_folder(out) as staged:
            convert(str(latent), staged, cfg.quant, force=True, progress=False,
                    outliers={name: idx.cpu().tolist() for name, idx in outliers.items()} or None)
            # as trained (float32), not the stored float16
            metrics["converted"] = task.evaluate(load(staged, dtype=torch.float32).to(rt.device))
            card = staged / "README.md"
            card.write_text(card.read_text() + recovery_card(source_name(source), cfg.distill, metrics))
            write_json_atomic(staged / "recovery.json", {"recipe": cfg.to_dict(), "metrics": metrics, "log": log})
