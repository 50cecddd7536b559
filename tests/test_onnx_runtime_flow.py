"""onnx-int8 is made by ONNX Runtime's own quantizer: a QDQ graph its optimizer turns into int8
kernels, at least as accurate as ONNX Runtime's documented flow on the same weights, with the
recipe's float layers left float and the CPU-dependent choice (reduce_range) recorded."""

from __future__ import annotations

import platform

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

import edgeship
from edgeship.data import stack
from edgeship.environment import int8_saturates
from edgeship.examples import digits
from edgeship.formats.onnx_static import quantize_static
from edgeship.quantize.flow import QuantSettings
from edgeship.recipe import parse_recipe
from edgeship.targets import get_target
from peers import error_share, ort_quantize_static
from support import demo_recipe


def _answers(path, inputs: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: inputs[i:i + 1]})[0] for i in range(len(inputs))])


def test_onnx_int8_is_onnx_runtimes_int8_and_no_worse_than_its_own_flow(tmp_path):
    data = demo_recipe(targets=["onnx-int8"])
    data["quantization"]["qat"]["enabled"] = False
    report = edgeship.run(parse_recipe(data, "ort", tmp_path), tmp_path / "run", quiet=True)
    int8, fp32 = report.artifact("onnx-int8"), report.artifact("onnx-fp32")
    assert int8.status == "ok" and fp32.status == "ok", (int8.error, fp32.error)

    chosen = int8.details["quantization"]["runtime_quantizer"]
    assert chosen["activations"] == "uint8" and chosen["weights"] == "int8" and chosen["per_channel"]
    assert chosen["reduce_range"] is int8_saturates()
    splits = digits.splits()
    assert chosen["calibration_samples"] == min(4 * 64, len(splits.calibration))  # as many as PyTorch sees
    kernels = int8.details["onnxruntime_kernels"]
    assert kernels["ops"].get("QLinearConv", 0) >= 2 and kernels["float_compute"] == 0, kernels
    assert int8.parity.reference.startswith("float model with the ort-qdq weights")
    assert (report.float.accuracy - int8.accuracy) * 100 <= 1.0

    # The same float weights (the fp32 twin) through ONNX Runtime's documented flow, as a user
    # without edgeship would run it: default reduce_range=False, the same calibration samples.
    calibration = stack(splits.calibration).inputs[0][:chosen["calibration_samples"]]
    test = stack(splits.test)
    theirs = ort_quantize_static(tmp_path / "run" / fp32.path, calibration, tmp_path)
    their_accuracy = float((_answers(theirs, test.inputs[0]).argmax(1) == test.labels).mean())
    assert int8.accuracy >= their_accuracy, (int8.accuracy, their_accuracy)
    if not chosen["reduce_range"]:  # then both are the same procedure: the same answers
        assert int8.accuracy == their_accuracy


class _ConvBnNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.conv(x))).flatten(1))


@pytest.mark.parametrize("float_layers, int8, float_", [((), 2, 0), (("conv",), 1, 1), (("head",), 1, 1)])
def test_float_layers_stay_float_in_onnx_runtime(tmp_path, float_layers, int8, float_):
    """A float layer is excluded from ONNX Runtime's quantizer, found by its module name: also a
    convolution whose batch norm the exporter folded into it (the node carries the batch norm's
    name)."""
    torch.manual_seed(0)
    model = _ConvBnNet().eval()
    calibration = np.random.default_rng(0).standard_normal((32, 1, 8, 8)).astype(np.float32)
    export, chosen = quantize_static((calibration,), QuantSettings(float_layers=frozenset(float_layers)), 16)
    assert chosen["calibration_samples"] == 16
    made = export(model, (torch.zeros(1, 1, 8, 8),), get_target("onnx-int8"), tmp_path)
    kernels = made.details["onnxruntime_kernels"]
    assert (kernels["int8_compute"], kernels["float_compute"]) == (int8, float_), kernels
    assert sorted(p.name for p in tmp_path.iterdir()) == ["onnx-int8.onnx"]  # no scratch left


