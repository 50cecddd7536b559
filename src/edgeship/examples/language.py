"""A small causal language model: the next word of real English technical text.

The text is the docstring corpus of edgeship.examples.text (first sentences of the documentation
of numpy, torch, scikit-learn, matplotlib and Python's standard library, read from the installed
packages). Sentences are split between train, calibration and test first, so no test sentence is
trained on; each split's sentences are then joined into one stream of word ids, an end-of-sentence
id after each, and cut into windows of `length` + 1 ids: the input is a window's first `length`
ids, the label its last `length` (the next word at every position). The vocabulary is the train
split's most frequent words.

The model is a causal convolutional language model after Dauphin et al.
(2017), without their gates: an embedding, dilated 1-D convolutions that see only earlier positions (left padding,
then the right end trimmed), residual connections, and a linear head over the vocabulary. It
answers [batch, length, vocabulary] logits, which data.metric = "perplexity" reads.
"""

from __future__ import annotations

import collections

import torch
from torch import nn
from torch.utils.data import TensorDataset

from edgeship.data import Splits
from edgeship.examples import text

END, UNKNOWN = 0, 1  # ids of the end of a sentence and of a word outside the vocabulary


def _stream(sentences: list[list[str]], vocabulary: dict[str, int]) -> list[int]:
    return [i for words in sentences for i in [vocabulary.get(w, UNKNOWN) for w in words] + [END]]


def _windows(ids: list[int], length: int, limit: int | None) -> TensorDataset:
    count = (len(ids) - 1) // length
    count = min(count, limit) if limit else count
    chunks = torch.tensor(ids[:count * length + 1], dtype=torch.int64)
    inputs = torch.stack([chunks[i * length:(i + 1) * length] for i in range(count)])
    labels = torch.stack([chunks[i * length + 1:(i + 1) * length + 1] for i in range(count)])
    return TensorDataset(inputs, labels)


def splits(seed: int = 0, vocabulary: int = 1000, length: int = 24, test: float = 0.12,
           calibration: float = 0.06, train_windows: int | None = None) -> Splits:
    """Windows of `length` word ids and the next id at each position; `train_windows` caps the
    train split (the tests' short runs)."""
    sentences = [text.words(sentence) for _, _, sentence in text.corpus()]
    order = torch.randperm(len(sentences), generator=torch.Generator().manual_seed(seed)).tolist()
    n_test, n_calibration = int(test * len(order)), int(calibration * len(order))
    parts = {"test": order[:n_test], "calibration": order[n_test:n_test + n_calibration],
             "train": order[n_test + n_calibration:]}
    counts = collections.Counter(w for i in parts["train"] for w in sentences[i])
    ranked = sorted(counts, key=lambda w: (-counts[w], w))[:vocabulary - 2]
    ids = {w: k + 2 for k, w in enumerate(ranked)}
    return Splits(**{name: _windows(_stream([sentences[i] for i in rows], ids), length,
                                    train_windows if name == "train" else None)
                     for name, rows in parts.items()})


class CausalConvLM(nn.Module):
    """Embedding, dilated causal convolutions with residuals, a linear head over the vocabulary."""

    def __init__(self, vocabulary: int = 1000, dim: int = 64, kernel: int = 3,
                 dilations: tuple[int, ...] = (1, 2, 4)) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocabulary, dim)
        self.convs = nn.ModuleList(nn.Conv1d(dim, dim, kernel, padding=(kernel - 1) * d, dilation=d)
                                   for d in dilations)
        self.trims = [(kernel - 1) * d for d in dilations]
        self.head = nn.Linear(dim, vocabulary)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids).transpose(1, 2)  # [batch, dim, length]
        for conv, trim in zip(self.convs, self.trims):
            # Padding on both sides, then the right end cut off: position t sees t and before only
            x = x + torch.relu(conv(x)[:, :, :-trim])
        return self.head(x.transpose(1, 2))  # [batch, length, vocabulary]


def causal_lm(vocabulary: int = 1000, dim: int = 64) -> nn.Module:
    return CausalConvLM(vocabulary, dim)
