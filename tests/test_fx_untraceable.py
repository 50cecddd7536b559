"""Forwards FX cannot trace (a tensor's size used as a Python number): a submodule stays float on
the TorchScript targets, as torch.ao's non-traceable modules do, and the report says which and why;
the model's own forward is a failed target whose line names the code and the way out."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import edgeship
from edgeship.quantize.flow import QuantSettings
from edgeship.quantize.flows import flow_for
from edgeship.quantize.fx_untraceable import Untraceable, untraceable_layers
from edgeship.recipe import parse_recipe
from edgeship.report.load import load_report
from edgeship.targets import Flow
from support import demo_recipe, run_cli, write_recipe

MODELS = '''
import torch
from torch import nn


class RowCells(nn.Module):
    """A GRU cell stepped over the image's rows, its state sized by the batch."""

    def __init__(self):
        super().__init__()
        self.cell = nn.GRUCell(8, 32)

    def forward(self, x):
        h = torch.zeros(x.size(0), 32)
        for t in range(x.size(1)):
            h = self.cell(x[:, t], h)
        return h


class Rows(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(8, 8)
        self.rnn = RowCells()
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        return self.head(self.rnn(torch.relu(self.embed(x.flatten(1, 2)))))


class RowsInline(Rows):
    def forward(self, x):
        x = torch.relu(self.embed(x.flatten(1, 2)))
        h = torch.zeros(x.size(0), 32)
        for t in range(x.size(1)):
            h = self.rnn.cell(x[:, t], h)
        return self.head(h)


def rows():
    return Rows()


def rows_inline():
    return RowsInline()
'''


@pytest.fixture()
def models(tmp_path, monkeypatch):
    (tmp_path / "models.py").write_text(MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    import models as module
    return importlib.reload(module)


@pytest.mark.parametrize("flow", [Flow.FX_FBGEMM, Flow.FX_QNNPACK])
@pytest.mark.parametrize("qat", [False, True])
def test_an_untraceable_submodule_stays_float(models, flow, qat):
    torch.manual_seed(0)
    model, x = models.rows().eval(), torch.randn(32, 1, 8, 8)
    qf = flow_for(flow, QuantSettings())
    prepared = qf.prepare(model, (x[:1],), qat=qat)
    assert list(qf.untraceable) == ["rnn"]
    assert "models.py:" in qf.untraceable["rnn"] and "torch.zeros(x.size(0), 32)" in qf.untraceable["rnn"]
    qf.set_eval(prepared)
    with torch.no_grad():
        prepared(x)
    with qf.engine():
        converted = qf.convert(prepared)
        with torch.no_grad():
            error = (converted(x) - model(x)).abs().max() / model(x).abs().max()
    assert type(converted.rnn.cell) is nn.GRUCell  # float, called from the quantized graph
    assert ".quantized." in type(converted.embed).__module__
    assert error < 0.1


class _PositionBias(nn.Module):
    """Adds a bias for each position, made for the sequence's length: FX cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return self.fc(x) + torch.zeros(x.size(1), 8)


class _Blocks(nn.Module):
    """The untraceable block inside a ModuleList: its name is nested ("blocks.0")."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 8)
        self.blocks = nn.ModuleList([_PositionBias()])
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        return self.head(self.blocks[0](torch.relu(self.embed(x))).mean(1))


def test_a_nested_untraceable_module_ships_without_fake_quantization():
    torch.manual_seed(0)
    model, x = _Blocks().eval(), torch.randn(32, 6, 8)
    qf = flow_for(Flow.FX_FBGEMM, QuantSettings())
    prepared = qf.prepare(model, (x[:1],), qat=True)
    assert list(qf.untraceable) == ["blocks.0"]
    qf.set_eval(prepared)
    with qf.engine():
        converted = qf.convert(prepared)
        scripted = torch.jit.freeze(torch.jit.trace(converted, (x[:1],)).eval())
    assert type(converted.get_submodule("blocks.0.fc")) is nn.Linear
    assert not [n for n in scripted.graph.nodes() if "fake_quant" in n.kind()]


def test_an_untraceable_forward_of_the_model_itself_names_its_line(models):
    with pytest.raises(Untraceable, match=r"cannot trace RowsInline.forward \(models.py:\d+ "
                                          r"`h = torch.zeros\(x.size\(0\), 32\)`.*Move that code into a submodule"):
        untraceable_layers(models.rows_inline())


def _recipe(tmp_path, factory: str) -> dict:
    data = demo_recipe(targets=["torchscript-fbgemm", "onnx-int8"], fp32_twins=False, budgets=[], devices=[])
    data["model"] = {"factory": f"models.py:{factory}", "example_inputs": [{"shape": [1, 1, 8, 8]}],
                     "train": {"epochs": 2, "lr": 0.01}}
    data["quantization"]["qat"]["enabled"] = False
    (tmp_path / "models.py").write_text(MODELS)
    return data


@pytest.mark.slow
def test_the_run_ships_it_and_says_why_the_submodule_is_float(tmp_path):
    report = edgeship.run(parse_recipe(_recipe(tmp_path, "rows"), "rows", tmp_path), tmp_path / "run", quiet=True)
    assert report.exit_code == 0, [a.error for a in report.artifacts]
    fbgemm = next(a for a in report.artifacts if a.target == "torchscript-fbgemm")
    why = fbgemm.details["quantization"]["float_layers_required"]["rnn"]
    assert "FX graph mode cannot trace" in why
    assert report.float.batch_norms == 0  # counted for the findings (int8_better)


@pytest.mark.slow
def test_the_model_itself_fails_the_torchscript_target_only(tmp_path):
    result = run_cli("run", str(write_recipe(tmp_path, _recipe(tmp_path, "rows_inline"))), out=tmp_path / "run")
    assert result.code == 3, result.stderr[-3000:]
    assert "exit code 3 (a target or device failed" in result.stdout
    report = load_report(tmp_path / "run" / "report.json")
    status = {a.target: a for a in report.artifacts}
    assert status["onnx-int8"].status == "ok"
    assert "FX graph mode cannot trace RowsInline.forward" in status["torchscript-fbgemm"].error
