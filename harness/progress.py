"""Progress bars with ETA on stderr, so that `--json` output on stdout stays clean.

The core never imports this: it takes an optional `progress(done, total)` callable, and the CLI passes
the one a bar gives it.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

Callback = Callable[[int, int], None]


@contextmanager
def progress_bar(description: str, *, enabled: bool = True) -> Iterator[Callback]:
    """Yields `update(done, total)`; shows a bar only on an interactive terminal."""
    console = Console(file=sys.stderr)
    show = enabled and console.is_terminal
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, disable=not show, transient=False) as bar:
        task = bar.add_task(description, total=None, rate="")

        def update(done: int, total: int) -> None:
            elapsed = bar.tasks[task].elapsed or 0.0
            rate = f"{done / elapsed:,.0f}/s" if elapsed > 0 else ""
            bar.update(task, completed=done, total=total, rate=rate)

        yield update
