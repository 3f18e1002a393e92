"""Starting a script in two CPU processes under torchrun, as a user would for data-parallel recovery."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import bitconv


def torchrun_two_cpu_processes(script: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """`torchrun --standalone`: its rendezvous binds a free port itself, so no port is picked here and released
    before torchrun takes it (another process could take it in between)."""
    env = dict(os.environ, PYTHONPATH=str(Path(bitconv.__file__).resolve().parents[1]), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script)], capture_output=True, text=True, env=env, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc
