"""What every configuration file edgeship reads (recipe, device profile) has in common: strict
sections, and validation problems said one a line with the key path of each."""

from __future__ import annotations

import re
import tomllib
import unicodedata
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from edgeship.errors import UserError


class Section(BaseModel):
    """A table of a configuration file. Unknown keys are errors: a misspelt budget or profile key
    must not be silently ignored. Frozen: a validated configuration is not changed afterwards.
    Numbers are finite: TOML spells `inf` and `nan`, and no setting of a profile or a recipe
    means either (min_seconds = inf overflowed in the runner)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _printable(text: str) -> str:
    if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in text):
        raise ValueError("must be printable text on one line: no control or format characters")
    return text


# A name shown in reports, tables and one-line errors: a newline or an escape sequence in it
# would split or repaint them.
Name = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_printable)]


def read_toml(path: Path, what: str) -> dict:
    """The tables of a TOML file a user gave, or UserError with one line naming the file: not
    readable, not UTF-8 text (TOML is UTF-8 by definition), not TOML, or nested too deeply for
    the parser."""
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as e:
        raise UserError(f"{path}: cannot read {what}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not a {what}: not UTF-8 text (byte {e.start})") from None
    return parse_toml(text, str(path))


def parse_toml(text: str, source: str) -> dict:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{source}: not valid TOML: {e}") from None
    except RecursionError:  # tomllib recurses once per level of nested arrays or inline tables
        raise UserError(f"{source}: not valid TOML: arrays or tables nested too deeply") from None


def key_path(loc: tuple) -> str:
    """pydantic's error location as the file spells it: `budgets[1].max_size_mb`.

    >>> key_path(("budgets", 1, "max_size_mb"))
    'budgets[1].max_size_mb'
    """
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "(top level)"


_KEYED = re.compile(r"[A-Za-z_][\w.\[\]-]*: ")


def validation_problems(error: ValidationError) -> list[str]:
    """One 'key.path: what is wrong' line per problem, in the file's own words."""
    problems = []
    for e in error.errors():
        message = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            message = "unknown key"
        elif e["type"] == "missing":
            message = "required key is missing"
        if not e["loc"] and _KEYED.match(message):  # a model validator's message names its key itself
            problems.append(message)
        else:
            problems.append(f"{key_path(e['loc'])}: {message}")
    return problems
