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


def as_inputs(item_inputs: torch.Tensor | tuple | list) -> tuple[torch.Tensor, ...]:
    """A sample's or a batch's inputs as a tuple: a DataLoader's default collate turns a sample's
    (img, vec) tuple into a list [imgs, vecs], so lists count as several inputs too."""
    return tuple(item_inputs) if isinstance(item_inputs, (tuple, list)) else (item_inputs,)


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


def stack(dataset: Dataset, split: str = "data", like: Arrays | None = None,
          labels: str = "classes") -> Arrays:
    """The split `split` stacked, checked sample by sample: UserError naming the split, the
    sample's index and what is wrong when a sample is not (inputs, label), its inputs differ in
    shape or dtype from sample 0's (or from `like`'s samples: the test split's), an input holds
    NaN or Inf, or its label is not what the metric reads (`labels`, edgeship.metrics.LABEL_KINDS:
    an integer >= 0, integers >= 0 of one shape, or finite numbers of one shape)."""
    if len(dataset) == 0:
        raise UserError(f"data split {split!r} is empty")
    samples = [read_sample(dataset, i, split, labels) for i in range(len(dataset))]
    expected = (_signature_of_arrays(like), "the test split's samples are") if like is not None \
        else (_signature(samples[0][0]), "sample 0 is")
    for i, (inputs, _) in enumerate(samples):
        if _signature(inputs) != expected[0]:
            raise UserError(f"data split {split!r}, sample {i}: inputs {_describe(_signature(inputs))}, "
                            f"but {expected[1]} {_describe(expected[0])}; every sample must have "
                            f"the same number of inputs, shapes and dtypes")
    inputs = tuple(np.stack([x[k] for x, _ in samples]) for k in range(len(expected[0])))
    for k, array in enumerate(inputs):
        check_finite(array, split, k)
    return Arrays(inputs, _stacked_labels([y for _, y in samples], split, labels, like))


def _stacked_labels(labels: list, split: str, kind: str, like: Arrays | None) -> np.ndarray:
    if kind == "classes":
        return np.asarray(labels, dtype=np.int64)
    shape = like.labels.shape[1:] if like is not None else np.shape(labels[0])
    for i, y in enumerate(labels):
        if np.shape(y) != shape:
            raise UserError(f"data split {split!r}, sample {i}: label of shape {list(np.shape(y))}, but "
                            f"{'the test split' if like is not None else 'sample 0'} has {list(shape)}; "
                            f"every label must have the same shape")
    return np.stack(labels)


def read_sample(dataset: Dataset, index: int, split: str,
                labels: str = "classes") -> tuple[tuple[np.ndarray, ...], int | np.ndarray]:
    """Sample `index` of `split` as (input arrays, label), or UserError saying what it is instead."""
    where = f"data split {split!r}, sample {index}"
    try:
        item = dataset[index]
    except Exception as e:  # noqa: BLE001 - the user's dataset failed
        raise UserError(f"{where}: reading it raised {type(e).__name__}: "
                        f"{(str(e).splitlines() or [''])[0]}") from None
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        several = isinstance(item, (tuple, list)) and len(item) > 2  # inputs beside the label
        hint = (f": a model of {len(item) - 1} inputs takes (("
                + ", ".join(f"input_{k}" for k in range(len(item) - 1)) + "), label)") if several else ""
        raise UserError(f"{where}: is {_kind(item)}; a sample must be (inputs, label), inputs a "
                        f"tensor or a tuple of tensors{hint}")
    arrays = []
    for k, x in enumerate(as_inputs(item[0])):
        if not isinstance(x, torch.Tensor):
            raise UserError(f"{where}: input {k} is {_kind(x)}; inputs must be torch tensors")
        arrays.append(x.detach().cpu().numpy())
    reader = {"classes": _label, "tokens": _tokens, "values": _values}[labels]
    return tuple(arrays), reader(item[1], where)


def _label_array(value: object) -> np.ndarray:
    return np.asarray(value.detach().cpu() if isinstance(value, torch.Tensor) else value)


