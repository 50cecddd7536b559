"""How much of each artifact runs int8, read from the artifact itself (formats/*_compute.py):
every format counts the same multiply-accumulates for the same model; an int8 CNN is all int8 and
its fp32 twin none; a static LSTM that every static flow leaves float is reported mostly float,
in the tables, in a warning line and by a `min_int8_fraction` budget."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from edgeship.engines import attention_slow_path, quantized_engine
from edgeship.formats import export_atomically, spec_for
from edgeship.gate.budgets import evaluate
from edgeship.quantize.float_layers import DYNAMIC_IN_STATIC, LEFT_FLOAT, layers_of, required_float_layers
from edgeship.recipe import Budget
from edgeship.report.schema import Int8Share, Report
from edgeship.report.findings import mostly_float
from edgeship.report.writers import markdown, rows
from edgeship.quantize.calibrate import calibrate
from edgeship.quantize.flows import flow_for
from edgeship.quantize.recurrent import quantizable_lstms
from edgeship.targets import Flow, Format, get_target
from peers import edgeship_export, error_share

STORED = Path(__file__).parent / "data" / "report-digits.json"
INT8 = ("torchscript-fbgemm", "torchscript-qnnpack", "onnx-int8", "executorch-xnnpack")
FP32 = ("torchscript-fp32", "onnx-fp32", "executorch-fp32")


class SmallCnn(nn.Module):
    """Not an example model: a strided conv with batch norm, a depthwise conv, a pool, a head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 12, 3, stride=2, padding=1), nn.BatchNorm2d(12), nn.ReLU())
        self.depthwise = nn.Sequential(nn.Conv2d(12, 12, 3, padding=1, groups=12), nn.ReLU())
        self.head = nn.Linear(12 * 8 * 8, 7)

    def forward(self, x):
        x = nn.functional.max_pool2d(self.depthwise(self.stem(x)), 2)
        return self.head(torch.flatten(x, 1))


class LstmClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(10, 24, batch_first=True)
        self.head = nn.Linear(24, 3)

    def forward(self, x):
        return self.head(self.lstm(x)[0][:, -1])


def _macs_by_hooks(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of the model's convolutions and linears, counted on the float model."""
    total = []

    def count(module, args, out):
        weight = module.weight
        total.append(out.numel() * weight[0].numel())
    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    with torch.no_grad():
        model(example)
    for h in hooks:
        h.remove()
    return sum(total)


@pytest.fixture(scope="module")
def cnn_shares(tmp_path_factory) -> dict[str, dict]:
    torch.manual_seed(0)
    model = SmallCnn().eval()
    calibration = np.random.default_rng(0).random((64, 3, 32, 32), dtype=np.float32)
    folder = tmp_path_factory.mktemp("cnn")
    shares = {name: edgeship_export(name, model, calibration, folder / name).details["int8_share"]
              for name in INT8 + FP32}
    return {"shares": shares, "macs": _macs_by_hooks(model, torch.from_numpy(calibration[:1]))}


@pytest.mark.parametrize("name", INT8 + FP32)
def test_every_format_counts_the_float_models_macs(cnn_shares, name):
    share = cnn_shares["shares"][name]
    assert share["macs"] == cnn_shares["macs"], share
    assert share["compute_ops"] == 3


@pytest.mark.parametrize("name", INT8)
def test_an_int8_cnn_runs_all_its_macs_int8(cnn_shares, name):
    share = cnn_shares["shares"][name]
    assert share["macs_fraction"] == 1.0 and share["weights_fraction"] == 1.0, share


@pytest.mark.parametrize("name", FP32)
def test_an_fp32_twin_runs_none_int8_and_names_its_float_ops(cnn_shares, name):
    share = cnn_shares["shares"][name]
    assert share["macs_fraction"] == 0.0
    assert {op["name"] for op in share["float_ops"]} >= {"depthwise.0", "head"}, share["float_ops"]
    assert sum(op["macs_fraction"] for op in share["float_ops"]) == pytest.approx(1.0)


def _lstm_share(name: str, folder: Path) -> Int8Share:
    torch.manual_seed(0)
    model = LstmClassifier().eval()
    calibration = np.random.default_rng(0).standard_normal((64, 12, 10), dtype=np.float32)
    return Int8Share.model_validate(edgeship_export(name, model, calibration, folder).details["int8_share"])


class _Scores(nn.Module):
    """Attention with a Linear for each of query, key and value and torch.matmul, as Hugging Face
    writes it (torch.ao quantizes torch.matmul, not the `@` operator)."""

    def __init__(self) -> None:
        super().__init__()
        self.query, self.key, self.value = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x):  # (batch, tokens, 8)
        scores = torch.matmul(self.query(x), self.key(x).transpose(-1, -2))
        return torch.matmul(torch.softmax(scores, dim=-1), self.value(x)).mean(1)


