"""The bad inputs of issue 12, each run once through the real CLI (and the device runner), as
subprocesses: prints a markdown table of case, command, exit code, first stderr line and whether
a traceback (or a crash) showed.

    .venv/bin/python scripts/hostile_cases.py            # a few minutes: about a dozen tiny runs
    .venv/bin/python scripts/hostile_cases.py --keep     # keep the work folder to look inside
    .venv/bin/python scripts/hostile_cases.py -k marker,runner  # only cases whose name has one

The table is evidence, not a test: it runs every case whether or not it is fixed, and says what
issue 12 expects of each (`want`). Cases that need a pipeline run use a tiny recipe: the demo
recipe with one target (onnx-int8, no fp32 twin), QAT off, the local device, a short benchmark.
The `note` column holds what the exit code cannot show: a gate that passed on figures that mean
nothing, a file outside the run folder that was deleted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tomli_w

ROOT = Path(__file__).resolve().parent.parent
EDGESHIP = str(ROOT / ".venv" / "bin" / "edgeship")
PYTHON = str(ROOT / ".venv" / "bin" / "python")
RUNNER = ROOT / "src" / "edgeship" / "benchmarks" / "runner.py"
DEMO_RECIPE = ROOT / "src" / "edgeship" / "examples" / "recipes" / "digits_cnn.toml"
STORED_REPORT = ROOT / "tests" / "data" / "report-digits.json"
QUICK_BENCHMARK = {"warmup_iterations": 2, "min_iterations": 20, "min_seconds": 0.1,
                   "timeout_seconds": 120}
RUNNER_BENCH = ["--threads", "1", "--warmup", "2", "--min-iterations", "20", "--min-seconds", "0.1",
                "--max-seconds", "60"]

# Factories a recipe names by path (relative to the recipe): data and models a careless user
# hands edgeship.
FACTORIES = '''
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from edgeship.data import Splits
from edgeship.examples import digits


def _digits(seed=0):
    s = digits.splits(seed)
    return {k: getattr(s, k).tensors for k in ("train", "calibration", "test")}


def labels_plus_50(seed=0):
    """Labels 50..59 for a 10-logit model: no sample can be answered right."""
    return Splits(**{k: TensorDataset(x, y + 50) for k, (x, y) in _digits(seed).items()})


def nan_in_test(seed=0):
    parts = _digits(seed)
    x, y = parts["test"]
    x = x.clone()
    x[3, 0, 2, 2] = float("nan")
    parts["test"] = (x, y)
    return Splits(**{k: TensorDataset(*v) for k, v in parts.items()})


class _TwoInputs(Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return (self.x[i], self.x[i].flatten()[:4].clone()), self.y[i]


def two_inputs(seed=0):
    return Splits(**{k: _TwoInputs(x, y) for k, (x, y) in _digits(seed).items()})


class TwoInputNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten())
        self.head = nn.Linear(8 + 4, 10)

    def forward(self, img, vec):
        return self.head(torch.cat([self.conv(img), vec], dim=1))


def two_input_model():
    return TwoInputNet()


class _Ragged(Dataset):
    """Sample 7 is 9x9 where every other is 8x8."""
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return (torch.zeros(1, 9, 9) if i == 7 else self.x[i]), self.y[i]


def ragged_test(seed=0):
    parts = _digits(seed)
    return Splits(train=TensorDataset(*parts["train"]), calibration=TensorDataset(*parts["calibration"]),
                  test=_Ragged(*parts["test"]))


MARK = 123.0  # the value the crashing model's "kernel" cannot take


def mark_last_test_sample(seed=0):
    parts = _digits(seed)
    x, y = parts["test"]
    x = x.clone()
    x[-1, 0, 0, 0] = MARK
    parts["test"] = (x, y)
    return Splits(**{k: TensorDataset(*v) for k, v in parts.items()})


class CrashingNet(nn.Module):
    """Works on every sample but the marked one, as a custom kernel with a bug might: the load
    stage's checks (the first test samples) pass, the float evaluation meets it."""
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        if bool((x == MARK).any()):
            raise RuntimeError("lookup table overflow in the custom kernel")
        return self.fc(x.flatten(1))


