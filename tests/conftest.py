"""Session fixtures. Helpers live in support.py."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
import pytest
from filelock import FileLock

from support import CliResult, demo_recipe, run_cli, write_recipe


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> CliResult:
    """The built-in demo recipe through the real CLI (`edgeship run`), measured briefly, and
    profiled per op (`profile = true`). Run once per session: under pytest-xdist the first
    worker that needs it runs it and the others read its result (the folder all workers share)."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent
    folder, saved = shared / "demo", shared / "demo" / "result.json"
    with FileLock(str(shared / "demo.lock")):
        if saved.is_file():
            return CliResult(**{**json.loads(saved.read_text()), "out": folder / "run"})
        folder.mkdir(exist_ok=True)
        recipe = demo_recipe()
        recipe["benchmark"]["profile"] = True
        result = run_cli("run", str(write_recipe(folder, recipe)), out=folder / "run")
        saved.write_text(json.dumps({**asdict(result), "out": str(result.out)}))
        return result
