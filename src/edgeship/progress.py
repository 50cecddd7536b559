"""Progress on long work (training, calibration, benchmarks), on stderr, with rich; and the
progress of work done in other processes (Ray tasks), shown here as this process's own."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichProgress

# What a Forwarded progress sends: ("open", label, total), ("advance", label, steps),
# ("close", label) or ("log", message, style)
Event = tuple


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
            self.log(_line(label, total))
            yield lambda: None
            return
        with _bars(self.console) as bar:
            task_id = bar.add_task(label, total=total)
            yield lambda: bar.advance(task_id)


def _line(label: str, total: int) -> str:
    return f"  {label} ({total} steps)"


def _bars(console: Console) -> RichProgress:
    return RichProgress(TextColumn("  {task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=console, transient=True)


class Forwarded(Progress):
    """The progress of work in another process (a Ray task), sent as events to `send` for the
    process that started the work to show (Relayed). Steps go in batches, a few a second: each
    send may cross the network."""

    EVERY_SECONDS = 0.25

    def __init__(self, send: Callable[[Event], None]) -> None:
        self.enabled, self._send = True, send

    def log(self, message: str, style: str | None = None) -> None:
        self._send(("log", message, style))

    @contextmanager
    def task(self, label: str, total: int) -> Iterator[Callable[[], None]]:
        self._send(("open", label, total))
        pending, sent_at = 0, time.monotonic()

        def advance() -> None:
            nonlocal pending, sent_at
            pending += 1
            if time.monotonic() - sent_at >= self.EVERY_SECONDS:
                self._send(("advance", label, pending))
                pending, sent_at = 0, time.monotonic()
        try:
            yield advance
        finally:
            if pending:
                self._send(("advance", label, pending))
            self._send(("close", label))


class Relayed:
    """Other processes' Forwarded progress, shown by `progress` as its own: the same lines in a
    log, the same bars on a terminal, drawn while this process waits for that work (`live`)."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.bars: dict[str, list[int]] = {}  # label -> [steps done, total], while open
        self._live: tuple[RichProgress, dict[str, int]] | None = None

    def show(self, event: Event) -> None:
        kind, label, *rest = event
        if kind == "log":
            self.progress.log(label, *rest)
            return
        if kind == "open":
            self.bars[label] = [0, rest[0]]
            if not self.progress.console.is_terminal:
                self.progress.log(_line(label, rest[0]))
        elif kind == "advance" and label in self.bars:
            self.bars[label][0] += rest[0]
        elif kind == "close":
            self.bars.pop(label, None)
        self._draw()

    @contextmanager
    def live(self) -> Iterator[None]:
        """Draws the open bars while the caller waits (on a terminal)."""
        if not (self.progress.enabled and self.progress.console.is_terminal) or self._live is not None:
            yield
            return
        with _bars(self.progress.console) as bar:
            self._live = (bar, {})
            self._draw()
            try:
                yield
            finally:
                self._live = None

    def _draw(self) -> None:
        if self._live is None:
            return
        bar, ids = self._live
        for label in [label for label in ids if label not in self.bars]:
            bar.remove_task(ids.pop(label))
        for label, (done, total) in self.bars.items():
            if label not in ids:
                ids[label] = bar.add_task(label, total=total)
            bar.update(ids[label], completed=done)
        bar.refresh()  # now, not at the next tick: events come a few a second
