"""Evaluation in PyTorch: the float baseline and the converted reference each artifact is
compared with. Artifact accuracy itself is measured by its own runtime (see verify.py)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from edgeship.data import Arrays


def logits(module: nn.Module, arrays: Arrays, batch_size: int = 256) -> np.ndarray:
    inputs = arrays.tensors()
    outputs = []
    with torch.no_grad():
        for start in range(0, len(arrays), batch_size):
            out = module(*(x[start:start + batch_size] for x in inputs))
            outputs.append((out[0] if isinstance(out, (tuple, list)) else out).float().numpy())
    return np.concatenate(outputs)


def top1(scores: np.ndarray, labels: np.ndarray) -> float:
    return float((scores.argmax(axis=1) == labels).mean())
