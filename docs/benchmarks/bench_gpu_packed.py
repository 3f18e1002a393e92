"""Packed models on a GPU: batch-1 decode tokens/s, prefill tokens/s and weight memory against the bf16 original.

    python docs/benchmarks/bench_gpu_packed.py --out docs/benchmarks/gpu_packed.md     # on a CUDA machine
    python docs/benchmarks/bench_gpu_packed.py --size tiny --device cpu                # a quick check anywhere

A Llama-shaped model with random weights (TinyLlama-1.1B's shape by default) runs three ways through transformers'
`generate()` and one long forward:
- `bf16`: the original, every projection an nn.Linear in bfloat16;
- `packed, cached`: every block projection replaced by bitconv's PackedLinear holding the 2-bit codes of its
  ternary (absmean, per tensor) quantization, keeping the decoded bf16 weight after the first forward
  (`weight_cache=True`, the default on GPUs: speed, at the float model's memory);
- `packed, decoded each forward`: the same modules decoding their codes in every forward (`weight_cache=False`:
  memory, only the codes kept).
Before timing, the packed outputs are checked against an nn.Linear model holding the same ternary weights.
Decode: median over --repeats of `generate(max_new_tokens=N, min_new_tokens=N, greedy)` from a 16-token prompt,
after one warm-up generate; tokens/s = N / time. Prefill: median of CUDA-event-timed forwards over one
--prompt-long sequence. Memory: bytes of parameters and buffers (and decoded caches) after the run, and the
allocator's peak during decode.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bitconv.format.spec import TensorSpec  # noqa: E402 - after the path insert, so the checkout is measured
from bitconv.quantize.modeling import PackedLinear, set_weight_cache  # noqa: E402

SIZES = {  # LlamaConfig fields
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
               num_key_value_heads=4, vocab_size=32000),
    "tiny": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=1000),
}
SHIFTS = torch.tensor([0, 2, 4, 6], dtype=torch.uint8)


def random_llama(size: str, device: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(max_position_embeddings=4096, **SIZES[size])
    torch.manual_seed(0)
    with torch.device(device):
        return LlamaForCausalLM(config).to(torch.bfloat16).eval()


def ternary(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """BitNet b1.58 absmean ternary per tensor: (codes in {-1, 0, 1}, scale), as bitconv convert's default."""
    w = weight.float()
    scale = w.abs().mean().clamp(min=1e-8)
    return torch.clamp(torch.round(w / scale), -1, 1).to(torch.int8), scale.reshape(1)


def packed_linear(module: nn.Linear) -> PackedLinear:
    """The PackedLinear of formats/SPEC.md's ternary 2-bit layout (code = t + 2, four a byte, low bits first)."""
    out_features, in_features = module.weight.shape
    codes, scale = ternary(module.weight)
    packed = ((codes + 2).to(torch.uint8).reshape(out_features, -1, 4) << SHIFTS.to(codes.device)).sum(-1)
    spec = TensorSpec("ternary", (out_features, in_features), dtype="bfloat16")
    layer = PackedLinear(spec, activations="none", dtype=module.weight.dtype, device=module.weight.device)
    layer.qcodes.copy_(packed.to(torch.uint8))
    layer.qscale.copy_(scale)
    return layer


def block_linears(model) -> list[tuple[nn.Module, str, nn.Linear]]:
    return [(parent, name, child) for layer in model.model.layers for parent in layer.modules()
            for name, child in parent.named_children() if isinstance(child, nn.Linear)]


def to_packed(model) -> None:
    for parent, name, child in block_linears(model):
        setattr(parent, name, packed_linear(child))


def to_ternary_linear(model) -> None:
    """The reference: ordinary nn.Linear layers holding the decoded ternary weights."""
    with torch.no_grad():
        for _, _, child in block_linears(model):
            codes, scale = ternary(child.weight)
            child.weight.copy_((codes.float() * scale).to(child.weight.dtype))


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def decode_tokens_per_s(model, device: str, new_tokens: int, repeats: int) -> float:
    prompt = torch.arange(16, device=device).reshape(1, 16) + 10
    kwargs = dict(do_sample=False, pad_token_id=0, eos_token_id=None)
    model.generate(prompt, max_new_tokens=4, min_new_tokens=4, **kwargs)  # warm-up: kernels, caches, decoded weights
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        out = model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **kwargs)
        synchronize(device)
        times.append(time.perf_counter() - start)
        assert out.shape[1] == 16 + new_tokens
    return new_tokens / statistics.median(times)


