"""`edgeship bench MODEL`: model files made in the test by each runtime's own tools (not by
edgeship's pipeline), measured through the real CLI, locally and through a real sshd on
127.0.0.1; and the bad files and arguments a user can give it."""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgeship.errors import UserError
from edgeship.formats.model_file import open_model_file
from browser import chromium, open_page  # noqa: F401  (chromium is a fixture)
from sshd import SshServer, sshd  # noqa: F401  (sshd is a fixture)
from support import run_cli

QUICK = "[benchmark]\nwarmup_iterations = 2\nmin_iterations = 20\nmin_seconds = 0.1\n"


class SmallNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(self.conv(x).relu().mean((2, 3)))


def local_profile(folder: Path, runtimes: str = '["torchscript", "onnx", "executorch"]') -> Path:
    path = folder / "quick-local.toml"
    path.write_text(f'name = "quick-local"\narch = "auto"\nruntimes = {runtimes}\n'
                    f'int8_engines = ["fbgemm"]\n[transport]\nkind = "local"\n{QUICK}')
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """One small net as each runtime's own documented flow writes it: torch.onnx.export (dynamo,
    external data; one with a dynamic batch), torch.jit.trace, ExecuTorch's XNNPACK lowering."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    folder = tmp_path_factory.mktemp("model-files")
    torch.manual_seed(0)
    net, example = SmallNet().eval(), (torch.randn(1, 3, 16, 16),)
    torch.onnx.export(net, example, folder / "net.onnx", dynamo=True, external_data=True)
    batch = torch.export.Dim("batch", min=1, max=64)
    torch.onnx.export(net, example, folder / "dynamic.onnx", dynamo=True,
                      dynamic_shapes={"x": {0: batch}})
    torch.jit.save(torch.jit.trace(net, example), folder / "net.pt")
    program = to_edge_transform_and_lower(torch.export.export(net, example),
                                          partitioner=[XnnpackPartitioner()]).to_executorch()
    (folder / "net.pte").write_bytes(program.buffer)
    return {name: folder / name for name in ("net.onnx", "dynamic.onnx", "net.pt", "net.pte")}


def bench(*args: str, cwd: Path):
    result = run_cli("bench", *args, cwd=cwd)
    report = json.loads((cwd / "out" / "report.json").read_text()) if (cwd / "out" / "report.json").exists() else None
    return result, report


@pytest.mark.parametrize("name", ["net.onnx", "net.pte"])
def test_a_file_that_says_its_inputs_is_measured_as_it_is(files, tmp_path, name):
    result, report = bench(str(files[name]), "--device", str(local_profile(tmp_path)), "--out", "out",
                           cwd=tmp_path)
    assert result.code == 0, result.stdout + result.stderr
    (run,) = report["runs"]
    assert report["inputs_from"] == "the file's metadata" and run["inputs"][0].endswith(":1x3x16x16:float32")
    bench_ = run["benchmark"]
    assert bench_["status"] == "ok" and bench_["iterations"] >= 20 and bench_["latency_ms"]["p50"] > 0
    assert report["size_bytes"] == sum(p.stat().st_size for p in files[name].parent.glob(name + "*"))
    assert report["format"] == {"net.onnx": "onnx", "net.pte": "executorch"}[name]
    with np.load(tmp_path / "out" / report["samples_file"]) as samples:
        assert len(samples[bench_["samples_key"]]) == bench_["iterations"]
    assert "measured on quick-local: " in result.stdout and "int8 ISA" in result.stdout


def test_torchscript_needs_its_inputs_given(files, tmp_path):
    profile = str(local_profile(tmp_path))
    result, _ = bench(str(files["net.pt"]), "--device", profile, "--out", "out", cwd=tmp_path)
    assert result.code == 2
    assert result.stderr.strip() == (f"error: {files['net.pt']}: cannot tell its inputs (a TorchScript "
                                     f"file keeps no input shapes); give them with --input "
                                     f"NAME:1x3x224x224:float32 (once per input) or --inputs data.npz")
    result, report = bench(str(files["net.pt"]), "--device", profile, "--input", "x:1x3x16x16:float32",
                           "--out", "out", "--max-latency-p50-ms", "1e-6", "--profile", cwd=tmp_path)
    assert result.code == 1, result.stdout + result.stderr  # measured, and over a budget nobody meets
    assert report["gate"]["violations"][0]["message"].startswith(
        "quick-local x:1x3x16x16:float32: p50 latency ms ")
    root = ET.fromstring((tmp_path / "out" / "junit.xml").read_text())  # what a CI server reads
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("2", "1", "0")
    (failure,) = root.iter("failure")
    assert failure.get("type") == "max_latency_p50_ms" and failure.get("message").startswith("quick-local x:")
    ops = {op["name"] for op in report["runs"][0]["benchmark"]["profile"]["ops"]}
    assert {"aten::conv2d", "aten::linear"} & ops or "aten::_convolution" in ops, ops
    assert "profile: x:1x3x16x16:float32: ops " in result.stdout and "top ops" in result.stdout


def test_a_batch_sweep_of_a_dynamic_batch(files, tmp_path):
    profile = str(local_profile(tmp_path))
    result, _ = bench(str(files["dynamic.onnx"]), "--device", profile, "--out", "out", cwd=tmp_path)
    assert result.code == 2 and "input 'x' has dims ['batch', 3, 16, 16]" in result.stderr
    result, report = bench(str(files["dynamic.onnx"]), "--device", profile, "--input", "x:1x3x16x16",
                           "--batch-sizes", "1,8", "--out", "out", cwd=tmp_path)
    assert result.code == 0, result.stdout + result.stderr
    assert [r["inputs"] for r in report["runs"]] == [["x:1x3x16x16:float32"], ["x:8x3x16x16:float32"]]
    p50 = [r["benchmark"]["latency_ms"]["p50"] for r in report["runs"]]
    assert p50[1] > p50[0]  # eight images take longer than one


BUDGETS = """name = "a recipe's budgets"
[[budgets]]
max_size_mb = 0.001
max_accuracy_drop = 1.0
[[budgets]]
targets = ["executorch-xnnpack"]
max_latency_p50_ms = 0.000001
[[budgets]]
devices = ["rpi5"]
max_peak_rss_mb = 1
[[budgets]]
devices = ["quick-local"]
max_latency_p90_ms = 1000
max_peak_rss_mb = 4000
"""


def test_a_shape_sweep_gated_by_a_recipes_budgets_in_every_report(files, tmp_path, chromium):
    """Two --input values for one name are two input sets; of the [[budgets]] only those for this
    device and the file's format apply, the tightest value of each limit wins over the command
    line's looser one, and what a bare file cannot show is named, not passed."""
    (tmp_path / "budgets.toml").write_text(BUDGETS)
    result, report = bench(str(files["dynamic.onnx"]), "--device", str(local_profile(tmp_path)),
                           "--input", "x:1x3x16x16", "--input", "x:4x3x16x16", "--budgets", "budgets.toml",
                           "--max-peak-rss-mb", "5000", "--out", "out", cwd=tmp_path)
    assert result.code == 1, result.stdout + result.stderr
    assert [r["inputs"] for r in report["runs"]] == [["x:1x3x16x16:float32"], ["x:4x3x16x16:float32"]]
    assert report["limits"] == {"max_size_mb": 0.001, "max_latency_p90_ms": 1000, "max_peak_rss_mb": 4000}
    assert report["limits_not_checked"] == ["max_accuracy_drop"]
    assert [v["limit_name"] for v in report["gate"]["violations"]] == ["max_size_mb"]
    assert "not checked on a bare model file" in result.stdout and "max_accuracy_drop" in result.stdout
    import xmlschema
    xmlschema.XMLSchema(str(Path(__file__).parent / "data" / "junit-10.xsd")).validate(
        str(tmp_path / "out" / "junit.xml"))
    cases = {c.get("name"): c for c in ET.parse(tmp_path / "out" / "junit.xml").getroot().iter("testcase")}
    assert cases["max_size_mb"].find("failure") is not None
    assert cases["max_size_mb"].find("system-out").text.startswith("measured: 0.00")
    assert cases["max_latency_p90_ms[quick-local] x:4x3x16x16:float32"].find("failure") is None
    page = (tmp_path / "out" / "report.html").read_text()
    assert "<h2>Input sweep</h2>" in page and "Budgets FAILED" in page
    title, console = open_page(chromium, page, tmp_path)
    assert title == "IMAGES 2 BAD []" and console == []


