"""Batch norm after a transposed convolution, folded where a flow cannot take the pair: torch.ao
FX QAT refuses to fuse them, and torch's fold (which torchao's PT2E and ExecuTorch's lowering
apply) gets a grouped transposed convolution's shapes wrong. Both found on models built to try
edgeship: a 1-D upsampling net (both TorchScript targets failed with QAT) and a decoder with a
grouped ConvTranspose2d (onnx-int8, executorch-xnnpack and executorch-fp32 all failed; on
onnx-int8 ONNX Runtime's own quantize_static fails on that layer too, so it stays float there)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torch.utils.data import TensorDataset

from edgeship.formats import export_atomically, spec_for
from edgeship.quantize.calibrate import calibrate
from edgeship.quantize.flows import flow_for
from edgeship.quantize.transposed_bn import transposed_bn_folded
from edgeship.targets import get_target
from peers import edgeship_export, error_share


def _trained_norm(norm: nn.Module) -> nn.Module:
    """Batch norm with statistics and an affine part that are not the identity."""
    norm.running_mean.uniform_(-1, 1), norm.running_var.uniform_(0.5, 2)
    norm.weight.data.uniform_(0.5, 2), norm.bias.data.uniform_(-1, 1)
    return norm


def _decoder(dims: int, groups: int) -> nn.Module:
    conv, transposed, norm = {1: (nn.Conv1d, nn.ConvTranspose1d, nn.BatchNorm1d),
                              2: (nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d)}[dims]
    torch.manual_seed(0)
    return nn.Sequential(conv(1, 8, 3, stride=2, padding=1), nn.ReLU(),
                         transposed(8, 8, 4, stride=2, padding=1, groups=groups), _trained_norm(norm(8)),
                         conv(8, 2, 1)).eval()


@pytest.mark.parametrize("dims,groups", [(1, 1), (2, 4), (1, 2)])
def test_the_fold_answers_as_the_pair_does(dims, groups):
    model = _decoder(dims, groups)
    x = torch.randn(4, 1, *[8] * dims)
    folded = transposed_bn_folded(model, grouped_only=False)
    assert isinstance(folded[3], nn.Identity) and isinstance(model[3], nn.BatchNorm1d | nn.BatchNorm2d)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), atol=1e-5, rtol=1e-5)
    assert (transposed_bn_folded(model, grouped_only=True) is model) == (groups == 1)


def test_torchs_own_fold_fails_on_a_grouped_transposed_convolution():
    """Why edgeship folds these itself, at the pinned torch."""
    model = _decoder(2, 4)
    with pytest.raises(RuntimeError, match="must match the size"):
        fuse_conv_bn_eval(model[2], model[3], transpose=True)


def _artifact(model: nn.Module, name: str, inputs: torch.Tensor, folder, qat: bool):
    if not qat:
        return edgeship_export(name, model, inputs.numpy(), folder)
    target = get_target(name)
    spec = spec_for(target.format)
    flow = flow_for(target.flow)
    data = TensorDataset(inputs, torch.zeros(len(inputs), dtype=torch.int64))
    prepared = calibrate(flow, model, (inputs[:1],), data, batches=2, batch_size=32, qat=qat)
    with flow.engine():
        converted = flow.convert(prepared)
    with spec.running(target):
        return export_atomically(spec.export, converted, (inputs[:1],), target, folder)


@pytest.mark.parametrize("name,dims,groups,qat", [
    ("executorch-xnnpack", 2, 4, False), ("executorch-fp32", 2, 4, False), ("onnx-int8", 2, 4, False),
    ("torchscript-fbgemm", 1, 1, True), ("torchscript-qnnpack", 1, 1, True)])
def test_a_transposed_convolution_with_batch_norm_ships(tmp_path, name, dims, groups, qat):
    model, inputs = _decoder(dims, groups), torch.rand(64, 1, *[8] * dims)
    made = _artifact(model, name, inputs, tmp_path, qat)
    assert error_share(made.path, get_target(name).engine, model, inputs[:8]) < 0.05


def test_onnx_runtime_keeps_only_a_grouped_transposed_convolution_float():
    from edgeship.quantize.float_layers import required_float_layers
    from edgeship.targets import Flow

    required = required_float_layers(_decoder(2, 4), Flow.ORT_QDQ)
    assert list(required) == ["2"] and "quantize_static" in required["2"], required
    assert not required_float_layers(_decoder(2, 1), Flow.ORT_QDQ)
    assert not required_float_layers(_decoder(2, 4), Flow.PT2E_XNNPACK)
