"""Helpers of the tests: recipes built from the built-in demo recipe, the real CLI in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tomli_w

from edgeship.cli import demo_recipe_text
from edgeship.data import stack
from edgeship.devices.profile import BenchmarkSettings, LocalTransport
from edgeship.devices.transports import Local, RunnerCall
from edgeship.examples.digits import splits

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
            env: dict[str, str] | None = None, quiet: bool = True) -> CliResult:
    argv = [*EDGESHIP, *args] + (["--out", str(out)] + ["--quiet"] * quiet if out else [])
    env = {**os.environ, "COLUMNS": "200", **(env or {})}
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=cwd, env=env, timeout=1200)
    return CliResult(proc.returncode, proc.stdout, proc.stderr, out or Path())




def answers(run: CliResult, target: str, tmp_path: Path) -> np.ndarray:
    """The artifact's logits on the digits test split, from the runner in the artifact's own runtime."""
    artifact = next(a for a in run.report()["artifacts"] if a["target"] == target)
    inputs, outputs = tmp_path / "test.npz", tmp_path / f"{target}-{run.out.parent.name}.npz"
    np.savez(inputs, **stack(splits().test).npz_dict())
    files = tuple(run.out / f for f in artifact["files"])
    engine = ("--engine", artifact["engine"]) if artifact["format"] == "torchscript" else ()
    Local(LocalTransport(kind="local")).run(RunnerCall("predict", run.out / artifact["path"], files, inputs,
                                           ("--batch-size", "1", *engine), outputs=outputs))
    return np.load(outputs)["output_0"]


def assert_answers_like(run: CliResult, single: CliResult, target: str, tmp_path: Path) -> None:
    """`run`'s artifact for `target` answers like `single`'s (the same recipe on one process):
    verified ok, accuracy within half a point, top-1 agreement at least 0.98 on the test split, and
    logits close (the shards see the data in another order, so the weights differ a little)."""
    mine = {a["target"]: a for a in run.report()["artifacts"]}[target]
    theirs_report = {a["target"]: a for a in single.report()["artifacts"]}[target]
    assert mine["status"] == "ok" and mine["parity"]["top1_agreement"] == 1.0
    assert abs(mine["accuracy"] - theirs_report["accuracy"]) <= 0.005
    ours, theirs = answers(run, target, tmp_path), answers(single, target, tmp_path)
    assert (ours.argmax(1) == theirs.argmax(1)).mean() >= 0.98
    assert np.linalg.norm(ours - theirs) / np.linalg.norm(theirs) < 0.15
