"""The data contract between a user's data factory and the pipeline."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from edgeship.errors import UserError

SPLITS = ("train", "calibration", "test")


@dataclass(frozen=True)
class Splits:
    """Disjoint datasets. Each item is (inputs, label); inputs is a tensor or a tuple of tensors
    without the batch dimension. `validation`, when given, is what QAT is scored on (else the
    calibration split): never trained on, and not the test split the artifacts are judged by."""

    train: Dataset
    calibration: Dataset
    test: Dataset
    validation: Dataset | None = None

    @classmethod
    def coerce(cls, value: object, factory: str) -> Splits:
        if isinstance(value, Splits):
            return value
        if isinstance(value, Mapping) and all(k in value for k in SPLITS):
            return cls(**{k: value[k] for k in SPLITS}, validation=value.get("validation"))
        raise UserError(f"data.factory {factory!r} returned {type(value).__name__}; expected "
                        f"edgeship.data.Splits or a mapping with keys {', '.join(SPLITS)} "
                        f"(and optionally validation)")

    def present(self) -> dict[str, Dataset]:
        """The splits the factory gave, by name."""
        named = {name: getattr(self, name) for name in SPLITS}
        return named | ({"validation": self.validation} if self.validation is not None else {})


def as_inputs(item_inputs: torch.Tensor | tuple) -> tuple[torch.Tensor, ...]:
    return item_inputs if isinstance(item_inputs, tuple) else (item_inputs,)


@dataclass(frozen=True)
class Arrays:
    """A whole split stacked into arrays: what runners on devices are fed."""

    inputs: tuple[np.ndarray, ...]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return tuple(torch.from_numpy(a) for a in self.inputs)

    def npz_dict(self) -> dict[str, np.ndarray]:
        return {f"input_{i}": a for i, a in enumerate(self.inputs)}


def stack(dataset: Dataset) -> Arrays:
    items = [dataset[i] for i in range(len(dataset))]
    n_inputs = len(as_inputs(items[0][0]))
    inputs = tuple(np.stack([as_inputs(x)[k].numpy() for x, _ in items]) for k in range(n_inputs))
    labels = np.asarray([int(y) for _, y in items], dtype=np.int64)
    return Arrays(inputs, labels)


def sample_digests(dataset: Dataset) -> set[str]:
    """A content hash per sample (inputs and label): two splits sharing a sample share a digest."""
    digests = set()
    for i in range(len(dataset)):
        inputs, label = dataset[i]
        h = hashlib.sha256()
        for x in as_inputs(inputs):
            h.update(np.ascontiguousarray(x.numpy()).tobytes())
        h.update(str(int(label)).encode())
        digests.add(h.hexdigest())
    return digests
