"""What bitconv shows people: progress bars for long loops (one shape for every command), byte sizes, tensor
names in narrow tables. Library code and the CLI share these so every number and name reads the same."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

stderr_console = Console(stderr=True)


@contextmanager
def task_progress(description: str, total: int, enabled: bool = True, completed: int = 0,
                  unit: str | None = None) -> Iterator[Callable[..., None]]:
    """Yields `advance(label="", loss=None, rate=None)`; draws a bar on stderr when enabled and stderr is a terminal.

    Training loops pass `loss` and `rate` (items per second, named by `unit`, e.g. "tokens"), and `completed`
    where a resumed run starts; other loops pass a label (the file or tensor at hand).
    """
    if not enabled or not sys.stderr.isatty():
        yield lambda label="", loss=None, rate=None: None
        return
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[label]}", style="dim")]
    with Progress(*columns, console=stderr_console, transient=False) as progress:
        task = progress.add_task(description, total=total, completed=completed, label="")

        def advance(label: str = "", loss: float | None = None, rate: float | None = None) -> None:
            if loss is not None or rate is not None:
                label = " ".join(part for part in (f"loss {loss:.4f}" if loss is not None else "",
                                                   f"{rate:,.0f} {unit or 'items'}/s" if rate is not None else "") if part)
            progress.update(task, advance=1, label=label[-48:])

        yield advance


def human_bytes(n_bytes: float | None) -> str:
    """Decimal units, as disks and the Hub count: 812 B, 23.80 kB, 23.80 MB, 1.20 GB; "n/a" for None."""
    if n_bytes is None:
        return "n/a"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n_bytes) >= size:
            return f"{n_bytes / size:.2f} {unit}"
    return f"{n_bytes:.0f} B"


def fit_name(name: str, width: int) -> str:
    """A tensor name cut to `width` characters at its start, where the least distinguishing part is: the model
    prefix goes, the layer index and the projection stay (`transformer.h.11.attn.c_attn.weight` ->
    `…h.11.attn.c_attn.weight`). The cut falls after a dot where it can."""
    if len(name) <= width or width < 8:
        return name
    tail = name[-(width - 1):]
    dot = tail.find(".")
    if 0 <= dot <= len(tail) // 3:  # drop a partial first component
        tail = tail[dot + 1:]
    return "…" + tail
