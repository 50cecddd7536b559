"""Which library does this sentence document? Real English technical text, already installed.

The data: the first sentence of the docstring of each public function, class, method and property
of a fixed list of modules of five libraries that every edgeship install has (numpy, torch,
scikit-learn, matplotlib and Python's standard library); the label is the library. It is real
writing by the developers of those projects, read from the installed packages with `inspect` in a
fresh interpreter: nothing is downloaded. The text therefore depends on the installed versions: the
same pinned versions (constraints.txt) and Python give the same sentences, in the same order, on
every machine.

Names of the libraries themselves (numpy, torch, sklearn, ...) are dropped from the text, so the
model has to learn each library's vocabulary and style ("tensor", "estimator", "axes", "socket").
Sentences are deduplicated on their words and a sentence found in two libraries is dropped, so no
test sentence is in the train split. Classes are balanced: each keeps `per_class` sentences,
chosen by a seeded shuffle of its sentences sorted by qualified name.

A word-level tokenizer built on the train split alone turns each sentence into `length` int64 ids
(0 is padding, 1 an unknown word). `transformer` is a small encoder written from nn.Linear,
matmul and softmax, so that every quantization flow can trace it.
"""

from __future__ import annotations

import collections
import functools
import importlib
import inspect
import json
import os
import re
import subprocess
import sys
import warnings
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import TensorDataset

from edgeship.data import Splits

_SKLEARN = ("base calibration cluster compose covariance cross_decomposition datasets decomposition "
            "discriminant_analysis dummy ensemble feature_extraction feature_extraction.text "
            "feature_selection gaussian_process impute inspection isotonic kernel_approximation "
            "kernel_ridge linear_model manifold metrics mixture model_selection multiclass "
            "multioutput naive_bayes neighbors neural_network pipeline preprocessing "
            "random_projection semi_supervised svm tree utils")
_PYTHON = ("os os.path sys json collections collections.abc itertools functools re string pathlib "
           "shutil subprocess threading multiprocessing asyncio socket http.client http.server "
           "http.cookies urllib.request urllib.parse email.message email.utils logging "
           "logging.handlers argparse datetime time random math statistics decimal fractions heapq "
           "bisect csv sqlite3 zipfile tarfile gzip io tempfile glob fnmatch inspect typing "
           "dataclasses enum abc contextlib copy pickle struct hashlib hmac base64 textwrap difflib "
           "unittest doctest pdb traceback warnings weakref types operator uuid xml.etree.ElementTree "
           "xml.dom.minidom html.parser configparser platform signal selectors queue sched calendar "
           "locale gettext codecs unicodedata ast dis tokenize importlib importlib.metadata pkgutil "
           "zlib bz2 lzma mailbox ftplib smtplib imaplib poplib wave colorsys pprint reprlib secrets "
           "ipaddress concurrent.futures shlex cmd optparse getopt plistlib graphlib numbers cmath "
           "array mmap timeit cProfile pstats filecmp fileinput stat linecache tracemalloc gc "
           "sysconfig runpy code keyword symtable compileall py_compile binascii mimetypes "
           "socketserver xmlrpc.client wsgiref.util")
