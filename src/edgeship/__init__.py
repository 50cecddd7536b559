"""edgeship: a float PyTorch model to gated int8 artifacts for TorchScript, ONNX Runtime and
ExecuTorch, verified in their own runtimes and measured on the devices they ship to.

The Python API is the command line's, typed: `run` (the pipeline), `gate` (budgets on a report
already written) and `compare` (report A against report B). Each is as quiet as the command
line: the libraries' deprecation notices are silenced inside edgeship's calls only (the warning
filters and loggers of the calling program are left as they were). Bad input raises
edgeship.errors.UserError (the command line's exit code 2)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import edgeship.gate  # noqa: F401 - loaded first, so the function `gate` below keeps the name
from edgeship.version import __version__

if TYPE_CHECKING:
    from edgeship.gate.regate import Regated
    from edgeship.recipe import Recipe
    from edgeship.report.compare import Comparison
    from edgeship.report.schema import Report


def _recipe(recipe: str | Path | dict | Recipe, overrides: dict[str, Any] | None) -> Recipe:
    """A recipe given as a TOML path, the dict of its tables, or a Recipe; `overrides` as `--set`."""
    from edgeship.recipe import Recipe, load_recipe, parse_recipe

    if isinstance(recipe, Recipe):
        if not overrides:
            return recipe
        data = recipe.model_dump(mode="json", exclude_none=True)
        return parse_recipe(data, f"<recipe {recipe.name}>", recipe.base_dir, overrides)
    if isinstance(recipe, dict):
        return parse_recipe(recipe, "<recipe dict>", Path.cwd(), overrides)
    return load_recipe(recipe, overrides)


def _report(report: str | Path | Report) -> Report:
    from edgeship.report.load import load_report

    return report if not isinstance(report, (str, Path)) else load_report(report)


def run(recipe: str | Path | dict | Recipe, out: str | Path = "edgeship-run", *,
        baseline: str | Path | Report | None = None, overrides: dict[str, Any] | None = None,
        force: bool = False, quiet: bool = False, use_cache: bool = True,
        setup_devices: bool = False) -> Report:
    """Run the pipeline of `recipe` into the folder `out` and return its Report.

    `overrides` sets recipe keys as `edgeship run --set` does (`{"qat.epochs": 3}`), validated
    like the file. `baseline`: an earlier report (or its path) for the budgets' max_regression
    limits. `report.exit_code` is what the command line would exit with: 0 passed, 1 a budget
    failed, 3 a device or runtime failure. `setup_devices`: build what an emulated device needs
    (once per machine) instead of raising UserError with the command that builds it.
    """
    from edgeship.pipeline.run import run_recipe
    from edgeship.progress import Progress
    from edgeship.quiet import quiet_libraries

    parsed = _recipe(recipe, overrides)
    old = _report(baseline) if baseline is not None else None
    with quiet_libraries():
        return run_recipe(parsed, Path(out), force=force, progress=Progress(enabled=not quiet),
                          baseline=old, use_cache=use_cache, setup_devices=setup_devices)


# Python sets `edgeship.gate` to the subpackage when the subpackage is first loaded; it was loaded
# above, so this definition is the one `edgeship.gate` names from here on.
def gate(report: str | Path | Report, *, baseline: str | Path | Report | None = None,
         recipe: str | Path | None = None) -> Regated:
    """Budgets evaluated again on a written report (its own, or `recipe`'s): `.report` is a copy
    with the new gate and exit code, `.decision.checks` every check with its outcome."""
    from edgeship.gate.regate import regate

    return regate(_report(report), Path(recipe) if recipe else None,
                  _report(baseline) if baseline is not None else None)


def compare(a: str | Path | Report, b: str | Path | Report) -> Comparison:
    """What changed from report `a` to report `b`: sizes, metrics, and per device the latency
    ratio B/A with its bootstrap interval and verdict (slower, faster, no change)."""
    from edgeship.report.compare import compare as diff

    return diff(_report(a), _report(b))


__all__ = ["__version__", "compare", "gate", "run"]
