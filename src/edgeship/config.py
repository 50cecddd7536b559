"""What every configuration file edgeship reads (recipe, device profile) has in common: strict
sections, and validation problems said one a line with the key path of each."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, ValidationError


class Section(BaseModel):
    """A table of a configuration file. Unknown keys are errors: a misspelt budget or profile key
    must not be silently ignored. Frozen: a validated configuration is not changed afterwards."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def key_path(loc: tuple) -> str:
    """pydantic's error location as the file spells it: `budgets[1].max_size_mb`.

    >>> key_path(("budgets", 1, "max_size_mb"))
    'budgets[1].max_size_mb'
    """
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "(top level)"


def validation_problems(error: ValidationError) -> list[str]:
    """One 'key.path: what is wrong' line per problem, in the file's own words."""
    problems = []
    for e in error.errors():
        message = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            message = "unknown key"
        elif e["type"] == "missing":
            message = "required key is missing"
        problems.append(f"{key_path(e['loc'])}: {message}")
    return problems
