"""Helpers of the tests: recipes built from the built-in demo recipe, the real CLI in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import tomli_w

from edgeship.cli import demo_recipe_text
from edgeship.devices.profile import BenchmarkSettings

EDGESHIP = [sys.executable, "-m", "edgeship"]

# Short measurements: the suite checks that benchmarks are real and complete, not how fast
# anything is (that is tests/perf/, run by `make bench`).
QUICK_BENCHMARK = {"warmup_iterations": 2, "min_iterations": 20, "min_seconds": 0.1,
                   "timeout_seconds": 120}


def bench_args(**settings) -> tuple[str, ...]:
    """The runner's bench arguments for BenchmarkSettings with these changes: the runner has no
    defaults of its own (`timeout_seconds` sets its --max-seconds, half of it)."""
    return BenchmarkSettings(**settings).runner_args()


def demo_recipe(**changes) -> dict:
    recipe = tomllib.loads(demo_recipe_text())
    recipe["benchmark"] = dict(QUICK_BENCHMARK)
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            recipe.setdefault(section, {})[field] = value
        else:
            recipe[key] = value
    return recipe


def write_recipe(folder: Path, recipe: dict, name: str = "recipe.toml") -> Path:
    path = folder / name
    path.write_text(tomli_w.dumps(recipe))
    return path


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str
    out: Path

    def report(self) -> dict:
        return json.loads((self.out / "report.json").read_text())


def run_cli(*args: str, out: Path | None = None, cwd: Path | None = None,
            env: dict[str, str] | None = None) -> CliResult:
    argv = [*EDGESHIP, *args] + (["--out", str(out), "--quiet"] if out else [])
    env = {**os.environ, "COLUMNS": "200", **(env or {})}
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=cwd, env=env, timeout=1200)
    return CliResult(proc.returncode, proc.stdout, proc.stderr, out or Path())