def test_arm_only_devices_get_s8s8_on_the_same_grid(tmp_path):
    """With every device ARM64, ONNX Runtime quantizes activations to int8 (its documented first
    choice there). The grid is the uint8 one shifted by 128: on this host the two artifacts give
    the same answers, and its optimizer makes both int8 kernels."""
    import onnx

    torch.manual_seed(0)
    model = _ConvBnNet().eval()
    calibration = np.random.default_rng(0).standard_normal((32, 1, 8, 8)).astype(np.float32)
    made, answers = {}, {}
    for arm in (False, True):
        export, chosen = quantize_static((calibration,), QuantSettings(), 32, arm=arm)
        assert chosen["activations"] == ("int8" if arm else "uint8") and chosen["weights"] == "int8"
        folder = tmp_path / str(arm)
        folder.mkdir()
        made[arm] = export(model, (torch.zeros(1, 1, 8, 8),), get_target("onnx-int8"), folder)
        answers[arm] = _answers(made[arm].path, calibration)
        kernels = made[arm].details["onnxruntime_kernels"]
        assert (kernels["int8_compute"], kernels["float_compute"]) == (2, 0), (arm, kernels)
    graph = onnx.load(str(made[True].path)).graph
    zero_points = {init.name: init.data_type for init in graph.initializer}
    activations = [zero_points[n.input[2]] for n in graph.node if n.op_type == "QuantizeLinear"]
    assert activations and set(activations) == {onnx.TensorProto.INT8}, activations
    np.testing.assert_array_equal(answers[True], answers[False])


def test_only_a_device_list_all_arm64_counts_as_arm(tmp_path):
    from edgeship.pipeline.plan import make_plan

    def arm_only(devices):
        return make_plan(parse_recipe(demo_recipe(devices=devices), "arm", tmp_path)).arm_only

    assert arm_only(["arm64-emulated"]) and arm_only(["arm64-emulated", "rpi5"])
    assert not arm_only([]) and not arm_only(["arm64-emulated", "x86-server"])
    assert arm_only(["local"]) is (platform.machine() in ("aarch64", "arm64"))


def test_int8_saturates_on_x86_without_vnni_only():
    assert int8_saturates("x86_64", frozenset({"avx2", "fma"}))
    assert not int8_saturates("x86_64", frozenset({"avx2", "avx512_vnni"}))
    assert not int8_saturates("x86_64", frozenset({"avx2", "avx_vnni"}))
    assert not int8_saturates("aarch64", frozenset({"asimd", "asimddp"}))


def test_the_onnx_runtime_flow_converts_to_float_weights_and_probes_int8():
    """`convert` gives the float model (ONNX Runtime quantizes at export); sensitivity and fallback
    probe the int8 grid in PyTorch, not that float model."""
    from edgeship.quantize.calibrate import calibrate
    from edgeship.quantize.flows import flow_for
    from edgeship.targets import Flow

    torch.manual_seed(0)
    model = _ConvBnNet().eval()
    data = torch.utils.data.TensorDataset(torch.randn(64, 1, 8, 8), torch.zeros(64, dtype=torch.int64))
    flow = flow_for(Flow.ORT_QDQ)
    prepared = calibrate(flow, model, (torch.zeros(1, 1, 8, 8),), data, batches=1, batch_size=64, qat=False)
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(flow.convert(prepared)(x), model(x))
        simulated = flow.int8_in_pytorch(prepared)
        assert "quantize_per_tensor" in str(simulated.graph)
        assert not torch.equal(simulated(x), model(x))


