"""The plan: which stages run, for which flows and targets, decided from the recipe before any
work; and the format specs every stage asks."""

from __future__ import annotations

import doctest
from pathlib import Path

import pytest
from torch import nn

from edgeship.benchmarks import runner
from edgeship.devices import profile as profile_module
from edgeship.errors import UserError
from edgeship.formats import FORMATS, spec_for
from edgeship.pipeline import run as pipeline_run
from edgeship.pipeline.plan import check_model, make_plan
from edgeship.quantize import float_layers
from edgeship.recipe import parse_recipe
from edgeship.targets import TARGETS, Flow, Format, get_target

from support import demo_recipe


def _plan(**changes):
    return make_plan(parse_recipe(demo_recipe(**changes), "test", Path.cwd()))


def test_the_demo_plan_runs_every_static_stage_once_per_flow():
    plan = _plan()
    assert [t.name for t in plan.targets] == [
        "torchscript-fbgemm", "torchscript-qnnpack", "onnx-int8", "executorch-xnnpack",
        "torchscript-fp32", "onnx-fp32", "executorch-fp32"]
    assert plan.static_flows == [Flow.FX_FBGEMM, Flow.FX_QNNPACK, Flow.ORT_QDQ, Flow.PT2E_XNNPACK]
    assert [t.name for t in plan.targets_of(Flow.ORT_QDQ)] == ["onnx-int8"]
    assert [t.name for t in plan.targets_of(Flow.PT2E_XNNPACK)] == ["executorch-xnnpack"]
    assert plan.dynamic == ()
    assert plan.stages == ["load", "evaluate-float", "calibrate", "qat", "convert", "export", "verify",
                           "benchmark", "gate", "report"]
    assert [d.profile.name for d in plan.devices] == ["local"]
    assert plan.devices[0].settings.min_iterations == 20  # the recipe's override of the profile


def test_dynamic_targets_leave_the_static_stages_to_the_others():
    plan = _plan(targets=["onnx-int8", "torchscript-fbgemm"], quantization__modes={"onnx-int8": "dynamic"},
                 quantization__qat={"enabled": False}, fp32_twins=False)
    assert [t.name for t in plan.static] == ["torchscript-fbgemm"]
    assert [t.name for t in plan.dynamic] == ["onnx-int8"]
    assert plan.stages == ["load", "evaluate-float", "calibrate", "convert", "quantize-dynamic", "export",
                           "verify", "benchmark", "gate", "report"]
    only_dynamic = _plan(targets=["onnx-int8"], quantization__mode="dynamic", fp32_twins=False)
    assert only_dynamic.static_flows == [] and "calibrate" not in only_dynamic.stages


def test_an_unknown_device_stops_the_run_before_its_folder_is_made(tmp_path):
    recipe = parse_recipe(demo_recipe(devices=["local", "pixel-9"]), "test", tmp_path)
    with pytest.raises(UserError, match="unknown device 'pixel-9'; known: "):
        pipeline_run.run_recipe(recipe, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_layer_no_runtime_of_a_target_runs_is_refused_by_name():
    clip = nn.Sequential(nn.Conv3d(1, 2, 3))
    with pytest.raises(UserError, match=r"target executorch-xnnpack cannot run layer '0' \(Conv3d\)"):
        check_model(_plan(), clip)
    check_model(_plan(targets=["onnx-int8", "torchscript-fbgemm"]), clip)  # both run Conv3d


def test_a_refusal_names_the_listed_target_once_per_reason_never_a_twin():
    video = nn.Sequential(nn.Conv3d(1, 2, 3), nn.ReLU(), nn.Conv3d(2, 2, 3))
    with pytest.raises(UserError) as refused:
        check_model(_plan(targets=["executorch-xnnpack"]), video)
    (line,) = str(refused.value).splitlines()
    assert line.startswith("target executorch-xnnpack cannot run layers '0' (Conv3d), '2' (Conv3d): ")
    assert line.endswith("; remove executorch-xnnpack from targets") and "executorch-fp32" not in line
    # both listed: one line, naming both (the twin fails the same way; one run says it all)
    with pytest.raises(UserError) as refused:
        check_model(_plan(targets=["executorch-xnnpack", "executorch-fp32"]), video)
    (line,) = str(refused.value).splitlines()
    assert line.endswith("; remove executorch-xnnpack and executorch-fp32 from targets"), line


def test_every_target_has_a_format_spec_the_runner_can_load():
    for target in TARGETS.values():
        spec = spec_for(target.format)
        assert spec.suffix in runner.LOADERS, (target.name, spec.suffix)
        assert "numpy" in spec.runtime_packages
    assert set(FORMATS) == set(Format)
    with pytest.raises(KeyError, match="unknown format 'tflite'; known: torchscript, onnx, executorch"):
        spec_for("tflite")


def test_only_torchscript_int8_asks_the_runner_for_an_engine():
    args = {name: spec_for(t.format).runner_args(t) for name, t in TARGETS.items()}
    assert args["torchscript-qnnpack"] == ("--engine", "qnnpack")
    assert args["torchscript-fbgemm"] == ("--engine", "fbgemm")
    assert all(a == () for name, a in args.items() if name not in ("torchscript-qnnpack", "torchscript-fbgemm"))
    assert spec_for(Format.TORCHSCRIPT).torch_engine(get_target("torchscript-fp32")) is None


def test_docstring_examples_run():
    import edgeship.formats

    for module in (edgeship.formats, float_layers):
        result = doctest.testmod(module)
        assert result.attempted >= 2 and result.failed == 0, module.__name__


def test_a_budget_on_a_device_the_run_does_not_measure_is_refused(tmp_path):
    recipe = parse_recipe(demo_recipe(budgets=[{"max_size_mb": 1},
                                               {"devices": ["local", "rpi5"], "max_latency_p90_ms": 5}]),
                          "test", tmp_path)
    with pytest.raises(UserError) as error:
        make_plan(recipe)
    assert str(error.value) == "budgets[1].devices: 'rpi5' not in this recipe's devices; its devices: local"


def test_a_budget_may_name_a_device_of_a_profile_given_by_path(tmp_path):
    profile = (Path(profile_module.__file__).parent / "profiles" / "local.toml").read_text()
    (tmp_path / "bench-box.toml").write_text(profile.replace('name = "local"', 'name = "bench-box"'))
    recipe = parse_recipe(demo_recipe(devices=["bench-box.toml"],
                                      budgets=[{"devices": ["bench-box"], "max_latency_p90_ms": 5}]),
                          "test", tmp_path)
    assert [d.profile.name for d in make_plan(recipe).devices] == ["bench-box"]


@pytest.mark.parametrize("content, problem", [
    (b"\x89PNG\r\n\x1a\n\x00\x00", "not a device profile: not UTF-8 text (byte 0)"),
    (b"name = 'x'\nbenchmark = { min_seconds = inf }\n", "benchmark.min_seconds: Input should be a finite number"),
    (b"x = " + b"{a = " * 3000 + b"1" + b"}" * 3000, "not valid TOML: arrays or tables nested too deeply"),
])
def test_a_device_profile_that_is_not_text_or_not_finite_is_bad_input(tmp_path, content, problem):
    (tmp_path / "device.toml").write_bytes(content)
    with pytest.raises(UserError) as error:
        profile_module.load_profile("device.toml", tmp_path)
    assert f"{tmp_path / 'device.toml'}: {problem}" in str(error.value).splitlines()