def _tokens(value: object, where: str) -> np.ndarray:
    """A token index per position (data.metric perplexity)."""
    array = _label_array(value)
    if array.dtype.kind not in "iu" or array.ndim != 1:
        raise UserError(f"{where}: label of shape {list(array.shape)} ({array.dtype}) is not a "
                        f"sequence of token indices; metric 'perplexity' needs labels that are "
                        f"integers >= 0, one per position (the next token)")
    if (array < 0).any():
        raise UserError(f"{where}: label holds the negative token index {int(array.min())}; "
                        f"token indices are integers >= 0")
    return array.astype(np.int64)


def _values(value: object, where: str) -> np.ndarray:
    """Numbers of any shape (data.metric mse, or a metric function)."""
    array = _label_array(value)
    if array.dtype.kind not in "biuf":
        raise UserError(f"{where}: label is {array.dtype}, not numbers; this metric needs "
                        f"numeric labels")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise UserError(f"{where}: label holds NaN or Inf; labels must be finite numbers")
    return array.astype(np.float32) if array.dtype.kind == "f" else array.astype(np.int64)


def _label(value: object, where: str) -> int:
    array = _label_array(value)
    if array.size != 1 or array.dtype.kind not in "iu":
        shown = f"{array.reshape(()).item()!r} ({array.dtype})" if array.size == 1 else \
            f"of shape {list(array.shape)}"
        raise UserError(f"{where}: label {shown} is not an integer; labels must be integers >= 0 "
                        f"(class indices)")
    label = int(array.reshape(()))
    if label < 0:
        raise UserError(f"{where}: label {label} is negative; labels must be integers >= 0 (class indices)")
    return label


def check_finite(array: np.ndarray, split: str, input_index: int) -> None:
    """NaN or Inf in any sample of a float input: UserError naming the first such sample."""
    if array.dtype.kind not in "fc":
        return
    bad = np.flatnonzero(~np.isfinite(array.reshape(len(array), -1)).all(axis=1))
    if bad.size:
        what = "NaN" if np.isnan(array[bad[0]]).any() else "Inf"
        raise UserError(f"data split {split!r}, sample {bad[0]}: input {input_index} holds {what} "
                        f"({bad.size} of the split's {len(array)} samples hold NaN or Inf); inputs "
                        f"must be finite numbers")


def check_labels(arrays: Arrays, split: str, classes: int) -> None:
    """Every label (every token of a sequence label) a class the model can answer: the model
    gives `classes` scores per sample (per position)."""
    bad = np.flatnonzero((arrays.labels >= classes).reshape(len(arrays), -1).any(axis=1))
    if bad.size:
        shown = arrays.labels[bad[0]] if arrays.labels.ndim == 1 else arrays.labels[bad[0]].max()
        raise UserError(f"data split {split!r}, sample {bad[0]}: label {shown} is not "
                        f"one of the model's {classes} output classes ({bad.size} of the split's "
                        f"{len(arrays)} labels are not); labels must be integers 0..{classes - 1}")


Signature = tuple[tuple[tuple[int, ...], np.dtype], ...]  # (shape, dtype) of each input of a sample


def _signature(inputs: tuple[np.ndarray, ...]) -> Signature:
    return tuple((x.shape, x.dtype) for x in inputs)


def _signature_of_arrays(arrays: Arrays) -> Signature:
    return tuple((a.shape[1:], a.dtype) for a in arrays.inputs)


def _describe(signature: Signature) -> str:
    return ", ".join(f"{list(shape)} {dtype}" for shape, dtype in signature) or "none"


def _kind(value: object) -> str:
    return f"a {type(value).__name__}" + (f" of length {len(value)}" if isinstance(value, (tuple, list)) else "")


def sample_digests(dataset: Dataset) -> set[str]:
    """A content hash per sample (inputs and label): two splits sharing a sample share a digest.
    Lenient about what a sample holds: the load stage's checks (`stack`) say what is wrong."""
    digests = set()
    for i in range(len(dataset)):
        item = dataset[i]
        h = hashlib.sha256()
        for part in item if isinstance(item, (tuple, list)) else (item,):
            for x in as_inputs(part):
                h.update(_bytes_of(x))
        digests.add(h.hexdigest())
    return digests


def _bytes_of(value: object) -> bytes:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        # a label given as a tensor or as an int hashes alike
        return str(int(value)).encode() if value.numel() == 1 and not value.is_floating_point() \
            else np.ascontiguousarray(value.numpy()).tobytes()
    if isinstance(value, (int, np.integer)):
        return str(int(value)).encode()
    return repr(value).encode()