# label -> the modules whose public names are read. Fixed lists: what a module re-exports from
# another library does not count (each object is kept only under the library that defines it).
LIBRARIES: dict[str, tuple[str, ...]] = {
    "numpy": ("numpy", "numpy.linalg", "numpy.fft", "numpy.random", "numpy.ma", "numpy.polynomial",
              "numpy.lib", "numpy.testing", "numpy.char", "numpy.strings", "numpy.rec"),
    "torch": ("torch", "torch.nn", "torch.nn.functional", "torch.nn.init", "torch.linalg",
              "torch.fft", "torch.special", "torch.optim", "torch.optim.lr_scheduler",
              "torch.utils.data", "torch.distributions", "torch.autograd", "torch.nn.utils",
              "torch.distributed", "torch.cuda", "torch.sparse", "torch.jit", "torch.export",
              "torch.fx", "torch.onnx", "torch.testing", "torch.ao.quantization"),
    "sklearn": tuple(f"sklearn.{m}" for m in _SKLEARN.split()),
    "matplotlib": tuple(f"matplotlib.{m}" for m in (
        "pyplot axes figure colors cm patches lines text ticker transforms path dates collections "
        "image legend animation artist axis backend_bases colorbar contour gridspec markers scale "
        "spines widgets").split()),
    "python": tuple(_PYTHON.split()),
}
CLASSES = tuple(LIBRARIES)
# Words that name a library give the answer away; they are removed from every sentence.
_NAMES = frozenset("numpy np torch pytorch sklearn scikit matplotlib mpl pyplot plt python".split())
_SIGNATURE = re.compile(r"^[\w.]+\(.*\)(\s*->.*)?$")  # "add(x1, x2, /, out=None) -> ndarray"
_ROLE = re.compile(r":[a-z]+:")  # reStructuredText roles: ":func:`torch.nonzero`"
_WORD = re.compile(r"[a-z]+|[0-9]+")
PAD, UNK = 0, 1
# Process-wide hooks that test runners and debuggers replace at run time (pytest swaps
# sys.unraisablehook and threading.excepthook): reading them would make the data depend on who
# imported what first.
_SWAPPABLE = frozenset({"breakpointhook", "displayhook", "excepthook", "unraisablehook",
                        "showwarning", "formatwarning", "settrace", "setprofile"})


def words(text: str) -> list[str]:
    """Lowercase words and numbers of `text`, library names and markup left out."""
    return [w for w in _WORD.findall(_ROLE.sub(" ", text).lower()) if w not in _NAMES]


def first_sentence(doc: str) -> str | None:
    """The first sentence of a docstring's first paragraph that is not a call signature."""
    for paragraph in re.split(r"\n\s*\n", inspect.cleandoc(doc)):
        paragraph = " ".join(paragraph.split())
        if paragraph and not _SIGNATURE.match(paragraph) and not paragraph.startswith(".."):
            match = re.match(r"(.+?[.!?])(\s|$)", paragraph)
            return match.group(1) if match else paragraph
    return None


def _defined_in(obj: object, library: str) -> bool:
    root = (getattr(obj, "__module__", None) or "").split(".")[0]
    if library == "python":
        return root in sys.stdlib_module_names and root != "builtins"
    return root == library


def _documented(obj: object) -> list[tuple[str, object]]:
    """(suffix, object) for `obj` and, for a class, its own public methods and properties."""
    found = [("", obj)]
    if inspect.isclass(obj):
        for name, value in sorted(vars(obj).items()):
            if name.startswith("_"):
                continue
            value = value.__func__ if isinstance(value, (staticmethod, classmethod)) else value
            if inspect.isfunction(value) or isinstance(value, property):
                found.append((f".{name}", value))
    return found


def _library_sentences(library: str) -> dict[str, str]:
    """Qualified name -> first docstring sentence, for every public object `library` defines."""
    sentences: dict[str, str] = {}
    seen: set[int] = set()
    for module_name in LIBRARIES[library]:
        module = importlib.import_module(module_name)
        names = getattr(module, "__all__", None) or [n for n in dir(module) if not n.startswith("_")]
        for name in sorted(set(names) - _SWAPPABLE):
            try:
                obj = getattr(module, name)
            except (AttributeError, ImportError):  # sklearn's experimental names raise
                continue
            if inspect.ismodule(obj) or not callable(obj) or not _defined_in(obj, library):
                continue
            for suffix, member in _documented(obj):
                doc = member.__doc__ if inspect.isclass(member) or isinstance(member, property) \
                    else inspect.getdoc(member)
                if id(member) in seen or not isinstance(doc, str):
                    continue
                seen.add(id(member))
                sentence = first_sentence(doc)
                if sentence and len(words(sentence)) >= 3:
                    sentences[f"{module_name}.{name}{suffix}"] = sentence
    return sentences


