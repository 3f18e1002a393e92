"""The training loop: deterministic batches, AdamW with warm-up and linear decay, the quantization schedule,
data parallelism, checkpoints every N steps and a stop with one line when the loss stops being finite.

The loop knows nothing of tasks: `task.loss(model, teacher, indices, device)` gives a step's loss.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from bitconv.display import task_progress
from bitconv.errors import BitconvError, TrainingError
from bitconv.train import checkpoints, qat
from bitconv.train.config import RecoverConfig
from bitconv.train.losses import lr_factor, quant_phase
from bitconv.train.runtime import Runtime

LOG_EVERY = 50  # steps between entries of recovery.json's log


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


def train_model(model: nn.Module, task, *, cfg: RecoverConfig, rt: Runtime, total_steps: int, lr: float,
                teacher: nn.Module | None = None, attached: list[qat.QuantizedModule] | None = None,
                saving: Checkpointing | None = None, resume: dict | None = None, progress: bool = True,
                label: str = "recover", log: list | None = None) -> TrainState:
    """Train `model` in place (fake-quantized if `attached`) on `task` for `total_steps` steps."""
    device = rt.device
    wrapped = model
    if rt.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        wrapped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    state = TrainState()
    if resume is not None:
        model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        state = TrainState(resume["step"], resume["tokens"])
        torch.set_rng_state(resume["rng"]["cpu"])
        if device.type == "cuda" and "cuda" in resume["rng"]:
            torch.cuda.set_rng_state(resume["rng"]["cuda"], device)
    batches = Batches(task.n_items, cfg.batch_size, cfg.seed, rt)

    def save(step_done: int) -> None:
        if saving is not None and rt.main:
            checkpoints.save_checkpoint(saving.folder, saving.fingerprint, step_done, state.tokens, model.state_dict(),
                                        opt.state_dict(), _rng_state(device))

    last_saved = state.step if resume is not None else None
    model.train()
    with task_progress(label, total=total_steps, enabled=progress and rt.main, completed=state.step,
                       unit=task.unit) as advance:
        t0, items0, ema = time.perf_counter(), 0, None
        for step in range(state.step, total_steps):
            if attached:
                bits, blend = quant_phase(cfg, step)
                qat.set_quantization(attached, cfg.quant_config(bits), blend)
            _set_lr(opt, lr * lr_factor(step, total_steps, cfg.lr_warmup))
            try:
                loss, n_items = task.loss(wrapped, teacher, batches.indices(step), device)
            except BitconvError as exc:  # the quantizer refuses non-finite weights: training diverged
                raise diverged(step, saving, last_saved, str(exc)) from None
            shown = float(rt.mean(loss.detach()))
            if not math.isfinite(shown):
                raise diverged(step, saving, last_saved, f"loss {shown}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            state.step, state.tokens = step + 1, state.tokens + n_items * rt.world
            items0 += n_items * rt.world
            ema = shown if ema is None else 0.98 * ema + 0.02 * shown
            advance(loss=ema, rate=items0 / max(1e-9, time.perf_counter() - t0))
            if log is not None and (state.step % LOG_EVERY == 0 or state.step == total_steps):
                # no timings here: the log goes into recovery.json, which must not change from run to run
                log.append({"phase": label, "step": state.step, "loss": round(ema, 6),
                            "lr": opt.param_groups[0]["lr"]})
            if saving is not None and saving.every and state.step % saving.every == 0 and state.step < total_steps:
                save(state.step)
                last_saved = state.step
    state.seconds = time.perf_counter() - t0
    state.rate = items0 / max(1e-9, state.seconds)
    save(state.step)
    model.eval()
    return state
