"""edgeship: a float PyTorch model to gated int8 artifacts for TorchScript, ONNX Runtime and
ExecuTorch, verified in their own runtimes and measured on the devices they ship to."""

from __future__ import annotations

from pathlib import Path

from edgeship.version import __version__


def run(recipe, out: str | Path = "edgeship-run", *, force: bool = False, quiet: bool = False,
        use_cache: bool = True):
    """Run the pipeline of `recipe` (a path to a recipe TOML or an edgeship.recipe.Recipe) into the
    folder `out`, and return the report (edgeship.report.schema.Report).

    `report.exit_code` is what the CLI would exit with: 0 passed, 1 a budget failed,
    3 a device or runtime failure. Bad input raises edgeship.errors.UserError (exit code 2).
    """
    from edgeship.pipeline.run import run_recipe
    from edgeship.progress import Progress
    from edgeship.recipe import Recipe, load_recipe

    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    return run_recipe(recipe, Path(out), force=force, progress=Progress(enabled=not quiet),
                      use_cache=use_cache)


__all__ = ["__version__", "run"]
