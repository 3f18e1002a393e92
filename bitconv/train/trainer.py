"""The training loop: deterministic batches, AdamW with warm-up and linear decay, the quantization schedule,
data parallelism (DDP, or FSDP2 when the model is sharded), optional torch.compile of the transformer blocks,
checkpoints every N steps and a stop with one line when the loss stops being finite.

The host never waits for the GPU inside a step: losses stay on the device and are read every `log_every`
steps (progress, recovery.json's log, the divergence check) and before each checkpoint, so a non-finite loss
is still reported at the step where it first appeared and never saved.

The loop knows nothing of tasks: `task.batch(indices, device)` and `task.loss_module(model, teacher)` make a step.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from bitconv.display import task_progress
from bitconv.errors import TrainingError
from bitconv.train import checkpoints, qat
from bitconv.train.config import RecoverConfig
from bitconv.train.losses import lr_factor, quant_phase
from bitconv.train.runtime import Runtime, full_state_dicts, load_full_state_dicts, transformer_blocks


class Batches:
    """Deterministic shuffled batches: the order depends on (seed, epoch) only, so a resumed run continues it."""

    def __init__(self, n: int, batch_size: int, seed: int, rt: Runtime):
        self.n, self.batch_size, self.seed, self.rt = n, batch_size, seed, rt
        self.global_batch = batch_size * rt.world
        self.per_epoch = max(1, n // self.global_batch)

    def indices(self, step: int) -> torch.Tensor:
        epoch, pos = divmod(step, self.per_epoch)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        perm = torch.randperm(self.n, generator=g)
        if self.n < self.global_batch:  # tiny data: repeat it
            perm = perm.repeat(-(-self.global_batch // self.n))
        start = pos * self.global_batch + self.rt.rank * self.batch_size
        return perm[start : start + self.batch_size]


@dataclass
class TrainState:
    step: int = 0
    tokens: int = 0  # samples (classify) or tokens (lm) seen
    seconds: float = 0.0  # wall clock of this process's steps (not of resumed ones)
    rate: float = 0.0


@dataclass
class Checkpointing:
    """Where and under what fingerprint the loop saves, every `every` steps (and at the end)."""

    folder: Path
    fingerprint: dict
    every: int = 500


@dataclass
class LoopOptions:
    """How the loop runs (none of it changes what is learnt)."""

    log_every: int = 10  # steps between reads of the loss (progress, log, divergence check)
    compile: bool = False  # torch.compile the transformer blocks and the LM head's loss (CUDA only)
    sharded: bool = False  # the model is sharded with FSDP2 (bitconv.train.runtime.shard)
    progress: bool = True


def _set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    rng = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return rng


def diverged(step: int, saved: Checkpointing | None, last_saved: int | None, detail: str) -> TrainingError:
    kept = (f"the last good checkpoint ({saved.folder}, step {last_saved}) is kept"
            if saved is not None and last_saved is not None else "no checkpoint had been written yet")
    return TrainingError(f"training diverged at step {step + 1} ({detail}); {kept}; lower --lr and rerun with --force")


def compile_blocks(model: nn.Module) -> None:
    """torch.compile each transformer block (fused norms, activations and fake quantization); the rest of the model
    stays eager (the LM head's loss is compiled by bitconv.train.losses under the same option). The blocks share
    code, so one compilation serves them all."""
    for block in transformer_blocks(model):
        block.compile()


def train_model(model: nn.Module, task, *, cfg: RecoverConfig, rt: Runtime, total_steps: int, lr: float,
                teacher: nn.Module | None = None, attached: list[qat.QuantizedModule] | None = None,
                saving: Checkpointing | None = None, resume: dict | None = None, loop: LoopOptions | None = None,
                label: str = "recover", log: list | None = None) -> TrainState:
    """Train `model` in place (fake-quantized if `attached`) on `task` for `total_steps` steps."""
    loop = loop or LoopOptions()
    device = rt.device
    step_fn = task.loss_module(model, teacher, sharded=loop.sharded, compile=loop.compile)
    if rt.world > 1 and not loop.sharded:
        from torch.nn.parallel import DistributedDataParallel

        step_fn = DistributedDataParallel(step_fn, device_ids=[device.index] if device.type == "cuda" else None)
    params, decayed, scales = [], [], []  # learned scales (qat) are never weight-decayed
    for name, p in model.named_parameters():
        if p.requires_grad:
            params.append(p)
            (scales if name.endswith(qat.LEARNED_SCALE) else decayed).append(p)
    groups = [{"params": decayed}]
    if scales:
        groups.append({"params": scales, "weight_decay": 0.0})
    fused = device.type == "cuda" and not loop.sharded
    opt = torch.optim.AdamW(groups, lr=lr, weight_decay=cfg.weight_decay, fused=fused or None)
    state = TrainState()
    if resume is not None:
        if loop.sharded:
            load_full_state_dicts(model, opt, resume["model"], resume["optimizer"])
        else:
            model.load_state_dict(resume["model"])
            opt.load_state_dict(resume["optimizer"])
        state = TrainState(resume["step"], resume["tokens"])
        torch.set_rng_state(resume["rng"]["cpu"])
        if device.type == "cuda" and "cuda" in resume["rng"]:
            torch.cuda.set_rng_state(resume["rng"]["cuda"], device)
    batches = Batches(task.n_items, cfg.batch_size, cfg.seed, rt)
    pending = torch.zeros(max(1, loop.log_every), dtype=torch.float32, device=device)  # losses not yet read
    first_pending = state.step
    last_saved = state.step if resume is not None else None

    def check(step_done: int) -> float:
        """Read the losses of the steps since the last read; stop at the first non-finite one."""
        nonlocal first_pending
        n = step_done - first_pending
        values = rt.mean(pending[:n]).tolist() if n else []
        for i, value in enumerate(values):
            if not math.isfinite(value):
                raise diverged(first_pending + i, saving, last_saved, f"loss {value}")
        first_pending = step_done
        return sum(values) / len(values) if values else math.nan

    def save(step_done: int) -> None:
        if saving is None:
            return
        if loop.sharded:
            model_state, opt_state = full_state_dicts(model, opt)
        else:
            model_state, opt_state = model.state_dict(), opt.state_dict()
        if rt.main:
            checkpoints.save_checkpoint(saving.folder, saving.fingerprint, step_done, state.tokens, model_state,
                                        opt_state, _rng_state(device))

    model.train()
    with task_progress(label, total=total_steps, enabled=loop.progress and rt.main, completed=state.step,
                       unit=task.unit) as advance:
        t0, items0, shown_at = time.perf_counter(), 0, state.step
        for step in range(state.step, total_steps):
            if attached:
                bits, blend = quant_phase(cfg, step)
                qat.set_quantization(attached, cfg.quant_config(bits), blend)
            _set_lr(opt, lr * lr_factor(step, total_steps, cfg.lr_warmup))
            batch = task.batch(batches.indices(step), device)
            loss = step_fn(**batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            pending[step - first_pending] = loss.detach()
            n_items = task.batch_items(batch) * rt.world
            state.step, state.tokens = step + 1, state.tokens + n_items
            items0 += n_items
            to_save = saving is not None and saving.every and state.step % saving.every == 0 and state.step < total_steps
            if state.step - first_pending == len(pending) or to_save or state.step == total_steps:
                shown = check(state.step)
                advance(loss=shown, rate=items0 / max(1e-9, time.perf_counter() - t0), steps=state.step - shown_at)
                shown_at = state.step
                if log is not None:
                    # no timings here: the log goes into recovery.json, which must not change from run to run
                    log.append({"phase": label, "step": state.step, "loss": round(shown, 6),
                                "lr": opt.param_groups[0]["lr"]})
            if to_save:
                save(state.step)
                last_saved = state.step
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    state.seconds = time.perf_counter() - t0
    state.rate = items0 / max(1e-9, state.seconds)
    save(state.step)
    model.eval()
    return state