def prefill_tokens_per_s(model, device: str, length: int, repeats: int) -> float:
    ids = torch.randint(10, model.config.vocab_size, (1, length), generator=torch.Generator().manual_seed(1)).to(device)
    with torch.no_grad():
        model(ids)
        times = []
        for _ in range(repeats):
            if device.startswith("cuda"):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                model(ids)
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
            else:
                start_s = time.perf_counter()
                model(ids)
                times.append(time.perf_counter() - start_s)
    return length / statistics.median(times)


def weight_bytes(model) -> int:
    tensors = [*model.parameters(), *model.buffers()]
    tensors += [m._decoded for m in model.modules() if isinstance(m, PackedLinear) and m._decoded is not None]
    return sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}.values())


def free_memory(device: str) -> None:
    gc.collect()  # dropped modules and models sit in reference cycles until a collection frees their tensors
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def measure(name: str, model, device: str, args) -> dict:
    free_memory(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    row = {"model": name, "decode": decode_tokens_per_s(model, device, args.new_tokens, args.repeats)}
    row["peak"] = torch.cuda.max_memory_allocated() if device.startswith("cuda") else None
    row["prefill"] = prefill_tokens_per_s(model, device, args.prompt, args.repeats)
    row["weights"] = weight_bytes(model)
    print(f"{name}: {row}", flush=True)
    return row


def check_packed(model, reference, device: str) -> float:
    """Largest |packed - reference| logit over the reference's largest, for both weight_cache choices."""
    ids = torch.arange(32, device=device).reshape(1, 32) + 10
    with torch.no_grad():
        want = reference(ids).logits.float()
        errors = []
        for cache in (True, False):
            set_weight_cache(model, cache)
            errors.append(((model(ids).logits.float() - want).abs().max() / want.abs().max()).item())
    return max(errors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="1b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompt", type=int, default=1024, help="prefill length")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, help="write the markdown table here")
    args = parser.parse_args()
    device = args.device

    model = random_llama(args.size, device)
    rows = [measure("bf16 (nn.Linear)", model, device, args)]
    reference = random_llama(args.size, device)
    to_ternary_linear(reference)
    to_packed(model)
    error = check_packed(model, reference, device)
    print(f"packed vs ternary nn.Linear: max |diff| / max |logit| = {error:.2e}", flush=True)
    del reference
    set_weight_cache(model, True)
    rows.append(measure("packed, cached bf16 weight (weight_cache=True)", model, device, args))
    set_weight_cache(model, False)
    rows.append(measure("packed, decoded each forward (weight_cache=False)", model, device, args))

    gpu = torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor() or platform.machine()
    lines = [
        f"Machine: {gpu}; torch {torch.__version__}; {datetime.date.today().isoformat()}.",
        f"Model: Llama shape `{args.size}` ({SIZES[args.size]}), random weights, bfloat16 activations.",
        f"Command: `python docs/benchmarks/bench_gpu_packed.py --size {args.size} --device {device} "
        f"--new-tokens {args.new_tokens} --prompt {args.prompt} --repeats {args.repeats}`.",
        f"Check: packed logits vs an nn.Linear model with the same ternary weights, max |diff| / max |logit| "
        f"= {error:.1e} (both weight_cache choices).",
        "",
        "| model | decode tokens/s (batch 1) | prefill tokens/s | weights in memory | peak memory in decode |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        peak = f"{r['peak'] / 2**30:.2f} GiB" if r["peak"] is not None else "-"
        lines.append(f"| {r['model']} | {r['decode']:.1f} | {r['prefill']:,.0f} | {r['weights'] / 2**30:.2f} GiB | "
                     f"{peak} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