def test_torchscript_counts_an_int8_matrix_product_of_activations(tmp_path):
    """torch.ao makes both of attention's products quantized::matmul: counted as int8 compute, so
    the int8 artifact has the MACs and ops of its fp32 twin (it had two ops fewer, and a Hugging
    Face BERT's TorchScript share 11% fewer MACs than its ONNX one)."""
    torch.manual_seed(0)
    model, x = _Scores().eval(), np.random.default_rng(0).standard_normal((64, 6, 8)).astype(np.float32)
    int8, fp32 = (edgeship_export(name, model, x, tmp_path / name).details["int8_share"]
                  for name in ("torchscript-fbgemm", "torchscript-fp32"))
    assert (int8["macs"], int8["compute_ops"]) == (fp32["macs"], fp32["compute_ops"]), (int8, fp32)
    assert fp32["compute_ops"] == 5 and int8["macs_fraction"] == 1.0, int8


def test_a_static_lstm_on_xnnpack_runs_its_matrix_products_int8(tmp_path):
    """The XNNPACK quantizer annotates no aten.lstm: the flow captures torch.ao's quantizable LSTM
    instead (the same weights as nn.Linear gates), whose unrolled linears XNNPACK runs int8."""
    share = _lstm_share("executorch-xnnpack", tmp_path)
    assert not share.mostly_float and share.macs_fraction > 0.95, share


@pytest.mark.parametrize("lstm", [dict(), dict(num_layers=2, bidirectional=True)])
def test_the_quantizable_lstm_answers_as_the_lstm_does(lstm):
    torch.manual_seed(0)
    model = nn.Sequential(nn.LSTM(10, 24, batch_first=True, **lstm)).eval()
    rebuilt = quantizable_lstms(model)
    assert type(rebuilt[0]) is not nn.LSTM and type(model[0]) is nn.LSTM  # a copy; the user's model kept
    x = torch.randn(3, 7, 10)
    torch.testing.assert_close(rebuilt(x)[0], model(x)[0])
    projected = nn.LSTM(10, 24, proj_size=8)
    assert quantizable_lstms(projected) is not projected and type(quantizable_lstms(projected)) is nn.LSTM


def test_an_lstm_with_projections_is_said_to_stay_float_on_xnnpack():
    """torch.ao's quantizable LSTM has no projections: that LSTM stays nn.LSTM, float on XNNPACK,
    and the report's reason says so; a plain LSTM is not listed."""
    model = nn.Sequential(nn.LSTM(10, 24, proj_size=8), nn.LSTM(8, 8))
    left = layers_of(LEFT_FLOAT, model, Flow.PT2E_XNNPACK)
    assert list(left) == ["0"] and "proj_size" in left["0"], left
    assert not layers_of(LEFT_FLOAT, model, Flow.FX_FBGEMM)


