"""Evaluation in PyTorch: the float baseline and the converted reference each artifact is
compared with. Artifact accuracy itself is measured by its own runtime (see verify.py)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from edgeship.data import Arrays


def scored(out):
    """What metrics, losses and parity read of a model's outputs: the tensor itself, or the first
    item of a tuple or list (a model may return more, such as an auxiliary head's output, which
    is exported but never scored or trained on)."""
    return out[0] if isinstance(out, (tuple, list)) and out else out


def logits(module: nn.Module, arrays: Arrays, batch_size: int = 256) -> np.ndarray:
    inputs = arrays.tensors()
    outputs = []
    with torch.no_grad():
        for start in range(0, len(arrays), batch_size):
            out = module(*(x[start:start + batch_size] for x in inputs))
            outputs.append(scored(out).float().numpy())
    return np.concatenate(outputs)


def top1(scores: np.ndarray, labels: np.ndarray) -> float:
    return float((scores.argmax(axis=1) == labels).mean())
