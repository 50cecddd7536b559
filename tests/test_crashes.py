"""No traceback for bad input, and a crash is one line, a log file and exit 3 (issue 12):
a crash inside a stage, user text that looks like rich markup or HTML, a run with no device to
measure a latency budget on, unreadable stage-cache entries, a folder given as a file, and the
device runner handed a corrupt artifact or impossible settings."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from edgeship.devices.transports import RUNNER
from edgeship.pipeline.cache import StageCache
from support import EDGESHIP, bench_args, demo_recipe, run_cli, write_recipe

STORED = Path(__file__).parent / "data" / "report-digits.json"

# The model works on everything the load stage probes it with (the first test samples); its
# custom kernel raises on the last test sample, which only the float evaluation reaches: an
# exception edgeship did not expect, escaping a stage that is not per target.
CRASHING = '''
import torch
from torch import nn
from torch.utils.data import TensorDataset
from edgeship.data import Splits

class LookupNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)
    def forward(self, x):
        if bool((x > 16).any()):
            raise RuntimeError("lookup table overflow in the custom kernel")
        return self.fc(torch.flatten(x, 1))

def model():
    return LookupNet()

def data():
    g = torch.Generator().manual_seed(0)
    def split(n):
        return TensorDataset(torch.rand(n, 1, 8, 8, generator=g) * 16, torch.randint(0, 10, (n,), generator=g))
    test = split(100)
    test.tensors[0][-1] += 100
    return Splits(train=split(64), calibration=split(64), test=test)
'''


def _crashing_recipe(tmp_path: Path) -> Path:
    (tmp_path / "crashing.py").write_text(CRASHING)
    recipe = demo_recipe(targets=["onnx-fp32"], fp32_twins=False, budgets=[], devices=[])
    recipe["model"] = {"factory": "crashing.py:model", "example_inputs": [{"shape": [1, 1, 8, 8]}]}
    recipe["data"] = {"factory": "crashing.py:data", "batch_size": 64, "metric": "top1"}
    recipe["quantization"]["qat"]["enabled"] = False
    return write_recipe(tmp_path, recipe)


def test_a_crash_in_a_stage_is_one_line_a_log_in_the_run_folder_and_exit_3(tmp_path):
    out = tmp_path / "run"
    result = run_cli("run", str(_crashing_recipe(tmp_path)), out=out)
    assert result.code == 3, result.stderr[-3000:]
    log = out / "edgeship-crash.log"
    assert result.stderr.splitlines() == [
        "error: edgeship crashed in stage evaluate-float (RuntimeError: lookup table overflow in the "
        f"custom kernel); the traceback is in {log}. Exit code 3"]
    text = log.read_text()
    assert "Traceback (most recent call last)" in text
    assert 'raise RuntimeError("lookup table overflow in the custom kernel")' in text
    assert "stage: evaluate-float" in text and f"run folder: {out}" in text
    assert not list(out.glob(".edgeship-crash.log.*"))  # written atomically: no temp file left


def test_ctrl_c_is_exit_130_never_1_the_budget_code(tmp_path):
    """click turns KeyboardInterrupt into "Aborted!" and exit code 1, which reads as a budget
    verdict; edgeship's own SIGINT handler says what happened and exits 130 (128 + SIGINT)."""
    recipe = write_recipe(tmp_path, demo_recipe(targets=["onnx-int8"], fp32_twins=False))
    proc = subprocess.Popen([*EDGESHIP, "run", str(recipe), "--out", str(tmp_path / "run")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if line.startswith("▸ load"):
            proc.send_signal(signal.SIGINT)
            break
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == 130, rest
    assert rest.strip().splitlines()[-1].startswith("error: interrupted (Ctrl-C)"), rest
    assert "Traceback" not in rest and "Aborted" not in rest


def test_a_closed_output_pipe_is_exit_141_never_1(tmp_path):
    """`edgeship run … 2>&1 | head -1`: the next line written finds no reader. Python's own exit
    after a BrokenPipeError is 1, which reads as a budget verdict."""
    recipe = write_recipe(tmp_path, demo_recipe(targets=["onnx-int8"], fp32_twins=False))
    proc = subprocess.Popen([*EDGESHIP, "run", str(recipe), "--out", str(tmp_path / "run")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    proc.stderr.readline()
    proc.stderr.close()
    assert proc.wait(timeout=120) == 141


def _crash_in_cli(monkeypatch, capsys, tmp_path, debug: str | None) -> tuple[int, str]:
    """A crash outside any run (as in `edgeship gate`): its log goes to the temporary directory."""
    import tempfile

    from edgeship.cli import crash as cli

    def crash():
        raise RuntimeError("an internal bug\nwith a second line")

    monkeypatch.setattr(cli, "app", crash)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    if debug is None:
        monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    else:
        monkeypatch.setenv(cli.DEBUG_ENV, debug)
    with pytest.raises(SystemExit) as exited:
        cli.main()
    return exited.value.code, capsys.readouterr().err


def test_a_crash_outside_a_run_logs_to_the_temporary_directory(monkeypatch, capsys, tmp_path):
    code, err = _crash_in_cli(monkeypatch, capsys, tmp_path, None)
    assert code == 3
    (log,) = tmp_path.glob("edgeship-crash-*.log")
    assert err.splitlines() == [f"error: edgeship crashed (RuntimeError: an internal bug); the traceback "
                                f"is in {log}. Exit code 3"]
    assert "Traceback" in log.read_text() and "with a second line" in log.read_text()


def test_edgeship_debug_prints_the_traceback_too(monkeypatch, capsys, tmp_path):
    code, err = _crash_in_cli(monkeypatch, capsys, tmp_path, "1")
    assert code == 3
    assert err.startswith("Traceback (most recent call last)")
    assert err.splitlines()[-1].startswith("error: edgeship crashed (RuntimeError")


# --- user text that is markup or HTML, and a latency budget with no device ---------------------

# Printable (the recipe writes control characters in a name as their codes; a crafted report may
# hold them raw: see the junit test below).
HOSTILE = "<script>alert(1)</script> [/] [bold]x | <img src=x onerror=alert(2)> `tick`"


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory):
    """A quick run whose recipe name is hostile, into a folder whose name is rich markup, with a
    latency budget and no device to measure it on."""
    folder = tmp_path_factory.mktemp("hostile")
    recipe = demo_recipe(targets=["onnx-fp32"], fp32_twins=False, devices=[], name=HOSTILE,
                         budgets=[{"max_latency_p90_ms": 100, "targets": ["onnx-fp32"]}])
    recipe["model"].pop("train")
    recipe["data"]["kwargs"] = {"limit": 64}
    recipe["quantization"]["qat"]["enabled"] = False
    return run_cli("run", str(write_recipe(folder, recipe)), out=folder / "out[/]x[bold]")


def test_no_device_for_a_latency_budget_is_a_violation_naming_it(hostile_run):
    assert hostile_run.code == 1, hostile_run.stderr[-3000:]
    (violation,) = hostile_run.report()["gate"]["violations"]
    assert violation["limit_name"] == "max_latency_p90_ms" and violation["measured"] is None
    assert violation["message"] == ("onnx-fp32: latency p90 not measured: the run has no device to "
                                    "measure it on (recipe `devices` is empty); "
                                    "budgets[0].max_latency_p90_ms 100")
    assert "gate FAILED · exit code 1" in hostile_run.stdout


def test_markup_in_names_and_paths_prints_as_written(hostile_run):
    assert "Traceback" not in hostile_run.stderr and hostile_run.stderr == ""
    assert f"reports: {hostile_run.out / 'report.json'}" in hostile_run.stdout
    assert "[/] [bold]x" in hostile_run.stdout


def test_report_md_escapes_user_text_and_keeps_its_tables(hostile_run):
    md = (hostile_run.out / "report.md").read_text()
    assert "<script" not in md and "<img" not in md
    assert md.splitlines()[0] == ("# edgeship: &lt;script>alert(1)&lt;/script> [/] [bold]x \\| "
                                  "&lt;img src=x onerror=alert(2)> \\`tick\\`")
    for table in _tables(md):
        assert len({_cells(row) for row in table}) == 1, table


def _tables(md: str) -> list[list[str]]:
    tables, current = [], []
    for line in md.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    return tables


def _cells(row: str) -> int:
    """Cells of a GFM table row: pipes not escaped by a backslash (an escaped backslash does not
    escape the pipe after it)."""
    count, i = 0, 0
    while i < len(row):
        if row[i] == "\\":
            i += 2
            continue
        count += row[i] == "|"
        i += 1
    return count - 1


def test_junit_xml_of_the_run_validates_and_html_escapes(hostile_run):
    import xmlschema

    root = ET.parse(hostile_run.out / "junit.xml").getroot()
    assert root.get("name") == f"edgeship.{HOSTILE}"
    xmlschema.XMLSchema(str(Path(__file__).parent / "data" / "junit-10.xsd")).validate(
        str(hostile_run.out / "junit.xml"))
    page = (hostile_run.out / "report.html").read_text()
    assert "<script>" not in page and "<img src=x" not in page
    assert "edgeship: &lt;script&gt;alert(1)&lt;/script&gt; [/] [bold]x | &lt;img src=x" in page


def test_a_name_with_control_characters_runs_and_shows_their_codes(tmp_path):
    """Issue 14's name: markup, HTML, a pipe and a BEL. The run goes to the end (exit 1: its
    latency budget has no device to measure on) and all four outputs show the name escaped: the
    BEL as `\\x07`, never the character."""
    name = "<script>alert(1)</script> | [/] \u0007"
    recipe = demo_recipe(targets=["onnx-fp32"], fp32_twins=False, devices=[], name=name,
                         budgets=[{"max_latency_p90_ms": 100, "targets": ["onnx-fp32"]}])
    recipe["model"].pop("train")
    recipe["data"]["kwargs"] = {"limit": 64}
    recipe["quantization"]["qat"]["enabled"] = False
    result = run_cli("run", str(write_recipe(tmp_path, recipe)), out=tmp_path / "out")
    assert result.code == 1, result.stderr[-2000:]
    shown = "<script>alert(1)</script> | [/] \\x07"
    assert f"edgeship · {shown}" in result.stdout and "\x07" not in result.stdout + result.stderr
    md = (tmp_path / "out" / "report.md").read_text()
    assert md.splitlines()[0] == "# edgeship: &lt;script>alert(1)&lt;/script> \\| [/] \\\\x07"
    page = (tmp_path / "out" / "report.html").read_text()
    assert "<h1>edgeship: &lt;script&gt;alert(1)&lt;/script&gt; | [/] \\x07</h1>" in page and "\x07" not in page
    root = ET.parse(tmp_path / "out" / "junit.xml").getroot()
    assert root.get("name") == f"edgeship.{shown}"


def test_junit_xml_stays_xml_with_control_characters_in_a_report():
    from edgeship.gate.budgets import checks
    from edgeship.recipe import Budget
    from edgeship.report.junit import junit_xml
    from edgeship.report.schema import Report

    report = Report.model_validate(json.loads(STORED.read_text()))
    report.recipe_name = "bell\x07 escape\x1b[31m nul\x00"
    report.artifact("onnx-int8").status, report.artifact("onnx-int8").error = "failed", "bad\x0bop"
    budgets = [Budget(max_size_mb=1)]
    root = ET.fromstring(junit_xml(report, list(checks(budgets, report))))
    assert root.get("name") == "edgeship.bell\\x07 escape\\x1b[31m nul\\x00"
    failure = root.find(".//testcase[@name='export+verify']/failure")
    assert failure.get("message") == "onnx-int8 failed: bad\\x0bop"


def test_a_failed_artifact_message_is_escaped_in_report_md():
    from edgeship.report.schema import Report
    from edgeship.report.writers import markdown

    report = Report.model_validate(json.loads(STORED.read_text()))
    onnx_int8 = report.artifact("onnx-int8")
    onnx_int8.status, onnx_int8.error = "failed", "export: <img src=x onerror=alert(1)> a|b\nc"
    lines = markdown(report).splitlines()
    assert "- ⚠️ `onnx-int8` failed: export: &lt;img src=x onerror=alert(1)> a\\|b c" in lines
    (table,) = [t for t in _tables("\n".join(lines)) if t[0].startswith("| target |")]
    assert len({_cells(row) for row in table}) == 1


# --- bench into a folder; unreadable stage-cache entries ----------------------------------------

def test_benchmark_json_into_a_folder_is_bad_input(tmp_path):
    result = run_cli("bench", str(STORED), "--benchmark-json", str(tmp_path))
    assert result.code == 2
    assert result.stderr.splitlines() == [
        f"error: --benchmark-json {tmp_path}: is a folder; give the path of a file to write, such "
        f"as {tmp_path / 'benchmarks.json'}"]


def test_an_unreadable_cache_entry_is_a_miss_said_once_and_replaced(tmp_path):
    notes: list[str] = []
    cache = StageCache(tmp_path, read=True, say=notes.append)
    module = torch.nn.Linear(2, 2)
    cache.store_state("float", "k", module)
    cache.store_json("verify", "k", {"accuracy": 1.0})
    state_file = tmp_path / ".edgeship-cache" / "float" / "k.pt"
    state_file.write_bytes(state_file.read_bytes()[:40])  # truncated: an UnpicklingError or zip error
    (tmp_path / ".edgeship-cache" / "verify" / "k.json").write_text("[1, 2")
    assert cache.load_state("float", "k") is None and cache.load_json("verify", "k") is None
    assert len(notes) == 2 and all("cannot be read" in n and "replacing the entry" in n for n in notes)
    cache.store_state("float", "k", module)
    cache.store_json("verify", "k", {"accuracy": 0.5})
    assert torch.equal(cache.load_state("float", "k")["weight"], module.weight)
    assert cache.load_json("verify", "k") == {"accuracy": 0.5} and len(notes) == 2


def test_files_stored_again_replace_a_suspect_entry(tmp_path):
    cache = StageCache(tmp_path, read=True)
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir(), new.mkdir()
    (old / "a.onnx").write_bytes(b"truncated")
    (new / "a.onnx").write_bytes(b"whole model")
    cache.store_files("export-files", "k", [old / "a.onnx"])
    cache.store_files("export-files", "k", [new / "a.onnx"])
    (stored,) = cache.load_files("export-files", "k")
    assert stored.read_bytes() == b"whole model"
    assert sorted(p.name for p in stored.parent.parent.iterdir()) == ["k"]


# --- the device runner on corrupt artifacts and impossible settings -----------------------------

@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("runner-bad")
    weight = helper.make_tensor("w", TensorProto.FLOAT, [4], np.arange(4, dtype=np.float32))
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "add",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [weight])
    path = folder / "add.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    inputs = folder / "inputs.npz"
    np.savez(inputs, input_0=np.ones((1, 4), dtype=np.float32))
    return path, inputs


def _runner(artifact: Path, inputs: Path, *settings: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(RUNNER), "bench", str(artifact), "--inputs", str(inputs),
                           *(settings or bench_args(min_iterations=2, min_seconds=0))],
                          capture_output=True, text=True, timeout=120)


def _runner_line(proc: subprocess.CompletedProcess) -> str:
    """The runner's own line: the last on stderr (a runtime may log lines of its own before it)."""
    assert "Traceback" not in proc.stderr and proc.stdout == "", proc.stderr
    return proc.stderr.splitlines()[-1]


def test_the_runner_measures_the_intact_model(onnx_model):
    proc = _runner(*onnx_model)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1])["iterations"] >= 2


