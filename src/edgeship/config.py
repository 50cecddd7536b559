"""What every configuration file edgeship reads (recipe, device profile) has in common: strict
sections, and validation problems said one a line with the key path of each."""

from __future__ import annotations

import copy
import difflib
import re
import tomllib
import unicodedata
from pathlib import Path
from typing import Annotated, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from edgeship.errors import UserError


class Section(BaseModel):
    """A table of a configuration file. Unknown keys are errors: a misspelt budget or profile key
    must not be silently ignored. Frozen: a validated configuration is not changed afterwards.
    Numbers are finite: TOML spells `inf` and `nan`, and no setting of a profile or a recipe
    means either (min_seconds = inf overflowed in the runner)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def visible(text: str) -> str:
    r"""`text` with each control or format character (a newline, BEL, ESC, a right-to-left
    override) written as its code, so that it can neither split a line nor ring, repaint or
    reorder a terminal.

    >>> visible("a|b \x07 \x1b[31m")
    'a|b \\x07 \\x1b[31m'
    """
    return "".join((f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")
                   if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") else c for c in text)


# A name shown in reports, tables and one-line errors: kept as the user typed it but for its
# control characters, which are written as their codes (a newline or an escape sequence would
# split or repaint every line it is shown in).
Name = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(visible)]


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


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The section class that holds the key at `loc` (list indexes and dict keys skipped)."""
    for part in loc:
        if isinstance(part, int) or part not in model.model_fields:
            continue
        inner = [t for t in _types(model.model_fields[part].annotation)
                 if isinstance(t, type) and issubclass(t, BaseModel)]
        if not inner:
            return None
        model = inner[0]
    return model


def _types(annotation: object) -> list[object]:
    """`annotation` and every type inside it (X | None, list[X], dict[str, X], Annotated[X, ...])."""
    out = [annotation]
    for arg in get_args(annotation):
        out += _types(arg)
    return out


def did_you_mean(key: str, known: list[str]) -> str:
    """' (did you mean 'max_size_mb'?)' when one known key is close to `key`, else ''.

    >>> did_you_mean("max_latncy_p50_ms", ["max_latency_p50_ms", "max_size_mb"])
    " (did you mean 'max_latency_p50_ms'?)"
    """
    close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _unknown_key(loc: tuple, model: type[BaseModel] | None) -> str:
    section = _model_at(model, loc[:-1]) if model is not None else None
    return "unknown key" + (did_you_mean(loc[-1], list(section.model_fields)) if section else "")


def validation_problems(error: ValidationError, model: type[BaseModel] | None = None) -> list[str]:
    """One 'key.path: what is wrong' line per problem, in the file's own words; an unknown key
    of `model` (the validated class) gets the closest known key as a suggestion."""
    problems = []
    for e in error.errors():
        message = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            message = _unknown_key(e["loc"], model)
        elif e["type"] == "missing":
            message = "required key is missing"
        if not e["loc"] and _KEYED.match(message):  # a model validator's message names its key itself
            problems.append(message)
        else:
            problems.append(f"{key_path(e['loc'])}: {message}")
    return problems


_OVERRIDE = re.compile(r"^(?P<path>[A-Za-z_][\w-]*(?:\[\d+\]|\.[A-Za-z_][\w-]*)*)=(?P<value>.*)$", re.S)


def parse_override(text: str) -> tuple[str, object]:
    """`key.path=value` (`--set`): the path, and the value read as TOML (`3`, `true`, `"a"`,
    `[1, 2]`), or as the plain string where it is not TOML (`--set name=my-model`).

    >>> parse_override("budgets[0].max_size_mb=0.5")
    ('budgets[0].max_size_mb', 0.5)
    >>> parse_override("name=my model")
    ('name', 'my model')
    """
    match = _OVERRIDE.match(text)
    if not match:
        raise UserError(f"--set {text!r}: expected KEY.PATH=VALUE, e.g. qat.epochs=3 or "
                        f"budgets[0].max_size_mb=0.5")
    try:
        value = tomllib.loads(f"v = {match['value']}")["v"]
    except tomllib.TOMLDecodeError:
        value = match["value"]
    return match["path"], value


def _parts(path: str) -> list[str | int]:
    return [int(p[1:-1]) if p.startswith("[") else p for p in re.findall(r"\[\d+\]|[^.\[\]]+", path)]


def apply_overrides(data: dict, overrides: dict[str, object], source: str) -> dict:
    """A copy of `data` with each `key.path` set to its value; missing tables on the way are
    created, a list index must exist. The result is validated like the file, by the caller."""
    data = copy.deepcopy(data)
    for path, value in overrides.items():
        parts, node = _parts(path), data
        for i, part in enumerate(parts[:-1]):
            if isinstance(part, int):
                if not isinstance(node, list) or part >= len(node):
                    raise UserError(f"{source}: --set {path}: {key_path(tuple(parts[:i]))} has no "
                                    f"item [{part}]")
                node = node[part]
            else:
                if not isinstance(node, dict):
                    raise UserError(f"{source}: --set {path}: {key_path(tuple(parts[:i]))} is not a table")
                node = node.setdefault(part, {} if not isinstance(parts[i + 1], int) else [])
        last = parts[-1]
        if isinstance(last, int) and (not isinstance(node, list) or last >= len(node)):
            raise UserError(f"{source}: --set {path}: no item [{last}] to set")
        if not isinstance(last, int) and not isinstance(node, dict):
            raise UserError(f"{source}: --set {path}: {key_path(tuple(parts[:-1]))} is not a table")
        node[last] = value
    return data