def test_real_inputs_from_an_npz(files, tmp_path):
    np.savez(tmp_path / "data.npz", x=np.random.default_rng(0).standard_normal((4, 3, 16, 16), np.float32))
    result, report = bench(str(files["dynamic.onnx"]), "--device", str(local_profile(tmp_path)),
                           "--inputs", "data.npz", "--out", "out", cwd=tmp_path)
    assert result.code == 0, result.stdout + result.stderr
    assert report["inputs_from"] == "--inputs data.npz" and report["runs"][0]["inputs"] == ["float32[4x3x16x16]"]


def test_a_device_without_the_runtime_is_skipped_before_copying(files, tmp_path):
    profile = str(local_profile(tmp_path, runtimes='["torchscript"]'))
    result, report = bench(str(files["net.onnx"]), "--device", profile, "--out", "out", cwd=tmp_path)
    assert result.code == 0, result.stdout + result.stderr
    bench_ = report["runs"][0]["benchmark"]
    assert bench_["status"] == "skipped" and bench_["error"].startswith("device quick-local has no onnx runtime")


def _broken(folder: Path, name: str, content: bytes) -> Path:
    path = folder / name
    path.write_bytes(content)
    return path


@pytest.mark.parametrize("name, content, expected", [
    ("cut.onnx", None, "not a valid ONNX model"),
    ("noise.pte", bytes(range(256)) * 8, "not an ExecuTorch program"),
    ("cut.pte", None, "truncated"),
    ("noise.pt", b"\x00" * 512, "not a TorchScript archive: not a zip file"),
    ("model.tflite", b"TFL3", "unknown model file suffix '.tflite'; known: .onnx, .pte, .pt"),
    ("missing.onnx", False, "no such file"),
])
def test_bad_model_files_are_bad_input_naming_the_file(files, tmp_path, name, content, expected):
    if content is None:  # the first third of a real file
        whole = files["net.pte" if name.endswith(".pte") else "net.onnx"].read_bytes()
        content = whole[: len(whole) // 3]
    path = tmp_path / name if content is False else _broken(tmp_path, name, content)
    with pytest.raises(UserError) as e:
        open_model_file(path)
    assert str(e.value).startswith(f"{path}: ") and expected in str(e.value), e.value
    assert len(str(e.value).splitlines()) == 1


def test_a_bad_model_file_exits_2_in_one_line_and_writes_nothing(tmp_path):
    path = _broken(tmp_path, "noise.pte", bytes(range(256)) * 8)
    result, _ = bench(str(path), "--device", str(local_profile(tmp_path)), "--out", "out", cwd=tmp_path)
    assert result.code == 2, result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {path}: not an ExecuTorch program"), line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, expected", [
    (("--input", "x:1x3xAx16"), "--input 'x:1x3xAx16': expected NAME:1x3x224x224:float32"),
    (("--input", "x:1x3x16x16:float128"), "dtypes: float32, float16"),
    (("--batch-sizes", "1,0"), "--batch-sizes '1,0': positive integers"),
    (("--engine", "mkl"), "--engine 'mkl': fbgemm or qnnpack"),
    (("--input", "x:1x3x16x16", "--input", "y:1x4", "--input", "x:2x3x16x16"),
     "every set of a sweep names the same inputs in the same order (x, y); got x"),
    (("--budgets", "nowhere.toml"), "nowhere.toml: cannot read budgets file"),
    (("--budgets", "recipe.toml"), "recipe.toml: no [[budgets]] tables"),
    (("--budgets", "typo.toml"), "typo.toml: budgets[0].max_latncy_p50_ms: unknown key"),
])
def test_bad_arguments_get_one_line_and_exit_2(files, tmp_path, args, expected):
    (tmp_path / "recipe.toml").write_text('name = "no budgets"\n')
    (tmp_path / "typo.toml").write_text("[[budgets]]\nmax_latncy_p50_ms = 3\n")
    result, _ = bench(str(files["net.onnx"]), *args, cwd=tmp_path)
    assert result.code == 2
    (line,) = result.stderr.strip().splitlines()
    assert expected in line, line


