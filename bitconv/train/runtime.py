"""Where training runs: the device, the processes started by torchrun (gloo on CPU, NCCL on CUDA), seeds and
mixed precision. Nothing here knows about models or tasks."""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from bitconv.device import pick_device
from bitconv.errors import TrainingError


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


# ---------------------------------------------------------------------------------------------------------
# sharded data parallel (FSDP2)


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a transformers model (the classes it names in `_no_split_modules`)."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    return [m for m in model.modules() if type(m).__name__ in names]


def shard(model: nn.Module) -> None:
    """FSDP2 (`fully_shard`): each transformer block its own unit, the rest (embeddings, head) in the root."""
    from torch.distributed.fsdp import fully_shard

    blocks = transformer_blocks(model)
    if not blocks:
        raise TrainingError(f"--fsdp cannot wrap a {type(model).__name__}: it names no transformer block class "
                            "(_no_split_modules) to shard by; train it without --fsdp (data parallel)")
    for block in blocks:
        fully_shard(block)
    fully_shard(model)


def full_state_dicts(model: nn.Module, opt: torch.optim.Optimizer | None = None) -> tuple[dict, dict | None]:
    """Whole tensors on the CPU of a sharded model (and optimizer): a collective call, every process makes it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    if opt is None:
        return get_model_state_dict(model, options=options), None
    return get_state_dict(model, opt, options=options)


def load_full_state_dicts(model: nn.Module, opt: torch.optim.Optimizer, model_state: dict, opt_state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    set_state_dict(model, opt, model_state_dict=model_state, optim_state_dict=opt_state,
                   options=StateDictOptions(full_state_dict=True))
