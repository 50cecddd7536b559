"""The whole spine on the built-in demo: a digits CNN, QAT, four int8 targets and their fp32
twins, verified in their own runtimes, benchmarked on this machine, gated."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from support import demo_recipe, run_cli, write_recipe

pytestmark = pytest.mark.slow

INT8 = ["torchscript-fbgemm", "torchscript-qnnpack", "onnx-int8", "executorch-xnnpack"]
FP32 = ["torchscript-fp32", "onnx-fp32", "executorch-fp32"]
TWIN = {"torchscript-fbgemm": "torchscript-fp32", "torchscript-qnnpack": "torchscript-fp32",
        "onnx-int8": "onnx-fp32", "executorch-xnnpack": "executorch-fp32"}


def by_target(report: dict) -> dict[str, dict]:
    return {a["target"]: a for a in report["artifacts"]}


def test_demo_passes_its_budgets(demo_run):
    assert demo_run.code == 0, demo_run.stderr[-3000:] + demo_run.stdout[-3000:]
    report = demo_run.report()
    assert report["gate"] == {"passed": True, "violations": []}
    assert report["exit_code"] == 0
    assert "gate PASSED" in demo_run.stdout


def test_report_follows_the_contract(demo_run):
    report = demo_run.report()
    for key in ("edgeship_version", "recipe_sha256", "environment", "stages", "float", "artifacts", "gate"):
        assert key in report
    for lib in ("python", "torch", "executorch", "onnxruntime", "onnx"):
        assert report["environment"][lib], lib
    assert report["environment"]["host"]["cpu"]
    assert [s["name"] for s in report["stages"]] == [
        "load", "evaluate-float", "calibrate", "qat", "convert", "export", "verify", "benchmark",
        "gate", "report"]
    assert all(s["status"] == "ok" and s["seconds"] >= 0 for s in report["stages"])
    assert sorted(by_target(report)) == sorted(INT8 + FP32)
    for a in report["artifacts"]:
        path = demo_run.out / a["path"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == a["sha256"]
        assert a["size_bytes"] == sum((demo_run.out / f).stat().st_size for f in a["files"])
        assert a["precision"] == ("int8" if a["target"] in INT8 else "fp32")
        # read from the artifact itself: the demo's int8 artifacts are int8 throughout
        share, macs = a["int8_share"], by_target(report)["torchscript-fp32"]["int8_share"]["macs"]
        assert share["macs"] == macs and share["macs_fraction"] == (1.0 if a["target"] in INT8 else 0.0), share
        (bench,) = a["benchmarks"]
        assert bench["device"] == "local" and bench["status"] == "ok" and bench["valid"] is True
        lat = bench["latency_ms"]
        assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"]
        assert bench["iterations"] >= 20
        assert bench["load_ms"] > 0 and bench["first_inference_ms"] > 0
        assert bench["peak_rss_mb"] > 10 and bench["rss_delta_mb"] is not None
        assert bench["samples_ms"] == [] and bench["samples_key"]  # in the archive beside it


def test_raw_samples_are_beside_the_report_not_in_it(demo_run):
    report = demo_run.report()
    assert report["samples_file"] == "report.samples.npz"
    assert (demo_run.out / "report.json").stat().st_size < 200_000
    with np.load(demo_run.out / "report.samples.npz") as archive:
        for a in report["artifacts"]:
            (bench,) = a["benchmarks"]
            samples = archive[bench["samples_key"]]
            assert len(samples) == bench["iterations"]
            assert np.median(samples) == pytest.approx(bench["latency_ms"]["p50"], rel=1e-9)


def test_accuracy_is_kept_in_every_runtime(demo_run):
    report = demo_run.report()
    float_accuracy = report["float"]["accuracy"]
    assert float_accuracy >= 0.97
    artifacts = by_target(report)
    for name in INT8:
        a = artifacts[name]
        assert (float_accuracy - a["accuracy"]) * 100 <= 0.5, (name, a["accuracy"])
        assert a["parity"]["top1_agreement"] >= 0.99
        # onnx-int8 is quantized by ONNX Runtime at export: it answers like the float model
        reference = "float model with the ort-qdq" if name == "onnx-int8" else "converted PyTorch model"
        assert a["parity"]["reference"].startswith(reference)
    for name in FP32:  # the same float model in another runtime answers the same
        assert artifacts[name]["accuracy"] == pytest.approx(float_accuracy, abs=0.0021)
        assert artifacts[name]["parity"]["max_abs_error"] < 1e-3


def test_int8_artifacts_are_a_third_of_their_twins(demo_run):
    artifacts = by_target(demo_run.report())
    for name in INT8:
        ratio = artifacts[name]["size_bytes"] / artifacts[TWIN[name]]["size_bytes"]
        assert ratio <= 0.35, (name, ratio)


def test_executorch_delegates_every_conv_and_linear(demo_run):
    delegation = by_target(demo_run.report())["executorch-xnnpack"]["details"]["delegation"]
    delegated = delegation["delegated_ops"]
    assert sum(n for op, n in delegated.items() if "convolution" in op) == 3
    assert sum(n for op, n in delegated.items() if "linear" in op or "addmm" in op) == 1
    assert not [op for op in delegation["non_delegated_ops"]
                if any(k in op for k in ("convolution", "linear", "addmm", "mm"))]


def test_onnx_artifact_is_qdq(demo_run):
    ops = by_target(demo_run.report())["onnx-int8"]["details"]["onnx_ops"]
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > 0


def test_markdown_and_console_show_every_artifact(demo_run):
    md = (demo_run.out / "report.md").read_text()
    assert "**Gate: PASSED**" in md
    for name in INT8 + FP32:
        assert f"| {name} |" in md
        assert name in demo_run.stdout


def test_the_same_recipe_again_reuses_every_stage(demo_run):
    first = demo_run.report()
    again = run_cli("run", str(Path(demo_run.out).parent / "recipe.toml"), out=demo_run.out)
    assert again.code == 0, again.stderr[-2000:]
    report = again.report()
    status = {s["name"]: s["status"] for s in report["stages"]}
    for stage in ("load", "calibrate", "qat", "export", "verify", "benchmark"):
        assert status[stage] == "cached", (stage, status)
    assert status["convert"] == "ok"  # the converted models are made again (references for nothing new)
    assert {a["target"]: a["sha256"] for a in report["artifacts"]} == \
        {a["target"]: a["sha256"] for a in first["artifacts"]}
    assert all(b["cached"] for a in report["artifacts"] for b in a["benchmarks"])
    assert report["artifacts"][0]["benchmarks"][0]["latency_ms"] == first["artifacts"][0]["benchmarks"][0]["latency_ms"]


def test_another_recipe_is_refused_in_a_folder_with_a_run(demo_run, tmp_path):
    recipe = write_recipe(tmp_path, demo_recipe(name="another"))
    refused = run_cli("run", str(recipe), out=demo_run.out)
    assert refused.code == 2
    assert refused.stderr.strip() == (f"error: {demo_run.out}: holds a run of another recipe; use "
                                      f"--force to replace it, or choose another --out")


def test_each_artifact_is_profiled_per_op_apart_from_its_timing(demo_run):
    """`profile = true`: each runtime's own profiler, in a process of its own: the int8 kernels
    show by name (QLinearConv, quantized::conv2d_relu, XNNPACK's QC8 convolutions)."""
    report = by_target(demo_run.report())
    kinds = {}
    for target, artifact in report.items():
        (bench,) = artifact["benchmarks"]
        profile = bench["profile"]
        assert "error" not in profile, profile
        assert profile["runs"] >= 20 and profile["ms_per_run"] > 0 and profile["ops"]
        assert sum(profile["ms_by_op_type"].values()) == pytest.approx(profile["ms_per_run"])
        kinds[target] = {op["op"] for op in profile["ops"]}
    assert "QLinearConv" in kinds["onnx-int8"] and "Conv" not in kinds["onnx-int8"]
    assert "QLinearConv" not in kinds["onnx-fp32"] and kinds["onnx-fp32"] & {"Conv", "FusedConv"}
    assert "conv2d_relu" in kinds["torchscript-fbgemm"] and "conv2d_relu" not in kinds["torchscript-fp32"]
    assert "DELEGATE_CALL" in kinds["executorch-xnnpack"]
    assert any("QC8" in op for op in kinds["executorch-xnnpack"])
    lines = [x for x in demo_run.stdout.splitlines() if x.startswith("profile: onnx-int8 on local: ops ")]
    assert len(lines) == 1 and "more than onnx-fp32: " in lines[0], demo_run.stdout[-3000:]
