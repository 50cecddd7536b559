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


def reference_logits(module: nn.Module, arrays: Arrays, artifact_batch: int) -> np.ndarray:
    """`module`'s answers as its artifact's, which runs at `artifact_batch` (its export's batch):
    a module that quantizes activations dynamically takes their range from the whole batch, so at
    batch 256 it answers otherwise than at 1 (top-1 agreement 0.974 against its own artifact, seen
    on a TransformerEncoder's dynamic linears); at the artifact's batch, as the artifact does."""
    dynamic = any(type(m).__module__.startswith("torch.ao.nn.quantized.dynamic") for m in module.modules())
    return logits(module, arrays, artifact_batch if dynamic else 256)


def top1(scores: np.ndarray, labels: np.ndarray) -> float:
    return float((scores.argmax(axis=1) == labels).mean())
