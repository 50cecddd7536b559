"""What torchao's convert_pt2e leaves in a QAT graph, and what edgeship removes: batch norm's
counter increment after a conv1d-bn, which ExecuTorch would keep as a buffer every call mutates."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

from edgeship.benchmarks.runner import load
from edgeship.formats import export_atomically, spec_for
from edgeship.quantize.calibrate import calibrate
from edgeship.quantize.flows import flow_for
from edgeship.targets import get_target


def _signal_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv1d(1, 8, 3, padding=1), nn.BatchNorm1d(8), nn.ReLU(),
                         nn.Conv1d(8, 8, 3, padding=1, groups=8), nn.BatchNorm1d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(8, 4))


def _increments(graph: torch.fx.GraphModule) -> list[str]:
    return [str(n.args[0]) for n in graph.graph.nodes if n.target is torch.ops.aten.add_.Tensor]


def test_a_qat_conv1d_bn_ships_without_its_batch_counter(tmp_path):
    inputs = torch.randn(64, 1, 16)
    data = TensorDataset(inputs, torch.randint(0, 4, (64,)))
    target = get_target("executorch-xnnpack")
    flow, examples = flow_for(target.flow), (inputs[:1],)
    prepared = calibrate(flow, _signal_net(), examples, data, batches=2, batch_size=32, qat=True)
    with flow.engine():
        assert _increments(convert_pt2e(copy.deepcopy(prepared)))  # what torchao's convert leaves
        converted = flow.convert(prepared)
    assert _increments(converted) == []
    with warnings.catch_warnings(record=True) as seen, flow.engine():
        warnings.simplefilter("always")
        made = export_atomically(spec_for(target.format).export, converted, examples, target, tmp_path / "pte")
    assert not [w for w in seen if "Mutation on a buffer" in str(w.message)]
    runtime = load(str(made.path), None, 1)
    x = inputs[:8].numpy()
    answers = np.concatenate([runtime(runtime.to_native([x[i:i + 1]]))[0] for i in range(len(x))])
    with torch.no_grad():
        expected = converted(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(answers, expected, atol=0.05)
