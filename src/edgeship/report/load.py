"""Read a report.json back: edgeship's own, of a compatible version, or one clear UserError."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

from pydantic import ValidationError

from edgeship.config import validation_problems
from edgeship.errors import UserError
from edgeship.report.samples import attach_samples
from edgeship.report.schema import Report
from edgeship.version import __version__


def _major(version: str) -> str:
    return version.split(".", 1)[0]


def load_report(path: str | Path) -> Report:
    """The Report in `path`. Not readable, not JSON, not edgeship's (no `edgeship_version`), of
    another major version, or not matching the schema: UserError (exit 2) with one line."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise UserError(f"{path}: cannot read report: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not an edgeship report: not a text file") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not an edgeship report: not valid JSON ({e.msg}, line {e.lineno})") from None
    except RecursionError:  # json recurses once per level of nested arrays or objects
        raise UserError(f"{path}: not an edgeship report: arrays or objects nested too deeply") from None
    if not isinstance(data, dict) or "edgeship_version" not in data:
        raise UserError(f"{path}: not an edgeship report: it has no edgeship_version")
    version = str(data["edgeship_version"])
    if _major(version) != _major(__version__):
        raise UserError(f"{path}: report of edgeship {version}, incompatible with this edgeship "
                        f"{__version__} (major versions differ)")
    try:
        report = Report.model_validate(data)
    except ValidationError as e:
        problems = validation_problems(e)
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise UserError(f"{path}: not a valid edgeship report: {'; '.join(problems[:3])}{more}") from None
    where, value = next(_unrepresentable(report.model_dump()), (None, None))
    if where is not None:
        what = f"an integer of {value.bit_length()} bits" if isinstance(value, int) else repr(value)
        raise UserError(f"{path}: not a valid edgeship report: {where}: {what}, not a finite "
                        f"number within ±2^63")
    return attach_samples(report, path)


# edgeship writes reports with pydantic, which writes NaN and infinities as null, and no figure
# it measures reaches 2^63. Anything else came from elsewhere, and arithmetic on it fails or lies:
# 10**400 overflows a float division in `compare`; NaN (also from a "NaN" string, which pydantic
# reads into a float field) fails every comparison, and a gate would read that as a violation.
_LARGEST_INT = 2**63


def _unrepresentable(value: object, where: str = "") -> Iterator[tuple[str, object]]:
    """(key path, value) of every number in a report's data that is not finite or not within
    ±2^63, depth first."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _unrepresentable(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from _unrepresentable(item, f"{where}[{i}]")
    elif isinstance(value, float) and not math.isfinite(value):
        yield where, value
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) >= _LARGEST_INT:
        yield where, value
