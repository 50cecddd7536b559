"""The command line's conventions (issue 14): --version, help without false metavars, -v/-q,
--json on gate, compare and devices, `--set` overrides validated like the file with "did you
mean", `edgeship schema` (checked against real files with jsonschema), and the Python API's
gate and compare on a stored report. The real run through the API is in test_api_quiet."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import jsonschema
import pytest

import edgeship
from edgeship.cli import demo_recipe_text
from edgeship.errors import UserError
from edgeship.recipe import load_recipe, parse_recipe_text
from support import demo_recipe, run_cli, write_recipe

STORED = Path(__file__).parent / "data" / "report-digits.json"
DEMO_TOML = Path(edgeship.__file__).parent / "examples" / "recipes" / "digits_cnn.toml"


def test_version_and_help():
    result = run_cli("--version")
    assert (result.code, result.stdout) == (0, f"edgeship {edgeship.__version__}\n")
    for args in (["--help"], ["gate", "--help"], ["run", "--help"], ["bench", "--help"]):
        text = run_cli(*args).stdout
        assert "<bool>" not in text and "<int>" not in text, (args, text)
    assert "KEY.PATH=VALUE" in run_cli("run", "--help").stdout


def test_gate_json_and_verbose_list_every_check(tmp_path):
    result = run_cli("gate", str(STORED), "--recipe", str(DEMO_TOML), "--json")
    assert result.code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["passed"] is True and data["exit_code"] == 0 and data["violations"] == []
    assert len(data["checks"]) == 16 and {c["outcome"] for c in data["checks"]} == {"passed"}
    assert data["summary"] == f"16 checks of 1 budget from recipe {DEMO_TOML}"  # singular where one
    verbose = run_cli("-v", "gate", str(STORED), "--recipe", str(DEMO_TOML))
    listed = [line for line in verbose.stdout.splitlines() if line.startswith("passed ")]
    assert len(listed) == 16 and any("max_size_mb: 0.108 (limit ≤ 0.2)" in line for line in listed)
    plain = run_cli("gate", str(STORED), "--recipe", str(DEMO_TOML))
    assert not any(line.startswith("passed ") for line in plain.stdout.splitlines())


def test_compare_and_devices_json():
    result = run_cli("compare", str(STORED), str(STORED), "--json")
    # the stored report keeps no raw samples: nothing to test a latency change on
    assert result.code == 0 and {d["verdict"] for t in json.loads(result.stdout)["targets"]
                                  for d in t["devices"]} == {None}
    devices = json.loads(run_cli("devices", "list", "--json").stdout)
    assert {"local", "rpi5", "android-arm64"} <= {d["name"] for d in devices}
    local = json.loads(run_cli("devices", "show", "local", "--json").stdout)
    assert local["transport"]["kind"] == "local"
    text = run_cli("devices", "show", "local").stdout
    assert 'transport.kind = "local"' in text.splitlines()
    check = json.loads(run_cli("devices", "check", "local", "--json").stdout)
    assert check["device"] == "local" and check["targets"]["onnx-int8"] == []
    assert check["int8_isa"] == sorted(set(check["int8_isa"]), key=check["int8_isa"].index)


@pytest.mark.parametrize("args, expected", [
    (["--set", "nonsense"], "--set 'nonsense': expected KEY.PATH=VALUE"),
    (["--set", "budgets[0].max_latncy_p50_ms=1"],
     "budgets[0].max_latncy_p50_ms: unknown key (did you mean 'max_latency_p50_ms'?)"),
    (["--set", "budgets[5].max_size_mb=1"], "--set budgets[5].max_size_mb: budgets has no item [5]"),
    (["--set", "quantization.qat.epochs=-1"], "quantization.qat.epochs: Input should be greater than"),
])
def test_set_is_validated_like_the_file(tmp_path, args, expected):
    recipe = write_recipe(tmp_path, demo_recipe())
    result = run_cli("run", str(recipe), *args, out=tmp_path / "out")
    assert result.code == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert expected in line, line
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_overrides_reach_the_recipe(tmp_path):
    path = write_recipe(tmp_path, demo_recipe())
    recipe = load_recipe(path, {"quantization.qat.epochs": 3, "name": "nightly build",
                                "budgets[0].max_size_mb": 0.5, "benchmark.threads": 2})
    assert recipe.quantization.qat.epochs == 3 and recipe.name == "nightly build"
    assert recipe.budgets[0].max_size_mb == 0.5 and recipe.benchmark.threads == 2
    from_dict = edgeship._recipe(demo_recipe(), {"targets": ["onnx-int8"]})
    assert from_dict.targets == ["onnx-int8"]
    again = edgeship._recipe(from_dict, {"name": "renamed"})
    assert again.name == "renamed" and again.targets == ["onnx-int8"]
    with pytest.raises(UserError, match="did you mean 'targets'"):
        edgeship._recipe(demo_recipe(), {"target": ["onnx-int8"]})


def test_schemas_accept_real_files_and_reject_a_misspelt_key():
    recipe_schema = json.loads(run_cli("schema", "recipe").stdout)
    demo = tomllib.loads(demo_recipe_text())
    jsonschema.validate(demo, recipe_schema)
    demo["quantization"]["qat"]["epoch"] = 2
    with pytest.raises(jsonschema.ValidationError, match="'epoch' was unexpected"):
        jsonschema.validate(demo, recipe_schema)
    profile_schema = json.loads(run_cli("schema", "profile").stdout)
    for name in ("local", "rpi5", "android-arm64"):
        shipped = Path(edgeship.__file__).parent / "devices" / "profiles" / f"{name}.toml"
        jsonschema.validate(tomllib.loads(shipped.read_text()), profile_schema)
    report_schema = json.loads(run_cli("schema", "report").stdout)
    jsonschema.validate(json.loads(STORED.read_text()), report_schema)
    assert run_cli("schema", "nonsense").code == 2


def test_python_api_gate_and_compare_are_typed():
    regated = edgeship.gate(STORED, recipe=DEMO_TOML)
    assert regated.report.exit_code == 0 and len(regated.decision.checks) == 16
    comparison = edgeship.compare(STORED, STORED)
    assert [t.target for t in comparison.targets] == [a["target"] for a in json.loads(STORED.read_text())["artifacts"]]
    assert {d.p50_ms.ratio for t in comparison.targets for d in t.devices} == {1.0}
    parse_recipe_text(demo_recipe_text(), "demo", Path.cwd())  # the demo recipe itself is valid
    assert re.fullmatch(r"\d+\.\d+\.\d+", edgeship.__version__)


API_RUN = """
import sys, warnings
import torch
import edgeship
from support import demo_recipe
recipe = demo_recipe(targets=["torchscript-fbgemm", "executorch-xnnpack"], fp32_twins=False)
recipe["model"].pop("train")
recipe["data"]["kwargs"] = {"limit": 64}
recipe["quantization"]["qat"]["enabled"] = False
before = list(warnings.filters)
report = edgeship.run(recipe, sys.argv[1], quiet=True, overrides={"name": "api run"})
assert list(warnings.filters) == before, "edgeship changed the caller's warning filters"
print(report.recipe_name, report.exit_code, [a.status for a in report.artifacts])
"""


def test_the_python_api_writes_nothing_to_stderr_and_leaves_filters_alone(tmp_path):
    """Both quantization flows (FX for TorchScript, PT2E for ExecuTorch) through edgeship.run with
    quiet=True: torch's, torchao's and ExecuTorch's notices stay inside edgeship's calls."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", API_RUN, str(tmp_path / "out")], capture_output=True,
                          text=True, cwd=Path(__file__).parent, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "api run 0 ['ok', 'ok']"
    assert proc.stderr == ""


