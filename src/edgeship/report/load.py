"""Read a report.json back: edgeship's own, of a compatible version, or one clear UserError."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import ValidationError

from edgeship.config import validation_problems
from edgeship.errors import UserError
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
    if not isinstance(data, dict) or "edgeship_version" not in data:
        raise UserError(f"{path}: not an edgeship report: it has no edgeship_version")
    version = str(data["edgeship_version"])
    if _major(version) != _major(__version__):
        raise UserError(f"{path}: report of edgeship {version}, incompatible with this edgeship "
                        f"{__version__} (major versions differ)")
    try:
        return Report.model_validate(data)
    except ValidationError as e:
        problems = validation_problems(e)
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise UserError(f"{path}: not a valid edgeship report: {'; '.join(problems[:3])}{more}") from None
