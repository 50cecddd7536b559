"""torch.ao's quantized kernels that read a channels-last input (what a quantized conv returns)
as NCHW: the FX flows give them a contiguous copy (quantize/fx.py), so the converted model, and
the TorchScript artifact traced from it, answer the same at any batch size."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.ao.nn import quantized as nnq
from torch.utils.data import TensorDataset

from edgeship.engines import quantized_engine
from edgeship.quantize.calibrate import calibrate
from edgeship.quantize.flow import QuantSettings
from edgeship.quantize.flows import flow_for
from edgeship.targets import Flow


@pytest.mark.parametrize("engine", ["fbgemm", "qnnpack"])
def test_torchs_quantized_instance_norm_misreads_a_channels_last_batch(engine):
    """Why: when this fails, torch has fixed the kernel and the copy can go."""
    torch.manual_seed(0)
    norm = nn.InstanceNorm2d(8, affine=True)
    quantized = nnq.InstanceNorm2d(8, norm.weight, norm.bias, scale=16 / 255, zero_point=128)
    x = torch.quantize_per_tensor(torch.randn(64, 8, 4, 4) * 2 + 1, 16 / 255, 128, torch.quint8)
    with quantized_engine(engine):
        nchw = quantized(x).dequantize()
        channels_last = quantized(x.contiguous(memory_format=torch.channels_last)).dequantize()
    assert (nchw - norm(x.dequantize())).abs().max() < 0.05
    assert (channels_last - nchw).abs().max() > 1.0


@pytest.mark.parametrize("flow", [Flow.FX_FBGEMM, Flow.FX_QNNPACK])
@pytest.mark.parametrize("norm", [lambda c: nn.InstanceNorm2d(c, affine=True), lambda c: nn.GroupNorm(4, c)])
def test_a_converted_normed_net_answers_a_batch_as_it_answers_each_sample(flow, norm):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), norm(16), nn.ReLU(),
                          nn.Conv2d(16, 16, 3, padding=1), norm(16), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()
    x = torch.randn(256, 1, 8, 8)
    qf = flow_for(flow, QuantSettings())
    prepared = calibrate(qf, model, (x[:1],), TensorDataset(x, torch.zeros(256, dtype=torch.int64)),
                         batches=2, batch_size=64, qat=False)
    with qf.engine(), torch.no_grad():
        converted = qf.convert(prepared)
        batch = converted(x)
        alone = torch.cat([converted(x[i:i + 1]) for i in range(len(x))])
        expected = model(x)
    assert (batch - alone).abs().max() < 1e-4
    assert (batch - expected).abs().max() < 0.1 * expected.abs().max()