LSTM_MODEL = '''
from torch import nn


class RowsLSTM(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(8, 16, batch_first=True)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        out, _ = self.lstm(x.flatten(1, 2))  # the digit's 8 rows, one step each
        return self.head(out[:, -1])


def rows_lstm():
    return RowsLSTM()
'''


def test_the_command_line_prints_no_torch_cpp_warning(tmp_path):
    """An LSTM in a static qnnpack model is quantized dynamically, and torch's dynamic int8 LSTM
    asks QNNPACK for reduce_range, which c10 logs from C++ past every Python filter ("qnnpack
    incorrectly ignores reduce_range"): the command line sets TORCH_CPP_LOG_LEVEL first."""
    (tmp_path / "models.py").write_text(LSTM_MODEL)
    recipe = demo_recipe(targets=["torchscript-qnnpack"], fp32_twins=False, devices=[], budgets=[])
    recipe["model"].update(factory="models.py:rows_lstm", train={"epochs": 1, "lr": 0.01})
    recipe["quantization"]["qat"]["enabled"] = False
    result = run_cli("run", str(write_recipe(tmp_path, recipe)), out=tmp_path / "run")
    assert result.code == 0, result.stderr[-3000:]
    assert "lstm" in result.report()["artifacts"][0]["details"]["quantization"]["dynamic_layers"]
    assert result.stderr == ""


def test_verbosity_goes_through_the_edgeship_logger():
    quiet = run_cli("devices", "check", "local")
    assert quiet.code == 0 and quiet.stderr == ""
    debug = run_cli("-vv", "devices", "check", "local")
    assert debug.code == 0 and "DEBUG    running: " in debug.stderr and "-character script>" in debug.stderr
