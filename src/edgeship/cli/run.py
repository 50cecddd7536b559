"""`edgeship run` and `edgeship demo`: the pipeline, its console table and exit code."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from edgeship.cli.common import (DEMO_RECIPE, BaselineOption, ForceOption, NoCacheOption, OutOption,
                                 QuietOption, app, demo_recipe_text, progress_enabled, stderr, stdout,
                                 verbosity, Verbosity)
from edgeship.config import parse_override
from edgeship.errors import RUN_FOLDER_NOTE, EdgeshipError
from edgeship.progress import Progress
from edgeship.quiet import quiet_libraries_for_good
from edgeship.recipe import load_recipe, parse_recipe_text
from edgeship.report.console import print_console
from edgeship.report.load import load_report

SetOption = Annotated[list[str] | None, typer.Option(
    "--set", metavar="KEY.PATH=VALUE", help=(
        "Override a recipe key, validated like the file: qat.epochs=3, "
        "budgets[0].max_size_mb=0.5, name=nightly. The value is read as TOML, else as text. "
        "Repeatable."))]


SetupDevicesOption = Annotated[bool, typer.Option(
    "--setup-devices", help=("Build what an emulated device in `devices` needs, once per machine "
                             "(about 0.6 GB downloaded), instead of stopping with exit 2."))]


ClusterOption = Annotated[str | None, typer.Option(
    "--cluster", metavar="ADDRESS", help=("The Ray cluster to run exports, verifications (and QAT with "
                                          "engine = 'ray') on, as the recipe's cluster.address: auto, "
                                          "local, HOST:PORT or ray://HOST:PORT (pip install 'edgeship[ray]')."))]


def _run(recipe, out: Path, force: bool, quiet: bool, baseline: Path | None = None,
         no_cache: bool = False, setup_devices: bool = False) -> None:
    try:
        _run_and_print(recipe, out, force, quiet, baseline, no_cache, setup_devices)
    except Exception as e:
        if not isinstance(e, EdgeshipError):
            e.add_note(f"{RUN_FOLDER_NOTE}{out}")
        raise


def _run_and_print(recipe, out: Path, force: bool, quiet: bool, baseline: Path | None,
                   no_cache: bool, setup_devices: bool) -> None:
    from edgeship.pipeline.run import run_recipe  # torch: loaded by the commands that need it

    old = load_report(baseline) if baseline else None
    if verbosity() < Verbosity.DEBUG:
        quiet_libraries_for_good()
    report = run_recipe(recipe, out, force=force, progress=Progress(stderr, enabled=progress_enabled(quiet)),
                        baseline=old, use_cache=not no_cache, setup_devices=setup_devices)
    print_console(report, stdout)
    stdout.print(f"reports: {out / 'report.json'} · {out / 'report.md'} · {out / 'junit.xml'} · "
                 f"{out / 'report.html'}", highlight=False, markup=False)
    raise typer.Exit(report.exit_code)


def overrides(texts: list[str] | None) -> dict[str, object]:
    return dict(parse_override(t) for t in texts or [])


@app.command()
def run(recipe: Annotated[Path, typer.Argument(metavar="RECIPE", help="Recipe TOML file.")],
        out: OutOption = Path("edgeship-run"), force: ForceOption = False,
        quiet: QuietOption = False, baseline: BaselineOption = None,
        no_cache: NoCacheOption = False, set_: SetOption = None,
        setup_devices: SetupDevicesOption = False, cluster: ClusterOption = None) -> None:
    """Run the pipeline a recipe describes: quantize, export, verify, benchmark, gate, report.
    Run again into the same --out, an unchanged recipe resumes from the stage cache."""
    keys = overrides(set_) | ({"cluster.address": cluster} if cluster is not None else {})
    _run(load_recipe(recipe, keys), out, force, quiet, baseline, no_cache, setup_devices)


@app.command()
def demo(out: OutOption = Path("edgeship-demo"), force: ForceOption = False,
         quiet: QuietOption = False, no_cache: NoCacheOption = False,
         print_recipe: Annotated[bool, typer.Option("--print-recipe", help="Print the built-in "
                                                    "recipe (to copy and edit) and exit.")] = False) -> None:
    """Run the full pipeline on the built-in example: a digits CNN to every int8 target."""
    if print_recipe:
        sys.stdout.write(demo_recipe_text())
        return

    _run(parse_recipe_text(demo_recipe_text(), f"<built-in {DEMO_RECIPE}>", Path.cwd()), out, force,
         quiet, no_cache=no_cache)
