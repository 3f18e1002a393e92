"""Where training runs: the device, the processes started by torchrun (gloo on CPU, NCCL on CUDA), seeds and
mixed precision. Nothing here knows about models or tasks."""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass

import numpy as np
import torch

from bitconv.device import pick_device


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world: int = 1
    owns_process_group: bool = False  # started here, so torn down here

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of `value` over the processes (itself in a single process)."""
        if self.world == 1:
            return value
        import torch.distributed as dist

        value = value.detach().clone()
        dist.all_reduce(value)
        return value / self.world


def start_runtime(device: str) -> Runtime:
    """One process, or one of several started by torchrun (WORLD_SIZE > 1)."""
    dev = pick_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if dev.type == "cuda":
        # TF32 matmuls: the fp32 parts of training (optimizer, losses) at tensor-core speed
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if world == 1:
        return Runtime(dev)
    import torch.distributed as dist

    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Runtime(dev, rank, world, owns)


def stop_runtime(rt: Runtime) -> None:
    if rt.owns_process_group:
        import torch.distributed as dist

        dist.destroy_process_group()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast(precision: str, device: torch.device):
    """bf16 autocast on CUDA when asked; CPU runs stay in fp32 (and deterministic)."""
    if precision == "bf16" and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
