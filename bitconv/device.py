"""Which torch device a command runs on: `--device auto|cpu|cuda|cuda:N`, for `eval`, `compare` and `recover`.

`auto` is the first CUDA GPU when torch sees one, else the CPU; asking for CUDA where torch sees none is an
OptionError (one line), never a silent fall-back to the CPU.
"""

from __future__ import annotations

import re

import torch

from bitconv.errors import OptionError

DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


def check_device_name(name: str) -> str:
    """`name` if it is spelled as a device (auto, cpu, cuda, cuda:N); says nothing about the hardware."""
    if not DEVICE_PATTERN.fullmatch(name):
        raise OptionError(f"unknown --device {name!r}: use auto, cpu, cuda or cuda:N")
    return name


def pick_device(name: str) -> torch.device:
    """The torch device `name` means on this machine (see the module docstring)."""
    check_device_name(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise OptionError(f"--device {name}: no CUDA GPU is visible to torch here; use --device cpu or auto")
    device = torch.device(name)
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise OptionError(f"--device {name}: torch sees {torch.cuda.device_count()} CUDA GPU(s) "
                          f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")
    return device


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously), so a host clock times what ran."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
