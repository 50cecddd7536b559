"""The `edgeship` command. Exit codes: 0 passed, 1 a budget failed, 2 bad input,
3 a device or runtime failure."""

from __future__ import annotations

import logging
import sys
import warnings
from importlib import resources
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from edgeship.errors import EdgeshipError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Ship a float PyTorch model as gated int8 artifacts.")
devices_app = typer.Typer(no_args_is_help=True, help="Device profiles: list, show.")
app.add_typer(devices_app, name="devices")

# CI logs are not terminals: rich would wrap the results table at 80 columns.
stdout = Console(width=None if sys.stdout.isatty() else 160)
stderr = Console(stderr=True)

OutOption = Annotated[Path, typer.Option("--out", "-o", help="Run folder to write artifacts and reports to.")]
ForceOption = Annotated[bool, typer.Option("--force", help="Replace an earlier run in --out (only "
                                                           "the files edgeship wrote).")]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress on stderr.")]

DEMO_RECIPE = "digits_cnn.toml"


def demo_recipe_text() -> str:
    return (resources.files("edgeship.examples") / "recipes" / DEMO_RECIPE).read_text()


def _run(recipe, out: Path, force: bool, quiet: bool) -> None:
    from edgeship.pipeline.run import run_recipe
    from edgeship.progress import Progress
    from edgeship.report.writers import print_console

    quiet_third_party()
    report = run_recipe(recipe, out, force=force, progress=Progress(stderr, enabled=not quiet))
    print_console(report, stdout)
    stdout.print(f"reports: {out / 'report.json'} · {out / 'report.md'}", highlight=False)
    raise typer.Exit(report.exit_code)


@app.command()
def run(recipe: Annotated[Path, typer.Argument(help="Recipe TOML file.")],
        out: OutOption = Path("edgeship-run"), force: ForceOption = False,
        quiet: QuietOption = False) -> None:
    """Run the pipeline a recipe describes: quantize, export, verify, benchmark, gate, report."""
    from edgeship.recipe import load_recipe

    _run(load_recipe(recipe), out, force, quiet)


@app.command()
def demo(out: OutOption = Path("edgeship-demo"), force: ForceOption = False,
         quiet: QuietOption = False,
         print_recipe: Annotated[bool, typer.Option("--print-recipe", help="Print the built-in "
                                                    "recipe (to copy and edit) and exit.")] = False) -> None:
    """Run the full pipeline on the built-in example: a digits CNN to every int8 target."""
    if print_recipe:
        sys.stdout.write(demo_recipe_text())
        return
    from edgeship.recipe import parse_recipe_text

    _run(parse_recipe_text(demo_recipe_text(), f"<built-in {DEMO_RECIPE}>", Path.cwd()), out, force, quiet)


@devices_app.command("list")
def devices_list() -> None:
    """The device profiles shipped with edgeship."""
    from edgeship.devices.profile import load_profile, shipped_profiles

    for name in sorted(shipped_profiles()):
        profile = load_profile(name)
        stdout.print(f"{name:12} {profile.transport.kind:6} {profile.arch:8} {profile.description}",
                     highlight=False)


@devices_app.command("show")
def devices_show(name: Annotated[str, typer.Argument(help="Profile name or path to a .toml.")]) -> None:
    """A device profile, validated, with its defaults filled in."""
    from edgeship.devices.profile import load_profile

    stdout.print_json(load_profile(name).model_dump_json())


def quiet_third_party() -> None:
    """The CLI shows edgeship's own findings; the libraries' notices of their own deprecations
    (torch.ao FX, quantized tensors, pytree) and optional-kernel loading drown them."""
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    for message in (".*reduce_range will be deprecated.*", ".*quantized tensor creation functions.*",
                    "Exporting a model while it is in training mode.*"):
        warnings.filterwarnings("ignore", message=message)
    import torch  # noqa: F401 - torch configures its loggers on import: quiet them after that

    for name in ("torch", "torchao", "executorch"):
        logging.getLogger(name).setLevel(logging.ERROR)


def main() -> None:
    try:
        app()  # click's own usage errors exit 2; typer.Exit carries the run's exit code
    except EdgeshipError as e:
        for line in str(e).splitlines():  # plain text: no markup, no wrapping, one line each
            sys.stderr.write(f"error: {line}\n")
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