_READ = "import json, sys; from edgeship.examples import text; json.dump(text.read_corpus(), sys.stdout)"


@functools.cache
def corpus() -> tuple[tuple[str, str, str], ...]:
    """`read_corpus()` of a fresh interpreter. Libraries replace each other's functions when they
    are imported (ray swaps `inspect.isgenerator` for its own wrapper), so read in this process
    the data would depend on what it had imported before."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    done = subprocess.run([sys.executable, "-c", _READ], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"reading the docstring corpus failed: {done.stderr.strip()[-2000:]}")
    return tuple(tuple(row) for row in json.loads(done.stdout))


def read_corpus() -> list[tuple[str, str, str]]:
    """(library, qualified name, sentence), sorted; each sentence's words appear once in all."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation notices of the modules being read
        found = {lib: _library_sentences(lib) for lib in CLASSES}
    owners = collections.defaultdict(set)
    for lib, sentences in found.items():
        for text in sentences.values():
            owners[tuple(words(text))].add(lib)
    rows, kept = [], set()
    for lib in CLASSES:
        for qualname, text in sorted(found[lib].items()):
            key = tuple(words(text))
            if len(owners[key]) == 1 and key not in kept:  # not ambiguous, not a repeat
                kept.add(key)
                rows.append((lib, qualname, text))
    return rows


@dataclass(frozen=True)
class Tokenizer:
    """Word-level: the most frequent train words get ids from 2, by count then alphabetically."""

    vocabulary: dict[str, int]
    length: int

    @classmethod
    def fit(cls, texts: list[str], *, size: int, length: int) -> Tokenizer:
        counts = collections.Counter(w for t in texts for w in words(t))
        ranked = sorted(counts, key=lambda w: (-counts[w], w))[:size - 2]
        return cls({w: i + 2 for i, w in enumerate(ranked)}, length)

    def encode(self, text: str) -> list[int]:
        ids = [self.vocabulary.get(w, UNK) for w in words(text)][:self.length]
        return ids + [PAD] * (self.length - len(ids))

    def tensor(self, texts: list[str]) -> torch.Tensor:
        return torch.tensor([self.encode(t) for t in texts], dtype=torch.int64)


@dataclass(frozen=True)
class TextSplits:
    """Sentences and labels of each split, and the tokenizer fitted on the train split."""

    texts: dict[str, list[str]]
    labels: dict[str, list[int]]
    tokenizer: Tokenizer

    def splits(self) -> Splits:
        return Splits(**{name: TensorDataset(self.tokenizer.tensor(self.texts[name]),
                                             torch.tensor(self.labels[name], dtype=torch.int64))
                         for name in ("train", "calibration", "test")})


VOCABULARY = 2000
LENGTH = 32


def text_splits(seed: int = 0, per_class: int = 800, calibration: int = 80, test: int = 160,
                vocabulary: int = VOCABULARY, length: int = LENGTH) -> TextSplits:
    """`per_class` sentences of each library: `test` and `calibration` of them held out, the rest
    trained on. Raises ValueError if a library has fewer sentences."""
    by_library = collections.defaultdict(list)
    for lib, _, text in corpus():
        by_library[lib].append(text)
    texts = {"train": [], "calibration": [], "test": []}
    labels = {"train": [], "calibration": [], "test": []}
    generator = torch.Generator().manual_seed(seed)
    for label, lib in enumerate(CLASSES):
        sentences = by_library[lib]
        if len(sentences) < per_class:
            raise ValueError(f"{lib} has {len(sentences)} sentences; per_class={per_class} asked")
        chosen = [sentences[i] for i in torch.randperm(len(sentences), generator=generator)[:per_class]]
        parts = {"test": chosen[:test], "calibration": chosen[test:test + calibration],
                 "train": chosen[test + calibration:]}
        for name, part in parts.items():
            texts[name] += part
            labels[name] += [label] * len(part)
    for name in texts:  # interleave the classes, the same way on every machine
        order = torch.randperm(len(texts[name]), generator=generator).tolist()
        texts[name] = [texts[name][i] for i in order]
        labels[name] = [labels[name][i] for i in order]
    tokenizer = Tokenizer.fit(texts["train"], size=vocabulary, length=length)
    return TextSplits(texts, labels, tokenizer)