def test_the_same_file_through_ssh(files, tmp_path, sshd: SshServer):  # noqa: F811
    profile = tmp_path / "ssh.toml"
    profile.write_text(
        f'name = "loopback"\narch = "auto"\nruntimes = ["onnx"]\nint8_engines = ["onnxruntime"]\n'
        f'[transport]\nkind = "ssh"\nhost = "127.0.0.1"\nport = {sshd.port}\n'
        f'identity_file = "{sshd.identity_file}"\npython = "{sys.executable}"\n'
        f'workdir = "{tmp_path / "device"}"\noptions = ["UserKnownHostsFile={sshd.known_hosts}"]\n{QUICK}')
    result, report = bench(str(files["net.onnx"]), "--device", str(profile), "--out", "out", "--profile",
                           cwd=tmp_path)
    assert result.code == 0, result.stdout + result.stderr
    bench_ = report["runs"][0]["benchmark"]
    assert bench_["status"] == "ok" and bench_["device"] == "loopback" and bench_["iterations"] >= 20
    assert (tmp_path / "device").is_dir()  # the file went to the device's workdir
    # the profile came back from the device too: ONNX Runtime's kernels of this float net
    assert {"Conv", "FusedConv"} & set(bench_["profile"]["ms_by_op_type"]), bench_["profile"]
