"""What every command shares: the typer app and its global options (--version, -v/-q), the two
consoles, the options several commands take, and the JSON printer of `--json`."""

from __future__ import annotations

import json
import logging
import sys
from enum import IntEnum
from importlib import resources
from pathlib import Path
from typing import Annotated

import typer
import typer.core
from rich.console import Console
from rich.logging import RichHandler

from edgeship.version import __version__

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Ship a float PyTorch model as gated int8 artifacts.")
devices_app = typer.Typer(no_args_is_help=True, help="Device profiles: list, show, check.")
app.add_typer(devices_app, name="devices")

# CI logs are not terminals: rich would wrap the results table at 80 columns.
stdout = Console(width=None if sys.stdout.isatty() else 200)  # the results table: 14 columns
stderr = Console(stderr=True)

_flag_type = typer.core.TyperOption.display_type_rich


def _no_type_for_flags(self, ctx):  # typer 0.29 labels every flag <bool> (and -v <int>), as if it took a value
    return None if self.is_flag or self.count else _flag_type(self, ctx)


typer.core.TyperOption.display_type_rich = _no_type_for_flags


class Verbosity(IntEnum):
    QUIET = 0  # errors only, no progress
    NORMAL = 1  # progress and warnings
    VERBOSE = 2  # -v: what each command checked or reused
    DEBUG = 3  # -vv: the commands run on devices, and the libraries' own warnings


_state = {"verbosity": Verbosity.NORMAL}


def verbosity() -> Verbosity:
    return _state["verbosity"]


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"edgeship {__version__}\n")
        raise typer.Exit(0)


@app.callback()
def _global(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                  help="Print edgeship's version and exit.")] = False,
            verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help=(
                "More detail: -v what each command checked or reused, -vv also the commands run "
                "on devices and the libraries' own warnings."))] = 0,
            quiet: Annotated[bool, typer.Option("--quiet", "-q", help=(
                "Errors and results only: no progress, no warnings."))] = False) -> None:
    """Ship a float PyTorch model as gated int8 artifacts."""
    level = Verbosity.QUIET if quiet else Verbosity(min(Verbosity.NORMAL + verbose, Verbosity.DEBUG))
    _state["verbosity"] = level
    logger = logging.getLogger("edgeship")
    logger.handlers = [RichHandler(console=stderr, show_time=False, show_path=False, markup=False)]
    logger.setLevel({Verbosity.QUIET: logging.ERROR, Verbosity.NORMAL: logging.WARNING,
                     Verbosity.VERBOSE: logging.INFO, Verbosity.DEBUG: logging.DEBUG}[level])
    logger.propagate = False


OutOption = Annotated[Path, typer.Option("--out", "-o", help="Run folder to write artifacts and reports to.")]
ForceOption = Annotated[bool, typer.Option("--force", help=(
    "Replace an earlier run in --out: deletes only the files edgeship wrote that are unchanged "
    "since; stops (exit 2) when a file edgeship did not write, or one changed since, lies where "
    "the run writes. Other files in --out are left alone."))]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress on stderr.")]
NoCacheOption = Annotated[bool, typer.Option("--no-cache", help="Redo every stage; do not reuse "
                                             "the stage cache in --out (it is still refreshed).")]
BaselineOption = Annotated[Path | None, typer.Option(
    "--baseline", metavar="REPORT", help="report.json of an earlier run: the budgets' "
    "max_regression limits (median:5%, size:2%, accuracy:-0.5 …) compare with it.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout "
                                          "instead of text (the exit code is the same).")]

DEMO_RECIPE = "digits_cnn.toml"


def demo_recipe_text() -> str:
    return (resources.files("edgeship.examples") / "recipes" / DEMO_RECIPE).read_text()


def opt(*names: str, help: str, metavar: str | None = None):  # noqa: A002 - typer's word
    return typer.Option(*names, help=help, metavar=metavar)


def print_json(data: object) -> None:
    """`data` as indented JSON on stdout, as it is: no markup, no highlighting, no wrapping."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def progress_enabled(quiet: bool) -> bool:
    return not quiet and verbosity() > Verbosity.QUIET
