"""Adaptive max pooling on ExecuTorch: not Core ATen, so ExecuTorch's own flow refuses it; edgeship
computes it as the max pool it equals where the sizes divide, and as exact Core ATen ops where a
functional call or sizes that do not divide leave it in the program (quantize/max_pool.py); the
artifacts answer as the model does in ExecuTorch's runtime."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from torch.nn import functional as F

from edgeship.quantize.max_pool import adaptive_max_pools_as_max_pools, adaptive_max_pools_decomposed
from peers import edgeship_export, error_share


class _GlobalMaxPoolNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=2, dilation=2)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        return self.head(self.pool(torch.relu(self.conv(x))).flatten(1))


class _FunctionalMaxPoolNet(nn.Module):
    """A functional adaptive max pool whose output size (3) does not divide its input's (8)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.head = nn.Linear(8 * 9, 10)

    def forward(self, x):
        return self.head(F.adaptive_max_pool2d(torch.relu(self.conv(x)), 3).flatten(1))


def test_executorchs_own_flow_refuses_an_adaptive_max_pool():
    from executorch.exir import to_edge_transform_and_lower
    from torch._export.verifier import SpecViolationError

    program = torch.export.export(_GlobalMaxPoolNet().eval(), (torch.zeros(1, 1, 8, 8),))
    with pytest.raises(SpecViolationError, match="adaptive_max_pool2d"):
        to_edge_transform_and_lower(program)


@pytest.mark.parametrize("pool, shape", [
    (nn.AdaptiveMaxPool2d(1), (2, 3, 8, 8)), (nn.AdaptiveMaxPool2d((2, None)), (2, 3, 8, 6)),
    (nn.AdaptiveMaxPool2d(3), (2, 3, 8, 8)),  # 3 does not divide 8: computed as it was
    (nn.AdaptiveMaxPool1d(4), (2, 3, 8)),
])
def test_computed_as_a_max_pool_it_answers_the_same(pool, shape):
    model = nn.Sequential(pool)
    rewritten = adaptive_max_pools_as_max_pools(model)
    x = torch.randn(shape)
    assert torch.equal(rewritten(x), model(x))
    ops = {str(n.target) for n in torch.export.export(rewritten, (x,)).graph.nodes}
    assert any("adaptive_max_pool" in op for op in ops) is (pool.output_size == 3), ops


def test_a_model_without_one_is_itself():
    plain = nn.Sequential(nn.Conv2d(1, 2, 3), nn.AdaptiveAvgPool2d(1))
    assert adaptive_max_pools_as_max_pools(plain) is plain


@pytest.mark.parametrize("pool, shape", [
    (lambda x: F.adaptive_max_pool2d(x, 3, return_indices=True), (2, 3, 8, 8)),
    (lambda x: F.adaptive_max_pool2d(x, (3, 2), return_indices=True), (1, 2, 7, 5)),
    (lambda x: F.adaptive_max_pool2d(x, 2, return_indices=True), (1, 2, 8, 6)),
    (lambda x: F.adaptive_max_pool1d(x, 5, return_indices=True), (2, 3, 12)),
])
def test_decomposed_it_answers_the_same_values_and_indices(pool, shape):
    class Pool(nn.Module):
        def forward(self, x):
            return pool(x)

    x = torch.randn(shape)
    program = adaptive_max_pools_decomposed(torch.export.export(Pool(), (x,)))
    assert not any("adaptive_max_pool" in str(n.target) for n in program.graph.nodes)
    for got, expected in zip(program.module()(x), pool(x)):
        assert torch.equal(got, expected)


@pytest.mark.parametrize("target", ["executorch-fp32", "executorch-xnnpack"])
@pytest.mark.parametrize("net, int8_error", [(_GlobalMaxPoolNet, 0.05), (_FunctionalMaxPoolNet, 0.1)])
def test_an_adaptive_max_pool_ships_on_executorch(tmp_path, target, net, int8_error):
    """The module swapped for a max pool; a functional one of sizes that do not divide, decomposed.
    The int8 error is an untrained model's rounding."""
    torch.manual_seed(0)
    model = net().eval()
    calibration = np.random.default_rng(0).standard_normal((256, 1, 8, 8)).astype(np.float32)
    made = edgeship_export(target, model, calibration, tmp_path)
    assert made.details["int8_share"]["macs_fraction"] == (1.0 if target == "executorch-xnnpack" else 0.0)
    assert error_share(made.path, None, model, torch.from_numpy(calibration[:32])) < (
        int8_error if target == "executorch-xnnpack" else 1e-5)
