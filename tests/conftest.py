"""Session fixtures. Helpers live in support.py."""

from __future__ import annotations

import pytest

from support import CliResult, demo_recipe, run_cli, write_recipe


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> CliResult:
    """The built-in demo recipe through the real CLI (`edgeship run`), measured briefly, and
    profiled per op (`profile = true`)."""
    folder = tmp_path_factory.mktemp("demo")
    recipe = demo_recipe()
    recipe["benchmark"]["profile"] = True
    recipe = write_recipe(folder, recipe)
    return run_cli("run", str(recipe), out=folder / "run")
