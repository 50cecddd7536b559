"""QAT graphs of the XNNPACK flow that torchao and the XNNPACK quantizer leave unfit for
ExecuTorch, as edgeship mends them: batch norm's counter increment after a conv1d-bn (a buffer
every call would mutate), and a transposed convolution's weights quantized per input channel
(XNNPACK refused the layer and the export failed)."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

from edgeship.formats import export_atomically, spec_for
from edgeship.quantize.calibrate import calibrate
from edgeship.quantize.flows import flow_for
from edgeship.targets import get_target
from peers import answers


def _signal_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv1d(1, 8, 3, padding=1), nn.BatchNorm1d(8), nn.ReLU(),
                         nn.Conv1d(8, 8, 3, padding=1, groups=8), nn.BatchNorm1d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(8, 4))


def _increments(graph: torch.fx.GraphModule) -> list[str]:
    return [str(n.args[0]) for n in graph.graph.nodes if n.target is torch.ops.aten.add_.Tensor]


def _qat_pte(model: nn.Module, inputs: torch.Tensor, folder) -> tuple[nn.Module, torch.fx.GraphModule, np.ndarray, list]:
    """`model` through the XNNPACK flow with QAT's fake quantization, converted and exported: the
    prepared graph, the converted one, the .pte's answers on the first 8 inputs, and the export's
    warnings."""
    target = get_target("executorch-xnnpack")
    flow, examples = flow_for(target.flow), (inputs[:1],)
    data = TensorDataset(inputs, torch.zeros(len(inputs), dtype=torch.int64))
    prepared = calibrate(flow, model, examples, data, batches=2, batch_size=32, qat=True)
    with flow.engine():
        converted = flow.convert(prepared)
    with warnings.catch_warnings(record=True) as seen, flow.engine():
        warnings.simplefilter("always")
        made = export_atomically(spec_for(target.format).export, converted, examples, target, folder)
    return prepared, converted, answers(made.path, None, inputs[:8].numpy()), seen


def test_a_qat_conv1d_bn_ships_without_its_batch_counter(tmp_path):
    inputs = torch.randn(64, 1, 16)
    prepared, converted, pte, seen = _qat_pte(_signal_net(), inputs, tmp_path / "pte")
    assert _increments(convert_pt2e(copy.deepcopy(prepared)))  # what torchao's convert leaves
    assert _increments(converted) == []
    assert not [w for w in seen if "Mutation on a buffer" in str(w.message)]
    with torch.no_grad():
        np.testing.assert_allclose(pte, converted(inputs[:8]).numpy(), atol=0.05)


def test_a_qat_transposed_convolution_is_quantized_per_output_channel(tmp_path):
    torch.manual_seed(0)
    upsampler = nn.Sequential(nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.ReLU(),
                              nn.ConvTranspose2d(8, 4, 2, stride=2), nn.BatchNorm2d(4), nn.ReLU(),
                              nn.Conv2d(4, 1, 3, padding=1))
    inputs = torch.randn(64, 1, 8, 8)
    _, converted, pte, _ = _qat_pte(upsampler, inputs, tmp_path / "pte")
    axes = {n.args[0].name: n.args[3] for n in converted.graph.nodes
            if n.target is torch.ops.quantized_decomposed.dequantize_per_channel.default}
    # each weight on its output channels: axis 0 of the two convolutions', axis 1 of the transposed one's
    assert sorted(axes.values()) == [0, 0, 1], axes
    with torch.no_grad():
        expected = converted(inputs[:8]).numpy()
    np.testing.assert_allclose(pte, expected, atol=0.02 * np.abs(expected).max())


def test_a_qat_graph_ships_without_the_batch_norm_statistics_its_fold_left_unread(tmp_path):
    """After the conv-bn fold nothing reads batch norm's running statistics, but they stayed on
    the converted module and torch.export lifted them into the .pte (a ShuffleNet's QAT file was
    12% bigger than its post-training one)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                          nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)).eval()
    inputs = torch.randn(64, 1, 8, 8)
    prepared, converted, pte, _ = _qat_pte(model, inputs, tmp_path / "qat")
    left = [name for name, _ in convert_pt2e(copy.deepcopy(prepared)).named_buffers() if "running_" in name]
    assert left  # what torchao's convert leaves
    assert not [name for name, _ in converted.named_buffers() if "running_" in name]
    with torch.no_grad():
        np.testing.assert_allclose(pte, converted(inputs[:8]).numpy(), atol=0.05)
    # the same size as the post-training artifact, whose graph never had them
    target, examples = get_target("executorch-xnnpack"), (inputs[:1],)
    flow = flow_for(target.flow)
    ptq = calibrate(flow, model, examples, TensorDataset(inputs, torch.zeros(64, dtype=torch.int64)),
                    batches=2, batch_size=32, qat=False)
    with flow.engine():
        made = export_atomically(spec_for(target.format).export, flow.convert(ptq), examples, target, tmp_path / "ptq")
    qat_size = sum(f.stat().st_size for f in (tmp_path / "qat").rglob("*.pte"))
    assert qat_size <= made.path.stat().st_size * 1.01, (qat_size, made.path.stat().st_size)