def test_a_2x2_transposed_convolution_stays_float_on_fbgemm(tmp_path):
    """fbgemm's int8 ConvTranspose2d answered wrong with 2x2 kernels on an AVX-512 host: such a
    layer stays float there, with the reason, and the artifact then answers as the float model
    does; a 3x3 one stays int8, and QNNPACK keeps both int8."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 32, 3, stride=2, padding=1), nn.ReLU(),
                          nn.ConvTranspose2d(32, 16, 2, stride=2), nn.ReLU(),
                          nn.ConvTranspose2d(16, 8, 3, padding=1)).eval()
    required = required_float_layers(model, Flow.FX_FBGEMM)
    assert list(required) == ["2"] and "2-wide kernel" in required["2"], required
    assert not required_float_layers(model, Flow.FX_QNNPACK)
    inputs = torch.randn(64, 1, 8, 8)
    made = edgeship_export("torchscript-fbgemm", model, inputs.numpy(), tmp_path)
    assert error_share(made.path, "fbgemm", model, inputs[:8]) < 0.05
    assert 0 < made.details["int8_share"]["macs_fraction"] < 1


def test_torchs_int8_prelu_still_scales_positive_inputs():
    """Why PReLU stays float on the FX flows, at the pinned torch: when this fails, torch has
    fixed quantized::prelu and FLOAT_REQUIRED's PReLU entries can go."""
    x = torch.quantize_per_tensor(torch.tensor([-0.4, 0.2, 0.8]), 0.01, 128, torch.quint8)
    slope = torch.quantize_per_tensor(torch.tensor([0.25]), 0.001, 0, torch.quint8)
    for engine in ("fbgemm", "qnnpack"):
        with quantized_engine(engine):
            out = torch.ops.quantized.prelu(x, slope, 0.01, 128).dequantize()
        torch.testing.assert_close(out, torch.tensor([-0.1, 0.05, 0.2]), atol=0.011, rtol=0)


@pytest.mark.parametrize("name", ("torchscript-fbgemm", "torchscript-qnnpack"))
def test_a_prelu_stays_float_on_the_fx_flows(tmp_path, name):
    """A PReLU stays float in the FX flows, with the reason, and the artifact answers as the float
    model does. Made int8 there, an unseen U-Net-like model answered 6% top-1 against float's
    95%. Keeping it float also needs care: torch's lowering swaps any nn.PReLU it finds between
    int8 layers for the int8 module, whatever its qconfig says."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.PReLU(8),
                          nn.Conv2d(8, 4, 1)).eval()
    target = get_target(name)
    required = required_float_layers(model, target.flow)
    assert list(required) == ["2"] and "quantized::prelu" in required["2"], required
    assert not required_float_layers(model, Flow.PT2E_XNNPACK)
    inputs = torch.randn(64, 1, 8, 8)
    made = edgeship_export(name, model, inputs.numpy(), tmp_path)
    assert error_share(made.path, target.engine, model, inputs[:8]) < 0.05


@pytest.mark.parametrize("name", ("torchscript-fbgemm", "torchscript-qnnpack"))
def test_a_circularly_padded_conv_stays_float_on_the_fx_flows(tmp_path, name):
    """torch.ao's quantized convolution refuses circular padding at conversion (in torch's own
    flow too); a reflection-padded one is int8."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, padding_mode="circular"), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect"), nn.ReLU()).eval()
    inputs = torch.randn(64, 1, 8, 8)
    with pytest.raises(ValueError, match="'padding_mode' circular is not supported"):
        convert_fx(prepare_fx(model, get_default_qconfig_mapping("fbgemm"), (inputs[:1],)))
    target = get_target(name)
    assert list(required_float_layers(model, target.flow)) == ["0"]
    made = edgeship_export(name, model, inputs.numpy(), tmp_path)
    assert 0.8 < made.details["int8_share"]["macs_fraction"] < 1.0  # the reflection-padded conv
    assert error_share(made.path, target.engine, model, inputs[:8]) < 0.05


@pytest.mark.parametrize("name", ("torchscript-fbgemm", "torchscript-qnnpack", "onnx-int8"))
def test_a_static_lstm_is_dynamic_int8_inside_the_static_model(tmp_path, name):
    """No static int8 LSTM in torch.ao or ONNX Runtime's static quantizer: the LSTM is quantized
    dynamically inside the otherwise static model (aten::quantized_lstm, DynamicQuantizeLSTM)."""
    share = _lstm_share(name, tmp_path)
    assert share.macs_fraction > 0.95, share


