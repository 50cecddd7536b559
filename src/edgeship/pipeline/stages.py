"""Timing and status of each stage, as the report records them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from edgeship.progress import Progress
from edgeship.report.schema import Stage


class StageNotes(list):
    """What a stage says about its work; `cached` when all of it came from the stage cache."""

    cached: bool = False


class StageLog:
    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.stages: list[Stage] = []

    @contextmanager
    def stage(self, name: str) -> Iterator[StageNotes]:
        """Times the block; the block may append notes (shown as the stage's detail)."""
        notes = StageNotes()
        self.progress.log(f"[bold]▸ {name}[/]")
        start = time.perf_counter()
        try:
            yield notes
        except BaseException as e:
            self.stages.append(Stage(name=name, status="failed", seconds=time.perf_counter() - start,
                                     detail=f"{type(e).__name__}: {e}"))
            raise
        seconds = time.perf_counter() - start
        status = "cached" if notes.cached else "ok"
        self.stages.append(Stage(name=name, status=status, seconds=seconds, detail="; ".join(notes)))
        said = "; ".join([*notes, *(["reused from the stage cache"] if notes.cached else [])])
        self.progress.log(f"  {name}: {seconds:.1f} s" + (f" · {said}" if said else ""))

    def skipped(self, name: str, why: str) -> None:
        self.stages.append(Stage(name=name, status="skipped", seconds=0.0, detail=why))
        self.progress.log(f"[dim]▸ {name}: skipped ({why})[/]")