def splits(seed: int = 0, per_class: int = 800, calibration: int = 80, test: int = 160,
           vocabulary: int = VOCABULARY, length: int = LENGTH) -> Splits:
    """The data factory of the text recipe: int64 token ids [length] and the library's index."""
    return text_splits(seed, per_class, calibration, test, vocabulary, length).splits()


class SelfAttention(nn.Module):
    """Multi-head self-attention from Linear, matmul and softmax; padded keys get no weight."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.q, self.k, self.v, self.out = (nn.Linear(dim, dim) for _ in range(4))

    def _split(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, D] -> [B, H, T, D/H]
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        q, k, v = self._split(self.q(x)), self._split(self.k(x)), self._split(self.v(x))
        weights = torch.softmax(torch.matmul(q, k.transpose(-2, -1)) * self.scale, dim=-1)
        # Masking after the softmax and renormalising is exact, and keeps the scores free of the
        # large negative numbers that would spend a quantized range on padding.
        weights = weights * keep[:, None, None, :]
        # Bounded below by 0.05, well above one quantization step of a [0, 1] range (1/127): the
        # clamped sum is itself fake-quantized, and a bound of 1e-6 rounded to 0, so 0/0 made QAT
        # loss NaN. In float only a query putting 95% of its weight on padding is affected.
        # Both bounds: qnnpack's quantized clamp refuses a minimum alone.
        weights = weights / weights.sum(-1, keepdim=True).clamp(0.05, 1.0)
        return self.out(torch.matmul(weights, v).transpose(1, 2).flatten(2))


class EncoderLayer(nn.Module):
    """Pre-norm: x + attention(norm(x)), then x + feed-forward(norm(x))."""

    def __init__(self, dim: int, heads: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.norm1, self.attention = nn.LayerNorm(dim), SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.feed_forward = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.attention(self.norm1(x), keep))
        return x + self.dropout(self.feed_forward(self.norm2(x)))


class TextTransformer(nn.Module):
    """Token and learned position embeddings, encoder layers, mean over the real tokens, head."""

    def __init__(self, vocabulary: int = VOCABULARY, length: int = LENGTH, dim: int = 64,
                 heads: int = 4, hidden: int = 128, layers: int = 2, dropout: float = 0.1,
                 classes: int = len(CLASSES)) -> None:
        super().__init__()
        self.length = length
        self.embedding = nn.Embedding(vocabulary, dim, padding_idx=PAD)
        self.position = nn.Parameter(torch.randn(1, length, dim) * 0.02)
        self.layers = nn.ModuleList(EncoderLayer(dim, heads, hidden, dropout) for _ in range(layers))
        self.norm, self.dropout = nn.LayerNorm(dim), nn.Dropout(dropout)
        self.classifier = nn.Linear(dim, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        keep = (ids != PAD).float()  # [B, T]: 1 for a word, 0 for padding
        x = self.dropout(self.embedding(ids) + self.position)
        for layer in self.layers:
            x = layer(x, keep)
        x = self.norm(x) * keep[:, :, None]
        # Both bounds: qnnpack's quantized clamp refuses a clamp with only a minimum.
        pooled = x.sum(1) / keep.sum(1, keepdim=True).clamp(1.0, float(self.length))
        return self.classifier(pooled)


def transformer(vocabulary: int = VOCABULARY, length: int = LENGTH, dim: int = 64, heads: int = 4,
                hidden: int = 128, layers: int = 2, dropout: float = 0.1) -> TextTransformer:
    """An untrained encoder for `splits` (the recipe trains it in the load stage)."""
    return TextTransformer(vocabulary, length, dim, heads, hidden, layers, dropout)