class CellLoop(nn.Module):
    """A recurrent cell stepped over the rows by hand, as sequence code often writes it."""

    def __init__(self, cell: type[nn.Module]) -> None:
        super().__init__()
        self.cell = cell(10, 24)
        self.head = nn.Linear(24, 3)

    def forward(self, x):
        h = c = x.new_zeros(x.shape[0], 24)
        for t in range(6):
            h = self.cell(x[:, t], (h, c))[0] if isinstance(self.cell, nn.LSTMCell) else self.cell(x[:, t], h)
        return self.head(h)


@pytest.mark.parametrize("cell", [nn.GRUCell, nn.LSTMCell, nn.RNNCell])
def test_a_recurrent_cell_is_dynamic_int8_inside_the_static_model(tmp_path, cell):
    """torch.ao has dynamic int8 cells (quantized::quantized_gru_cell_dynamic, ...), no static
    ones: they were left float with no reason given; now dynamic inside the static model."""
    torch.manual_seed(0)
    model, inputs = CellLoop(cell).eval(), torch.randn(64, 6, 10)
    assert "quantized_" in layers_of(DYNAMIC_IN_STATIC, model, Flow.FX_FBGEMM)["cell"]
    made = edgeship_export("torchscript-fbgemm", model, inputs.numpy(), tmp_path)
    share = made.details["int8_share"]
    assert share["macs_fraction"] > 0.9, share
    assert error_share(made.path, "fbgemm", model, inputs[:8]) < 0.05


def test_a_dynamic_torchscript_lstm_runs_int8(tmp_path):
    model = LstmClassifier().eval()
    examples = (torch.randn(1, 12, 10),)
    target = get_target("torchscript-fbgemm")
    spec = spec_for(target.format)
    with spec.running(target):
        dynamic = spec.quantize_dynamic(target, model, examples)
        made = export_atomically(dynamic.export, dynamic.module, examples, target, tmp_path)
    share = made.details["int8_share"]
    assert share["macs_fraction"] == 1.0 and share["compute_ops"] == 2, share


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.encoder(x).mean(1))


def test_a_dynamic_torchscript_transformer_exports_and_says_what_stays_float(tmp_path):
    """PyTorch's attention fast path breaks after quantize_dynamic; runs take the Python path,
    where every Linear is int8, attention's projections included (quantize/attention.py), and
    attention's two matrix products float."""
    model, examples = Encoder().eval(), (torch.randn(1, 6, 16),)
    target = get_target("torchscript-fbgemm")
    spec = spec_for(target.format)
    with attention_slow_path(), spec.running(target):
        dynamic = spec.quantize_dynamic(target, model, examples)
        share = export_atomically(dynamic.export, dynamic.module, examples, target, tmp_path).details["int8_share"]
    fp32 = export_atomically(spec.export, model, examples, get_target("torchscript-fp32"), tmp_path / "fp32")
    assert share["macs"] == fp32.details["int8_share"]["macs"]  # attention's matmuls counted too
    assert share["macs_fraction"] > 0.7 and share["weights_fraction"] > 0.95, share
    assert {op["op"] for op in share["float_ops"]} == {"aten::bmm"}, share


def test_fx_qat_of_a_transformer_encoder_converts_and_exports(tmp_path):
    """FX observes torch.nn's TransformerEncoder as one leaf; with a QAT qconfig its convert
    failed ('FusedMovingAvgObsFakeQuantize' object has no attribute 'activation_post_process').
    The leaf has no qconfig in FX; after conversion its feed-forward Linears are dynamically
    quantized (mixed), attention stays float, the rest is static int8, and the artifact answers
    as the converted model does."""
    torch.manual_seed(0)
    model, examples = Encoder(), (torch.randn(1, 6, 16),)
    flow = flow_for(Flow.FX_FBGEMM)
    data = TensorDataset(torch.randn(32, 6, 16), torch.zeros(32, dtype=torch.int64))
    with attention_slow_path():
        prepared = calibrate(flow, model, examples, data, batches=2, batch_size=16, qat=True)
        with flow.engine():
            converted = flow.convert(prepared)
            made = export_atomically(spec_for(Format.TORCHSCRIPT).export, converted, examples,
                                     get_target("torchscript-fbgemm"), tmp_path)
    share = made.details["int8_share"]
    assert share["macs_fraction"] > 0.7 and share["weights_fraction"] > 0.95, share
    assert not any(op["name"].endswith(("linear1", "linear2", "linear_Q", "out_proj")) for op in share["float_ops"]), share
    x = torch.randn(4, 6, 16)
    with attention_slow_path(), flow.engine(), torch.no_grad():
        torch.testing.assert_close(torch.jit.load(str(made.path))(x), converted(x))


