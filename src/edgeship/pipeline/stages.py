"""Timing and status of each stage, as the report records them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from edgeship.progress import Progress
from edgeship.report.schema import Stage


class StageLog:
    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.stages: list[Stage] = []

    @contextmanager
    def stage(self, name: str) -> Iterator[list[str]]:
        """Times the block; the block may append notes (shown as the stage's detail)."""
        notes: list[str] = []
        self.progress.log(f"[bold]▸ {name}[/]")
        start = time.perf_counter()
        try:
            yield notes
        except BaseException as e:
            self.stages.append(Stage(name=name, status="failed", seconds=time.perf_counter() - start,
                                     detail=f"{type(e).__name__}: {e}"))
            raise
        seconds = time.perf_counter() - start
        self.stages.append(Stage(name=name, status="ok", seconds=seconds, detail="; ".join(notes)))
        self.progress.log(f"  {name}: {seconds:.1f} s" + (f" · {'; '.join(notes)}" if notes else ""))

    def skipped(self, name: str, why: str) -> None:
        self.stages.append(Stage(name=name, status="skipped", seconds=0.0, detail=why))
        self.progress.log(f"[dim]▸ {name}: skipped ({why})[/]")
