"""Timing and status of each stage, as the report records them, and the rule for work that fails
inside a stage: bad input stops the run, a failing flow or target is recorded and the others go on."""

from __future__ import annotations

import re
import sysconfig
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from edgeship.cluster import TaskFailed
from edgeship.errors import STAGE_NOTE, TARGET_NOTE, EdgeshipError, UserError, noted
from edgeship.pipeline.values import Results
from edgeship.progress import Progress
from edgeship.report.schema import Stage

K = TypeVar("K")
X = TypeVar("X")
V = TypeVar("V")


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _lines(e: BaseException, count: int) -> str:
    text = _ANSI.sub("", str(e)).strip()  # exporters colour their messages for a terminal
    return " ".join(line.strip() for line in text.splitlines()[:count] if line.strip())


# How captures fail on an `if` or loop over a tensor's values: torch.export (PT2E, ONNX) and
# torch.fx's symbolic tracing (FX)
_DATA_DEPENDENT = ("data-dependent", "cannot be used as inputs to control flow",
                   "Dynamic control flow is not supported")
_LIBRARY_DIRS = (str(Path(sysconfig.get_paths()["stdlib"])), str(Path(sysconfig.get_paths()["purelib"])),
                 str(Path(__file__).resolve().parents[1]))


def user_line(e: BaseException) -> str | None:
    """For a capture that failed on data-dependent control flow: the user's line it failed on,
    and what to do; None for any other failure."""
    if not any(marker in str(e) for marker in _DATA_DEPENDENT):
        return None
    frames = [f for f in traceback.extract_tb(e.__traceback__)
              if not f.filename.startswith(_LIBRARY_DIRS) and not f.filename.startswith("<")]
    if not frames:
        return None
    f = frames[-1]  # the deepest frame in the user's code: their forward()
    return (f"{f.filename}:{f.lineno} in {f.name}: `{(f.line or '').strip()}` decides on a tensor's "
            f"values, which a captured graph cannot ({type(e).__name__}); rewrite it with torch.cond "
            f"or move the decision out of the model")


def describe(e: BaseException, limit: int = 600) -> str:
    """The first lines of an exception: they name the op or the line that failed. A wrapped
    exception (torch.onnx's ConversionError around a DispatchError) is described by its innermost
    cause, which names the op, then the first sentence of the error raised."""
    root, depth = e, 0
    while root.__cause__ is not None and depth < 10:
        root, depth = root.__cause__, depth + 1
    if isinstance(root, TaskFailed):  # described by the Ray worker it happened on
        return str(root)
    text = user_line(root) or f"{type(root).__name__}: {_lines(root, 4)}"
    if root is not e:
        text += f" (raised as {type(e).__name__}: {_lines(e, 1).split('. ')[0]})"
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