def crashing_model():
    return CrashingNet()
'''


def tiny_recipe(**changes) -> dict:
    recipe = tomllib.loads(DEMO_RECIPE.read_text())
    recipe.update(name="hostile-tiny", targets=["onnx-int8"], fp32_twins=False, devices=["local"],
                  benchmark=dict(QUICK_BENCHMARK))
    recipe["quantization"]["qat"] = {"enabled": False}
    recipe.update(changes)
    return recipe


@dataclass
class Case:
    name: str
    want: str  # what issue 12 asks for
    command: Callable[[Path], list[str]]  # given the work folder: argv (files made on the way)
    note: Callable[[Path, subprocess.CompletedProcess], str] = field(default=lambda w, p: "")


@dataclass
class Result:
    case: Case
    argv: list[str]
    code: int
    stderr: str
    stdout: str
    note: str


# --- files the cases need --------------------------------------------------------------------

def write_recipe(work: Path, name: str, recipe: dict) -> str:
    path = work / name
    path.write_text(tomli_w.dumps(recipe))
    return str(path)


def write_bytes(work: Path, name: str, content: bytes) -> str:
    path = work / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return str(path)


def stored_report(change: Callable[[dict], None]) -> bytes:
    data = json.loads(STORED_REPORT.read_text())
    change(data)
    return json.dumps(data).encode()


def tiny_toml(work: Path) -> str:
    path = work / "tiny.toml"
    return str(path) if path.exists() else write_recipe(work, "tiny.toml", tiny_recipe())


def base_run(work: Path) -> Path:
    """The tiny recipe's run folder, made once (the cases that need a real report, a real ONNX
    file or a stage cache start from a copy of it)."""
    folder = work / "base-run"
    if not (folder / "report.json").exists():
        proc = subprocess.run([EDGESHIP, "run", tiny_toml(work), "--out", str(folder), "--quiet"],
                              capture_output=True, text=True, timeout=900)
        if not (folder / "report.json").exists():
            sys.exit(f"the tiny base run failed (exit {proc.returncode}):\n{proc.stderr}")
    return folder


def copy_of_base_run(work: Path, name: str) -> Path:
    target = work / name
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(base_run(work), target, symlinks=True)
    return target


def with_marker(work: Path, name: str, marker: bytes) -> str:
    """A run folder holding only a marker (.edgeship-run.json) with this content."""
    folder = work / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    (folder / ".edgeship-run.json").write_bytes(marker)
    return str(folder)


def corrupt_cache(folder: Path) -> None:
    """Every file of the stage cache overwritten with bytes no loader reads."""
    for path in sorted((folder / ".edgeship-cache").rglob("*")):
        if path.is_file():
            path.write_bytes(b"\x80\x04corrupt" + os.urandom(64))


def runner_inputs(work: Path) -> str:
    path = work / "inputs.npz"
    np.savez(path, input_0=np.zeros((1, 1, 8, 8), dtype=np.float32))
    return str(path)


def truncated_onnx(work: Path) -> str:
    onnx = base_run(work) / "artifacts" / "onnx-int8.onnx"
    return write_bytes(work, "truncated.onnx", onnx.read_bytes()[: onnx.stat().st_size // 3])


# --- notes: what the exit code does not show ---------------------------------------------------

def gate_line(work: Path, proc: subprocess.CompletedProcess) -> str:
    line = next((x for x in proc.stdout.splitlines() if x.startswith("gate ")), "")
    return f"stdout: {line}" if line else ""


def victim_note(work: Path, proc: subprocess.CompletedProcess) -> str:
    return "victim.txt outside the run folder: " + \
        ("still there" if (work / "victim.txt").exists() else "DELETED")


# --- the cases -------------------------------------------------------------------------------

def run_cmd(recipe: str, out: Path, *more: str) -> list[str]:
    return [EDGESHIP, "run", recipe, "--out", str(out), "--quiet", *more]


def _devices_empty(w: Path) -> list[str]:
    recipe = tiny_recipe(devices=[])
    recipe["budgets"] = [{"max_latency_p90_ms": 20}]
    return run_cmd(write_recipe(w, "no-devices.toml", recipe), w / "run-no-devices")


def _with_data(factory: str, name: str, *, trained: bool = True) -> Callable[[Path], list[str]]:
    """The tiny recipe with the data factory `factories.py:<factory>`, run into run-<name>."""
    def command(w: Path) -> list[str]:
        recipe = tiny_recipe()
        if not trained:  # not trained in the recipe: nothing in the run learns the labels' range
            recipe["model"].pop("train")
        recipe["data"]["factory"] = f"factories.py:{factory}"
        return run_cmd(write_recipe(w, f"{name}.toml", recipe), w / f"run-{name}")
    return command


def _two_inputs(w: Path) -> list[str]:
    recipe = tiny_recipe(targets=["onnx-int8", "torchscript-fbgemm", "executorch-xnnpack"])
    recipe["model"] = {"factory": "factories.py:two_input_model", "train": {"epochs": 2},
                       "example_inputs": [{"shape": [1, 1, 8, 8]}, {"shape": [1, 4]}]}
    recipe["data"]["factory"] = "factories.py:two_inputs"
    return run_cmd(write_recipe(w, "two-inputs.toml", recipe), w / "run-two-inputs")


def _batch4(w: Path) -> list[str]:
    recipe = tiny_recipe(targets=["onnx-int8", "executorch-xnnpack"])
    recipe["model"]["example_inputs"] = [{"shape": [4, 1, 8, 8]}]
    return run_cmd(write_recipe(w, "batch4.toml", recipe), w / "run-batch4")


def _corrupt_cache(w: Path) -> list[str]:
    folder = copy_of_base_run(w, "run-corrupt-cache")
    corrupt_cache(folder)
    return run_cmd(tiny_toml(w), folder)


def _victim(w: Path) -> list[str]:
    (w / "victim.txt").write_text("a file of the user's, outside any run folder\n")
    marker = json.dumps({"recipe_sha256": "0" * 64, "files": ["../../victim.txt"]}).encode()
    folder = with_marker(w, "runs/force-victim", marker)
    return run_cmd(tiny_toml(w), Path(folder), "--force")


def _marker(name: str, content: bytes) -> Callable[[Path], list[str]]:
    def command(w: Path) -> list[str]:
        return run_cmd(tiny_toml(w), Path(with_marker(w, name, content)), "--force")
    return command


def _marker_lists_folder(w: Path) -> list[str]:
    marker = json.dumps({"recipe_sha256": "0" * 64, "files": ["artifacts"]}).encode()
    folder = Path(with_marker(w, "run-marker-folder", marker))
    (folder / "artifacts").mkdir()
    (folder / "artifacts" / "mine.txt").write_text("the user's\n")
    return run_cmd(tiny_toml(w), folder, "--force")


def _crash(w: Path) -> list[str]:
    recipe = tiny_recipe()
    recipe["model"] = {"factory": "factories.py:crashing_model", "example_inputs": [{"shape": [1, 1, 8, 8]}]}
    recipe["data"]["factory"] = "factories.py:mark_last_test_sample"
    return run_cmd(write_recipe(w, "crash.toml", recipe), w / "run-crash")


def crash_note(w: Path, proc: subprocess.CompletedProcess) -> str:
    log = w / "run-crash" / "edgeship-crash.log"
    return f"crash log in the run folder: {'holds the traceback' if log.is_file() and 'Traceback' in log.read_text() else 'MISSING'}"


USER_FILES = {"report.md": "my notes\n", "artifacts/onnx-int8.onnx": "my own model\n"}


def _user_files(w: Path) -> list[str]:
    folder = w / "run-user-files"
    shutil.rmtree(folder, ignore_errors=True)
    for name, text in USER_FILES.items():
        write_bytes(folder, name, text.encode())
    return run_cmd(tiny_toml(w), folder, "--force")


def user_files_note(w: Path, proc: subprocess.CompletedProcess) -> str:
    kept = all((w / "run-user-files" / n).read_text() == t for n, t in USER_FILES.items())
    return "the user's report.md and artifacts/onnx-int8.onnx: " + ("unchanged" if kept else "OVERWRITTEN")


_first_run: list[subprocess.Popen] = []


def _second_run(w: Path) -> list[str]:
    """A first run into the folder, under way; the case is the second one into it."""
    folder = w / "run-twice"
    shutil.rmtree(folder, ignore_errors=True)
    first = subprocess.Popen(run_cmd(tiny_toml(w), folder), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, cwd=w)
    _first_run.append(first)
    lock = folder / ".edgeship-lock"
    while first.poll() is None and not (lock.is_file() and lock.read_text().strip()):
        time.sleep(0.1)
    return run_cmd(tiny_toml(w), folder)


def second_run_note(w: Path, proc: subprocess.CompletedProcess) -> str:
    first = _first_run.pop()
    first.wait(timeout=900)
    return f"the first run went on and exited {first.returncode}"


def _unknown_target(data: dict) -> None:
    data["artifacts"][1]["target"] = "onnx-int4"
    data["budgets"] = [{"max_size_mb": 1}]


CASES = [
    Case("recipe not UTF-8", "2", lambda w: run_cmd(
        write_bytes(w, "latin1.toml", 'name = "café"\n'.encode("latin-1")), w / "run-latin1")),
    Case("device profile not text", "2", lambda w: [
        EDGESHIP, "devices", "show", write_bytes(w, "png.toml", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")]),
    Case("benchmark.min_seconds = inf", "2", lambda w: run_cmd(write_recipe(
        w, "inf.toml", tiny_recipe(benchmark={**QUICK_BENCHMARK, "min_seconds": float("inf")})),
        w / "run-inf")),
    Case("recipe name with [/]", "0 or 1, no markup error", lambda w: run_cmd(
        write_recipe(w, "markup.toml", tiny_recipe(name="[/] <script>alert(1)</script> | x")),
        w / "run-markup"), gate_line),
    Case("--out with [/]", "0 or 1, no markup error", lambda w: run_cmd(
        write_recipe(w, "tiny-out.toml", tiny_recipe()), w / "out[" / "]x"), gate_line),
    Case("compare: report with 10**400", "2", lambda w: [
        EDGESHIP, "compare", str(STORED_REPORT), write_bytes(w, "huge.json", stored_report(
            lambda d: d["artifacts"][2].update(size_bytes=10**400)))]),
    Case("gate: unknown target in report", "2", lambda w: [
        EDGESHIP, "gate", write_bytes(w, "unknown-target.json", stored_report(_unknown_target))]),
    Case("budget names an unbuilt target", "2", lambda w: run_cmd(write_recipe(
        w, "unbuilt.toml", tiny_recipe(budgets=[{"targets": ["executorch-xnnpack"], "max_size_mb": 1}])),
        w / "run-unbuilt")),
    Case("budget names a device not in the run", "2", lambda w: run_cmd(write_recipe(
        w, "other-device.toml", tiny_recipe(budgets=[{"devices": ["rpi5"], "max_latency_p90_ms": 5}])),
        w / "run-other-device")),
    Case("devices = [] with a latency budget", "1 (a violation), or 2", _devices_empty, gate_line),
    Case("marker not JSON, --force", "2", _marker("run-marker-garbage", b"{not json")),
    Case("marker is a list, --force", "2", _marker("run-marker-list", b'["report.json"]')),
    Case("marker lists a folder, --force", "2", _marker_lists_folder),
    Case("--force, marker lists ../../victim.txt", "0 or 2, victim kept", _victim, victim_note),
    Case("--benchmark-json is a folder", "2", lambda w: [
        EDGESHIP, "bench", str(base_run(w) / "report.json"), "--benchmark-json", str(w)]),
    Case("labels outside the model outputs", "2", _with_data("labels_plus_50", "labels", trained=False),
         gate_line),
    Case("NaN in the test split", "2", _with_data("nan_in_test", "nan"), gate_line),
    # model.train on: training met the label 50 (IndexError before)
    Case("trained model, labels outside its outputs", "2", _with_data("labels_plus_50", "labels-trained"),
         gate_line),
    Case("samples of different shapes", "2", _with_data("ragged_test", "ragged")),
    Case("a crash inside a stage", "3, one line", _crash, crash_note),
    Case("--force over the user's report.md and artifacts/onnx-int8.onnx", "2, files unchanged",
         _user_files, user_files_note),
    Case("a second run into a folder in use", "2, naming the first", _second_run, second_run_note),
    Case("two-input model, 3 targets", "0 or 1", _two_inputs, gate_line),
    Case("example_inputs batch 4, PT2E targets", "0 or 1", _batch4, gate_line),
    Case("corrupt stage-cache entries, same command", "0 or 1", _corrupt_cache, gate_line),
    Case("runner: truncated ONNX", "runner: 2, one line", lambda w: [
        PYTHON, str(RUNNER), "bench", truncated_onnx(w), "--inputs", runner_inputs(w), *RUNNER_BENCH]),
    Case("runner: random-bytes .pte", "runner: 2, one line", lambda w: [
        PYTHON, str(RUNNER), "bench", write_bytes(w, "random.pte", os.urandom(4096)), "--inputs",
        runner_inputs(w), *RUNNER_BENCH]),
]


# --- running and the table ---------------------------------------------------------------------

def traceback_shown(proc: subprocess.CompletedProcess) -> str:
    if proc.returncode < 0:
        return f"killed by signal {-proc.returncode}"
    if "Traceback (most recent call last)" in proc.stderr:
        return "yes"
    if "edgeship crashed" in proc.stderr:  # a crash: one line on stderr, the traceback in its log
        return "no (crash line; traceback in the log)"
    if "terminate called" in proc.stderr:
        return "yes (C++)"
    return "no"


def run_case(case: Case, work: Path) -> Result:
    argv = case.command(work)
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("GITHUB_STEP_SUMMARY", None)
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, cwd=work, env=env, timeout=900)
    except subprocess.TimeoutExpired as e:
        proc = subprocess.CompletedProcess(argv, 124, e.stdout or "", (e.stderr or "") + "timed out")
    return Result(case, argv, proc.returncode, proc.stderr, proc.stdout, case.note(work, proc))


def shown_command(argv: list[str], work: Path) -> str:
    text = " ".join(argv).replace(str(work), "$W").replace(str(ROOT) + "/", "")
    return text.replace(".venv/bin/", "")


def cell(text: str, width: int = 160) -> str:
    text = text.replace("|", "\\|").replace("\n", " ")
    return textwrap.shorten(text, width, placeholder=" …") if len(text) > width else text


def table(results: list[Result], work: Path) -> str:
    rows = ["| case | command | exit | want | first stderr line | traceback | note |",
            "|---|---|---|---|---|---|---|"]
    for r in results:
        first = next((x for x in r.stderr.splitlines() if x.strip()), "")
        proc = subprocess.CompletedProcess(r.argv, r.code, r.stdout, r.stderr)
        rows.append(f"| {cell(r.case.name)} | `{cell(shown_command(r.argv, work), 200)}` | {r.code} | "
                    f"{r.case.want} | {cell(first.replace(str(work), '$W'))} | {traceback_shown(proc)} | "
                    f"{cell(r.note)} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("-k", dest="only", default="", help="only cases whose name contains one of "
                        "these comma-separated words")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edgeship-hostile-"))
    (work / "factories.py").write_text(FACTORIES)
    results = []
    try:
        words = args.only.split(",")
        for case in (c for c in CASES if any(w in c.name for w in words)):
            print(f"… {case.name}", file=sys.stderr, flush=True)
            results.append(run_case(case, work))
        print(table(results, work))
        shown = [traceback_shown(subprocess.CompletedProcess(r.argv, r.code, r.stdout, r.stderr))
                 for r in results]
        crashes = sum(s.startswith("no (crash") for s in shown)
        tracebacks = sum(not s.startswith("no") for s in shown)
        print(f"\n{len(results)} cases; {tracebacks} with a traceback on stderr (or killed by a signal), "
              f"{crashes} crashed as reported (exit 3); work folder $W = {work}"
              + ("" if args.keep else " (removed)"))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
