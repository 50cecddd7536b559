"""Embedding tables on the TorchScript targets: torch.ao quantizes them weight-only, each row 8-bit
with its own float scale and offset (quantized::embedding_byte on fbgemm and QNNPACK), statically,
in QAT and dynamically; a table with max_norm stays float and says why; the XNNPACK flow leaves its
tables float and says so. A language model's table is most of its weights: kept float, the
TorchScript artifact was 0.78x its fp32 twin where ONNX Runtime's (which quantizes Gather) was 0.32x."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgeship.quantize.dynamic import torch_ao_dynamic
from edgeship.quantize.flow import QuantSettings
from edgeship.quantize.float_layers import LEFT_FLOAT, layers_of, required_float_layers
from edgeship.quantize.flows import flow_for
from edgeship.targets import Flow
from peers import answers, edgeship_artifact

WORDS, LENGTH = 2000, 12


class BagOfWords(nn.Module):
    """A table that is most of the model's weights, as in a small language model."""

    def __init__(self, **table) -> None:
        super().__init__()
        self.embed = nn.Embedding(WORDS, 32, padding_idx=0, **table)
        self.head = nn.Linear(32, 5)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(tokens).mean(1))


def _tokens(count: int, seed: int) -> torch.Tensor:
    tokens = torch.randint(1, WORDS, (count, LENGTH), generator=torch.Generator().manual_seed(seed))
    tokens[:, -3:] = 0  # padding
    return tokens


def _relative_error(answered: np.ndarray, model: nn.Module, tokens: torch.Tensor) -> float:
    with torch.no_grad():
        expected = model(tokens).numpy()
    return float(np.linalg.norm(answered - expected) / np.linalg.norm(expected))


class Lookup(nn.Module):
    """The table alone: its artifact answers the rows it holds."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(WORDS, 32, padding_idx=0)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.embed(tokens)


@pytest.mark.parametrize("engine", ["fbgemm", "qnnpack"])
def test_a_table_is_8bit_rows_in_the_torchscript_artifact(tmp_path, engine):
    torch.manual_seed(0)
    tokens, calibration = _tokens(64, 1), _tokens(256, 0).numpy()
    for model in (BagOfWords().eval(), Lookup().eval()):
        int8 = edgeship_artifact(f"torchscript-{engine}", model, calibration, tmp_path / type(model).__name__)
        fp32 = edgeship_artifact("torchscript-fp32", model, calibration, tmp_path / type(model).__name__)
        # 2000 x 32 floats become 2000 x 32 bytes and a float scale and offset per row
        assert int8.stat().st_size < 0.4 * fp32.stat().st_size, (int8.stat().st_size, fp32.stat().st_size)
        error = _relative_error(answers(int8, engine, tokens.numpy()), model, tokens)
        # the rows alone to 8 bits; the classifier's int8 activations (7-bit on fbgemm) on top
        assert error < (0.01 if isinstance(model, Lookup) else 0.1), (type(model).__name__, error)


@pytest.mark.parametrize("flow", [Flow.FX_FBGEMM, Flow.FX_QNNPACK], ids=lambda f: f.value)
def test_qat_trains_the_table_through_its_fake_quantization(flow):
    from torch.ao.nn.quantized import Embedding

    torch.manual_seed(0)
    model, tokens = BagOfWords().eval(), _tokens(64, 1)
    qf = flow_for(flow, QuantSettings())
    prepared = qf.prepare(model, (tokens[:2],), qat=True)
    loss = prepared(tokens).logsumexp(1).mean()
    loss.backward()
    table = next(p for name, p in prepared.named_parameters() if "embed" in name)
    assert table.grad is not None and table.grad.abs().sum() > 0
    qf.set_eval(prepared)
    with qf.engine(), torch.no_grad():
        converted = qf.convert(prepared)
        assert isinstance(converted.embed, Embedding), converted
        assert _relative_error(converted(tokens).numpy(), model, tokens) < 0.1


@pytest.mark.parametrize("engine", ["fbgemm", "qnnpack"])
def test_dynamic_quantization_takes_the_table_too(engine):
    from torch.ao.nn.quantized import Embedding

    torch.manual_seed(0)
    model, tokens = BagOfWords().eval(), _tokens(64, 1)
    quantized = torch_ao_dynamic(model, engine)
    assert isinstance(quantized.embed, Embedding), quantized
    with torch.no_grad():
        # dynamic: 8-bit rows and int8 Linear weights, activations quantized from their own range
        assert _relative_error(quantized(tokens).numpy(), model, tokens) < 0.03


def test_a_table_with_max_norm_stays_float_and_says_why():
    """torch.ao's int8 table looks rows up without renormalizing them: float, on both engines."""
    model = BagOfWords(max_norm=1.0)
    for flow in (Flow.FX_FBGEMM, Flow.FX_QNNPACK):
        assert "max_norm" in required_float_layers(model, flow)["embed"]
    assert isinstance(torch_ao_dynamic(model, "fbgemm").embed, nn.Embedding)


def test_the_xnnpack_flow_says_its_tables_stay_float():
    why = layers_of(LEFT_FLOAT, BagOfWords(), Flow.PT2E_XNNPACK)
    assert list(why) == ["embed"] and "fp32" in why["embed"]
