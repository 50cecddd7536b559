"""Batch norm right after a transposed convolution (in an nn.Sequential, as decoders and GAN
generators write it), folded into the convolution where a flow cannot take the pair:

- torch.ao FX QAT refuses to fuse them ("Fusing ConvTranspose+BatchNorm not yet supported in QAT");
- torch's `fuse_conv_bn_eval(transpose=True)`, which torchao's PT2E folding and ExecuTorch's
  lowering also apply, scales a grouped transposed convolution's weights along the wrong
  dimension ("The size of tensor a (2) must match the size of tensor b (8)"), so every PT2E flow
  and the ExecuTorch fp32 export failed on one.

The fold uses batch norm's running statistics, so the folded model answers as the eval-form model
does; in QAT those statistics then stay as trained (fine-tuning trains the folded weights)."""

from __future__ import annotations

import copy

import torch
from torch import nn

TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _pairs(model: nn.Module, grouped_only: bool) -> list[tuple[nn.Sequential, int]]:
    """(container, index of the transposed convolution) for each one a batch norm follows."""
    return [(seq, i) for seq in model.modules() if isinstance(seq, nn.Sequential)
            for i in range(len(seq) - 1)
            if isinstance(seq[i], TRANSPOSED) and isinstance(seq[i + 1], NORMS)
            and seq[i + 1].track_running_stats and (seq[i].groups > 1 or not grouped_only)]


@torch.no_grad()
def _fold(conv: nn.Module, bn: nn.Module) -> nn.Module:
    # A transposed convolution's weight is (in, out / groups, *kernel); output channel
    # g * (out / groups) + j is column j of group g's rows.
    scale = (bn.weight if bn.affine else torch.ones_like(bn.running_var)) / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
    weight, groups = conv.weight, conv.groups
    grouped = weight.reshape(groups, weight.shape[0] // groups, *weight.shape[1:])
    per_output = scale.reshape(groups, 1, -1, *[1] * (weight.dim() - 2))
    conv.weight.copy_((grouped * per_output).reshape(weight.shape))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.bias = nn.Parameter((bias - bn.running_mean) * scale + shift)
    return conv


def transposed_bn_folded(model: nn.Module, *, grouped_only: bool) -> nn.Module:
    """A copy of `model` with each such batch norm folded into its transposed convolution and
    replaced by nn.Identity (module names stay as they were); `model` itself when it has none.
    `grouped_only`: fold only after grouped transposed convolutions."""
    if not _pairs(model, grouped_only):
        return model
    model = copy.deepcopy(model)
    for seq, i in _pairs(model, grouped_only):
        seq[i] = _fold(seq[i], seq[i + 1])
        seq[i + 1] = nn.Identity()
    return model