def test_the_runner_refuses_a_truncated_onnx_in_one_line(onnx_model, tmp_path):
    path, inputs = onnx_model
    truncated = tmp_path / "add.onnx"
    truncated.write_bytes(path.read_bytes()[:60])
    proc = _runner(truncated, inputs)
    assert proc.returncode == 2
    assert _runner_line(proc).startswith("runner: error: add.onnx: not a valid ONNX model: ")


def _pte_header(program_size: int, segment_base: int, segment_size: int) -> bytes:
    """The first bytes of a .pte as executorch's serializer writes them (exir/_serialize/_program.py)."""
    return (b"\x38\0\0\0ET12eh00" + (32).to_bytes(4, "little") + program_size.to_bytes(8, "little")
            + segment_base.to_bytes(8, "little") + segment_size.to_bytes(8, "little"))


@pytest.mark.parametrize("content, says", [
    (os.urandom(4096).replace(b"ET", b"xx"), "not an ExecuTorch program: no 'ET' flatbuffer identifier"),
    (_pte_header(900, 1024, 50_000) + bytes(2000), "truncated ExecuTorch program: its data segments "
                                                   "end at byte 51024, the file has 2040 bytes"),
    (_pte_header(90_000, 0, 0) + bytes(1000), "truncated or corrupt ExecuTorch program: header says "
                                              "90000 bytes of program, the file has 1040"),
    (_pte_header(900, 0, 0)[:20], "truncated ExecuTorch program: 20 bytes, its header is cut off"),
], ids=["random", "segments-cut", "program-cut", "header-cut"])
def test_the_runner_checks_a_pte_before_executorch_reads_it(onnx_model, tmp_path, content, says):
    pte = tmp_path / "model.pte"
    pte.write_bytes(content)
    proc = _runner(pte, onnx_model[1])
    assert proc.returncode == 2  # not SIGABRT (-6): executorch never saw the bytes
    assert _runner_line(proc).startswith(f"runner: error: model.pte: {says}")