def test_fx_says_a_transformer_encoder_is_dynamic_inside_static():
    dynamic = layers_of(DYNAMIC_IN_STATIC, Encoder(), Flow.FX_FBGEMM)
    assert list(dynamic) == ["encoder"] and "projections" in dynamic["encoder"]  # its layers are inside it
    assert not layers_of(LEFT_FLOAT, Encoder(), Flow.FX_QNNPACK)


@pytest.fixture
def report() -> Report:
    return Report.model_validate(json.loads(STORED.read_text()))


def _mostly_float(report: Report, target: str) -> Report:
    report.artifact(target).int8_share = Int8Share(
        macs_fraction=0.12, weights_fraction=0.2, macs=1000, weights=100, compute_ops=3, float_compute_ops=1,
        float_ops=[{"name": "lstm", "op": "LSTM", "macs_fraction": 0.88, "why": "the flow has no int8 LSTM"}])
    return report


def test_a_mostly_float_int8_artifact_is_never_shown_as_int8(report):
    _mostly_float(report, "onnx-int8")
    row = next(r for r in rows(report) if r[0] == "onnx-int8")
    assert row[1:3] == ["mostly fp32", "12%"]
    (line,) = mostly_float(report)
    assert line == ("onnx-int8 runs only 12% of its multiply-accumulates with int8 kernels; "
                    "float: lstm LSTM 88% (the flow has no int8 LSTM)")
    assert line in markdown(report)


def test_a_reason_shared_by_float_ops_is_said_once(report):
    why = "FX graph mode cannot trace its forward (models.py:12 `h = torch.zeros(x.size(0), 8)`)"
    report.artifact("onnx-int8").int8_share = Int8Share(
        macs_fraction=0.05, macs=1000, compute_ops=4, float_compute_ops=3, float_ops=[
            {"name": "blocks.0.attn", "op": "aten.linear", "macs_fraction": 0.5, "why": why},
            {"name": "blocks.0.mlp", "op": "aten.linear", "macs_fraction": 0.3, "why": why},
            {"name": "head", "op": "aten.linear", "macs_fraction": 0.15, "why": None}])
    (line,) = mostly_float(report)
    assert line.endswith(f"float: blocks.0.attn aten.linear 50%, blocks.0.mlp aten.linear 30% ({why}); "
                         f"head aten.linear 15%"), line


def test_min_int8_fraction_gates_the_share_of_macs(report):
    _mostly_float(report, "onnx-int8")
    for a in report.artifacts:
        if a.target != "onnx-int8":
            a.int8_share = Int8Share(macs_fraction=1.0 if a.precision == "int8" else 0.0, macs=1000)
    gate = evaluate([Budget(min_int8_fraction=0.9)], report)  # int8 targets only, by default
    (v,) = gate.violations
    assert (v.target, v.limit_name, v.measured) == ("onnx-int8", "min_int8_fraction", 0.12)
    assert v.message == "onnx-int8: int8 share of MACs 0.120 < min_int8_fraction 0.9"


def test_min_int8_fraction_fails_where_the_share_was_not_read(report):
    report.artifact("onnx-int8").int8_share = Int8Share(error="KeyError: 'x'")
    gate = evaluate([Budget(targets=["onnx-int8"], min_int8_fraction=0.5)], report)
    (v,) = gate.violations
    assert v.measured is None and "not measured" in v.message
    assert mostly_float(report) == ["onnx-int8: its int8 share could not be read from the artifact: KeyError: 'x'"]
