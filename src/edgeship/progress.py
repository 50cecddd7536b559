"""Progress on long work (training, calibration, benchmarks), on stderr, with rich."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichProgress


class Progress:
    def __init__(self, console: Console | None = None, enabled: bool = True) -> None:
        self.console = console or Console(stderr=True)
        self.enabled = enabled

    def log(self, message: str, style: str | None = None) -> None:
        """`message` is plain text, never rich markup: it carries user text (paths, recipe names,
        error messages) in which `[/]` or `[bold]` must print as written."""
        if self.enabled:
            self.console.print(message, style=style, markup=False, highlight=False, soft_wrap=True)

    @contextmanager
    def task(self, label: str, total: int) -> Iterator[Callable[[], None]]:
        """Yields `advance`; shows a bar while the work runs."""
        if not self.enabled:
            yield lambda: None
            return
        if not self.console.is_terminal:  # a CI log: a line, not a redrawn bar
            self.log(f"  {label} ({total} steps)")
            yield lambda: None
            return
        bar = RichProgress(TextColumn("  {task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                           TimeElapsedColumn(), console=self.console, transient=True)
        with bar:
            task_id = bar.add_task(label, total=total)
            yield lambda: bar.advance(task_id)
