"""Timing and status of each stage, as the report records them, and the rule for work that fails
inside a stage: bad input stops the run, a failing flow or target is recorded and the others go on."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from edgeship.errors import STAGE_NOTE, TARGET_NOTE, EdgeshipError, UserError, noted
from edgeship.pipeline.values import Results
from edgeship.progress import Progress
from edgeship.report.schema import Stage

K = TypeVar("K")
X = TypeVar("X")
V = TypeVar("V")


def describe(e: BaseException, limit: int = 600) -> str:
    """The first lines of an exception: they name the op or the line that failed."""
    text = " ".join(line.strip() for line in str(e).strip().splitlines()[:4] if line.strip())
    text = f"{type(e).__name__}: {text}"
    return text if len(text) <= limit else text[:limit] + "…"


def _note_once(e: BaseException, prefix: str, value: str) -> None:
    """The innermost stage or target is the one named: an outer one does not add its own."""
    if isinstance(e, Exception) and not isinstance(e, EdgeshipError) and noted(e, prefix) is None:
        e.add_note(prefix + value)


@contextmanager
def naming_target(name: str) -> Iterator[None]:
    """An unexpected exception leaving the block is noted with the target it was working on, so
    the CLI's crash line names it (the stage is noted by StageLog.stage)."""
    try:
        yield
    except BaseException as e:
        _note_once(e, TARGET_NOTE, name)
        raise


def each(items: Iterable[tuple[K, X]], work: Callable[[K, X], V],
         failed: Callable[[K, str], dict[str, str]]) -> Results[K, V]:
    """`work` on each item. An item whose work raises fails the targets `failed` names, with the
    exception described; the others go on. Bad input (UserError) stops the run."""
    out: Results[K, V] = Results()
    for key, item in items:
        try:
            out.ok[key] = work(key, item)
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - this flow or target fails, the others go on
            out.failed.update(failed(key, describe(e)))
    return out


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
        self.progress.log(f"▸ {name}", style="bold")
        start = time.perf_counter()
        try:
            yield notes
        except BaseException as e:
            self.stages.append(Stage(name=name, status="failed", seconds=time.perf_counter() - start,
                                     detail=f"{type(e).__name__}: {e}"))
            _note_once(e, STAGE_NOTE, name)  # the CLI's crash line says where it happened
            raise
        seconds = time.perf_counter() - start
        status = "cached" if notes.cached else "ok"
        self.stages.append(Stage(name=name, status=status, seconds=seconds, detail="; ".join(notes)))
        said = "; ".join([*notes, *(["reused from the stage cache"] if notes.cached else [])])
        self.progress.log(f"  {name}: {seconds:.1f} s" + (f" · {said}" if said else ""))

    def skipped(self, name: str, why: str) -> None:
        self.stages.append(Stage(name=name, status="skipped", seconds=0.0, detail=why))
        self.progress.log(f"▸ {name}: skipped ({why})", style="dim")
