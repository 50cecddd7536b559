"""A batch norm after a layer whose output something else reads too (a DenseNet's concatenation,
a pre-activation ResNet's identity): torchao's prepare_pt2e folds it into the layer anyway and
the other readers get batch-normed values; edgeship's PT2E capture writes it as a scale and a
shift (quantize/shared_conv_bn.py), and the XNNPACK artifact answers as the model does."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgeship.quantize.flow import QuantSettings
from edgeship.quantize.flows import flow_for
from edgeship.targets import Flow
from peers import edgeship_export, error_share


class _Shared(nn.Module):
    """The convolution's output is concatenated raw and read by the batch norm."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Linear(16 * 8 * 8, 10)

    def forward(self, x):
        y = self.conv(x)
        return self.head(torch.cat([y, torch.relu(self.bn(y))], 1).flatten(1))


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = _Shared().eval()
    with torch.no_grad():  # statistics far from the identity, as training leaves them
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.5, 2)
        model.bn.weight.uniform_(0.5, 2)
        model.bn.bias.uniform_(-1, 1)
    return model


def test_torchaos_own_prepare_breaks_the_other_readers():
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    model, x = _model(), torch.randn(4, 1, 8, 8)
    graph = torch.export.export(model, (x,)).module()
    prepared = prepare_pt2e(graph, XNNPACKQuantizer().set_global(get_symmetric_quantization_config()))
    assert (prepared(x) - model(x)).abs().max() > 0.1  # observers only: no rounding yet


@pytest.mark.parametrize("flow", [Flow.PT2E_XNNPACK, Flow.ORT_QDQ])
def test_the_captured_graph_is_the_model_before_and_after_prepare(flow):
    model, x = _model(), torch.randn(4, 1, 8, 8)
    qf = flow_for(flow, QuantSettings())
    captured = qf.capture(model, (x[:1],), qat=False)
    targets = {str(n.target) for n in captured.graph.nodes}
    assert not any("batch_norm" in t for t in targets) and "aten.mul.Tensor" in targets, targets
    prepared = qf.prepare_captured(captured, (x[:1],), qat=False)
    assert torch.allclose(prepared(x), model(x), atol=1e-5)


def test_qat_captures_keep_the_batch_norm():
    captured = flow_for(Flow.PT2E_XNNPACK, QuantSettings()).capture(_model(), (torch.randn(1, 1, 8, 8),), qat=True)
    assert any("batch_norm" in str(n.target) for n in captured.graph.nodes)


def test_the_xnnpack_artifact_answers_as_the_model_does(tmp_path):
    model = _model()
    calibration = np.random.default_rng(0).standard_normal((256, 1, 8, 8)).astype(np.float32)
    made = edgeship_export("executorch-xnnpack", model, calibration, tmp_path)
    assert made.details["int8_share"]["macs_fraction"] == 1.0
    assert error_share(made.path, None, model, torch.from_numpy(calibration[:32])) < 0.05