class _SharedReluBlock(nn.Module):
    """torchvision's BasicBlock as written there: one in-place ReLU module called twice, and
    `out += identity`."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        identity = x
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        out += identity
        return self.relu(out)


@pytest.mark.parametrize("qat", (False, True))
def test_a_module_called_twice_is_quantized_in_the_onnx_runtime_flow(qat):
    """torchao's X86InductorQuantizer groups ops by module path, so a module called twice is one
    partition with two outputs, which it refuses: a torchvision-style ResNet failed calibration on
    onnx-int8. edgeship gives each later call a path of its own, except a float layer's, which
    the quantizer matches by name."""
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )

    from edgeship.quantize.calibrate import calibrate
    from edgeship.quantize.flows import flow_for
    from edgeship.quantize.pt2e import one_partition_per_call
    from edgeship.targets import Flow

    torch.manual_seed(0)
    model, x = _SharedReluBlock().eval(), torch.randn(64, 4, 8, 8)
    exported = torch.export.export(model, (x[:2],)).module()
    with pytest.raises(ValueError, match="more than one output node"):
        prepare_pt2e(exported, X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config()))
    paths = [list(n.meta["nn_module_stack"].values())[-1][0] for n in
             one_partition_per_call(exported, frozenset({"relu"})).graph.nodes if "relu" in n.name]
    assert paths == ["relu", "relu"]  # a float layer keeps its name on every call
    flow = flow_for(Flow.ORT_QDQ)
    data = torch.utils.data.TensorDataset(x, torch.zeros(64, dtype=torch.int64))
    prepared = calibrate(flow, model.train(qat), (x[:1],), data, batches=2, batch_size=32, qat=qat)
    flow.set_eval(prepared)
    with torch.no_grad():
        expected, simulated = model.eval()(x[:8]), flow.int8_in_pytorch(prepared)(x[:8])
    assert (simulated - expected).abs().max() < 0.05 * expected.abs().max()


class _GlobalMaxPoolNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        return self.head(self.pool(torch.relu(self.conv(x))).flatten(1))


def test_a_global_max_pool_is_quantized_by_onnx_runtime(tmp_path):
    """The exporter writes AdaptiveMaxPool2d(1) as ReduceMax, for which ONNX Runtime's symbolic
    shape inference has no rule: its own pre-processing fails; edgeship's falls back to ONNX's
    shape inference (ORT's skip_symbolic_shape) and the artifact is int8 and answers."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    torch.manual_seed(0)
    model = _GlobalMaxPoolNet().eval()
    examples = (torch.zeros(1, 1, 8, 8),)
    torch.onnx.export(model, examples, tmp_path / "float.onnx", dynamo=True)
    with pytest.raises(TypeError):
        quant_pre_process(str(tmp_path / "float.onnx"), str(tmp_path / "pre.onnx"))
    calibration = np.random.default_rng(0).standard_normal((32, 1, 8, 8)).astype(np.float32)
    export, _ = quantize_static((calibration,), QuantSettings(), 16)
    (tmp_path / "made").mkdir()
    made = export(model, examples, get_target("onnx-int8"), tmp_path / "made")
    assert made.details["onnxruntime_kernels"]["int8_compute"] >= 1, made.details["onnxruntime_kernels"]
    assert error_share(made.path, None, model, torch.from_numpy(calibration)) < 0.05


class _GroupNormTcn(nn.Module):
    """Causal dilated Conv1d blocks with GroupNorm: the exporter shares one InstanceNormalization
    bias constant between the six norms."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv1d(8 if i == 0 else 32, 32, 3, dilation=2 ** (i // 2)) for i in range(6))
        self.norms = nn.ModuleList(nn.GroupNorm(4, 32) for _ in range(6))
        self.head = nn.Linear(32, 10)

    def forward(self, x):  # (batch, 8 features, 8 steps)
        for conv, norm in zip(self.convs, self.norms):
            x = torch.relu(norm(conv(nn.functional.pad(x, (2 * conv.dilation[0], 0)))))
        return self.head(x[:, :, -1])


def test_an_initializer_many_nodes_share_is_quantized_by_onnx_runtime(tmp_path):
    """ORT's QDQ quantizer copies a shared initializer as `<name><i>`, checked against initializer
    names only: here its copy took a Reshape output's name and ORT's own flow fails ('Quantization
    parameter shared mode is not supported for weight yet'); edgeship renames shared initializers
    first and the artifact is int8 and answers."""
    torch.manual_seed(0)
    model = _GroupNormTcn().eval()
    examples = (torch.zeros(1, 8, 8),)
    calibration = np.random.default_rng(0).standard_normal((32, 8, 8)).astype(np.float32)
    torch.onnx.export(model, examples, tmp_path / "float.onnx", dynamo=True)
    with pytest.raises(ValueError, match="shared mode"):
        ort_quantize_static(tmp_path / "float.onnx", calibration, tmp_path)
    export, _ = quantize_static((calibration,), QuantSettings(), 16)
    (tmp_path / "made").mkdir()
    made = export(model, examples, get_target("onnx-int8"), tmp_path / "made")
    assert made.details["onnxruntime_kernels"]["int8_compute"] >= 6, made.details["onnxruntime_kernels"]
    # six int8 convolutions, each renormalized, on random weights: 0.083 measured
    assert error_share(made.path, None, model, torch.from_numpy(calibration)) < 0.15
