"""A run stopped part way, as Ctrl-C stops it: one function of the code under test raises KeyboardInterrupt at
its n-th call."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import pytest


@contextmanager
def interrupted_at_call(monkeypatch, owner, name: str, n: int) -> Iterator[None]:
    """Inside the block `owner.name` raises KeyboardInterrupt at its n-th call (the calls before it run the real
    one), and the block must end with that interrupt; afterwards the real function is back."""
    real = getattr(owner, name)
    calls = {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, interrupted)
    try:
        with pytest.raises(KeyboardInterrupt):
            yield
    finally:
        monkeypatch.setattr(owner, name, real)