@pytest.mark.parametrize("flag, value", [("--min-seconds", "inf"), ("--max-seconds", "nan"),
                                         ("--min-seconds", "-1"), ("--min-iterations", "0"),
                                         ("--warmup", "-2")])
def test_the_runner_refuses_impossible_settings_in_one_line(onnx_model, flag, value):
    settings = dict(zip(*[iter(bench_args(min_iterations=2, min_seconds=0))] * 2))
    settings[flag] = value
    proc = _runner(*onnx_model, *[a for pair in settings.items() for a in pair])
    assert proc.returncode == 2
    assert _runner_line(proc).startswith(f"runner: error: bad arguments: argument {flag}: ")
    assert len(proc.stderr.splitlines()) == 1


def test_the_crash_line_names_the_innermost_stage_and_the_target():
    from edgeship.cli import crash_line
    from edgeship.pipeline.stages import StageLog, naming_target
    from edgeship.progress import Progress

    log = StageLog(Progress(enabled=False))
    with pytest.raises(ValueError) as raised:
        with log.stage("verify"), log.stage("predict"), naming_target("onnx-int8"):
            raise ValueError("shapes (1, 10) and (1, 5)\nsecond line")
    assert [s.status for s in log.stages] == ["failed", "failed"]
    assert crash_line(raised.value, Path("/run/edgeship-crash.log")) == (
        "error: edgeship crashed in stage predict, target onnx-int8 (ValueError: shapes (1, 10) and "
        "(1, 5)); the traceback is in /run/edgeship-crash.log. Exit code 3")
