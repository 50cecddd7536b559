"""The language example: real docstring sentences, the word tokenizer, the transformer encoder, and
one int8 export of it through the whole pipeline."""

from __future__ import annotations

import collections
import hashlib
import importlib
import inspect
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch

import edgeship
from edgeship.data import stack
from edgeship.examples import text
from edgeship.recipe import parse_recipe
from support import QUICK_BENCHMARK

RECIPE = Path(text.__file__).parent / "recipes" / "text_transformer.toml"
DIGEST = ("import hashlib; from edgeship.examples import text; "
          "print(hashlib.sha256(repr(text.corpus()).encode()).hexdigest())")


def _resolve(qualname: str) -> object:
    """The object of 'package.module.Class.method': the longest importable prefix, then attributes."""
    parts = qualname.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for part in parts[cut:]:
            obj = inspect.getattr_static(obj, part) if isinstance(obj, type) else getattr(obj, part)
        return getattr(obj, "__func__", obj)  # staticmethod, classmethod
    raise LookupError(qualname)


@pytest.fixture
def one_thread():
    """Training on one thread: on a shared two-core machine, two threads are ten times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data() -> text.TextSplits:
    return text.text_splits()


def test_sentences_are_the_installed_docstrings():
    rows = text.corpus()
    by_name = {qualname: (lib, sentence) for lib, qualname, sentence in rows}
    lib, sentence = by_name["numpy.nanstd"]
    assert lib == "numpy"
    assert sentence == text.first_sentence(importlib.import_module("numpy").nanstd.__doc__)
    assert sentence.startswith("Compute the standard deviation")
    # Every row, read again from its object, says what the corpus says.
    for lib, qualname, sentence in rows[::97]:
        obj = _resolve(qualname)
        doc = obj.__doc__ if isinstance(obj, (type, property)) else inspect.getdoc(obj)
        assert text.first_sentence(doc) == sentence, qualname
    assert collections.Counter(lib for lib, _, _ in rows).keys() == set(text.CLASSES)


def test_classes_are_balanced_and_splits_disjoint(data):
    sizes = {"train": 560, "calibration": 80, "test": 160}
    for name, per_class in sizes.items():
        assert collections.Counter(data.labels[name]) == {i: per_class for i in range(5)}
    seen = {name: {tuple(text.words(t)) for t in data.texts[name]} for name in sizes}
    assert len(seen["test"]) == len(data.texts["test"])  # no sentence twice
    assert not seen["test"] & seen["train"]
    assert not seen["calibration"] & seen["train"]
    assert not seen["test"] & seen["calibration"]


def test_no_library_names_or_markup_in_the_words():
    assert text.words(":func:`torch.nonzero` of a NumPy array, see sklearn") == \
        ["nonzero", "of", "a", "array", "see"]
    assert not any(set(text.words(s)) & {"numpy", "torch", "sklearn", "matplotlib", "python"}
                   for _, _, s in text.corpus())


def test_first_sentence_skips_call_signatures():
    doc = "add(x1, x2, /, out=None) -> ndarray\n\nAdd arguments element-wise. More text."
    assert text.first_sentence(doc) == "Add arguments element-wise."
    assert text.first_sentence("sum(input) -> Tensor") is None


@pytest.mark.parametrize("first", ["", "import ray; "], ids=["fresh", "after-ray"])
def test_the_same_data_in_another_process(data, first):
    """Same packages, same data: another interpreter reads the same sentences, whatever it imported
    first (ray replaces `inspect.isgenerator`, which once dropped a sentence), and the same seed
    draws the same splits."""
    other = subprocess.run([sys.executable, "-c", first + DIGEST], capture_output=True, text=True, check=True)
    assert other.stdout.strip() == hashlib.sha256(repr(text.corpus()).encode()).hexdigest()
    again = text.text_splits()
    assert again.texts == data.texts and again.tokenizer == data.tokenizer
    assert text.text_splits(seed=1).texts["test"] != data.texts["test"]


def test_tokenizer_is_fitted_on_train_only():
    tokenizer = text.Tokenizer.fit(["the cat sat", "the cat", "the dog"], size=4, length=5)
    assert tokenizer.vocabulary == {"the": 2, "cat": 3}  # by count, then alphabetically; 2 slots
    assert tokenizer.encode("The dog sat on the CAT") == [2, text.UNK, text.UNK, text.UNK, 2]
    assert tokenizer.encode("cat") == [3, text.PAD, text.PAD, text.PAD, text.PAD]
    ids = tokenizer.tensor(["the cat", "zebra"])
    assert ids.dtype == torch.int64 and ids.tolist() == [[2, 3, 0, 0, 0], [1, 0, 0, 0, 0]]


def test_split_tensors(data):
    splits = data.splits()
    ids, label = splits.test[0]
    assert ids.shape == (text.LENGTH,) and ids.dtype == torch.int64 and label.dtype == torch.int64
    assert ids.max() < text.VOCABULARY and ids[0] != text.PAD
    test_words = {w for t in data.texts["test"] for w in text.words(t)}
    train_words = {w for t in data.texts["train"] for w in text.words(t)}
    assert not (set(data.tokenizer.vocabulary) - train_words)
    assert test_words - train_words  # some test words are unseen: they become UNK


def test_model_shapes_and_padding_mask():
    torch.manual_seed(0)
    model = text.transformer().eval()
    ids = torch.tensor([[5, 6, 7] + [text.PAD] * 29, list(range(2, 34))])
    with torch.no_grad():
        out = model(ids)
        assert out.shape == (2, len(text.CLASSES))
        model.position[0, 3:] += torch.randn(29, model.position.shape[-1])  # padded positions only
        moved = model(ids)
    assert torch.allclose(moved[0], out[0], atol=1e-5)  # padding is masked out
    assert not torch.allclose(moved[1], out[1])  # the full sentence sees its new positions


def test_trains_above_chance_in_seconds(data, one_thread):
    splits = data.splits()
    torch.manual_seed(0)
    model = text.transformer()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    loader = torch.utils.data.DataLoader(splits.train, batch_size=64, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    for _ in range(2):
        model.train()
        for ids, labels in loader:
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(ids), labels).backward()
            optimizer.step()
    ids, labels = splits.test.tensors
    with torch.no_grad():
        accuracy = (model.eval()(ids).argmax(1) == labels).float().mean().item()
    assert accuracy > 0.5  # chance is 0.2


@pytest.mark.slow
def test_onnx_int8_end_to_end(tmp_path, one_thread):
    """The shipped recipe quantizes dynamically: within a point of float (the issue's figure)."""
    recipe = tomllib.loads(RECIPE.read_text())
    recipe.update(targets=["onnx-int8"], fp32_twins=False, benchmark=dict(QUICK_BENCHMARK))
    recipe["model"]["train"] = {"epochs": 3, "lr": 0.003}
    recipe["budgets"] = [{"max_accuracy_drop": 1.0}]
    report = edgeship.run(parse_recipe(recipe, "text", RECIPE.parent), tmp_path / "run", quiet=True)
    (artifact,) = report.artifacts
    assert artifact.status == "ok", artifact.error
    assert artifact.precision == "int8" and artifact.details["quantization"]["mode"] == "dynamic"
    ops = artifact.details["onnx_ops"]
    assert ops["DynamicQuantizeLinear"] > 0 and ops["MatMulInteger"] > 0
    assert report.float.accuracy > 0.6
    assert abs(report.float.accuracy - artifact.accuracy) * 100 <= 1.0
    assert report.gate.passed and report.exit_code == 0


@pytest.mark.parametrize("flow", ["fx-fbgemm", "pt2e-xnnpack"])
def test_static_qat_of_a_trained_encoder_stays_finite(data, one_thread, flow):
    """Fake-quantized attention: the renormaliser must not round to zero (it did: 0/0, NaN loss at
    the second QAT step, then "zero_point must be between quant_min and quant_max")."""
    from edgeship.quantize.evaluate import logits, top1
    from edgeship.quantize.flows import flow_for
    from edgeship.quantize.calibrate import calibrate
    from edgeship.quantize.qat import finetune
    from edgeship.quantize.training import train
    from edgeship.progress import Progress
    from edgeship.recipe import QATSection
    from edgeship.targets import Flow

    splits = data.splits()
    torch.manual_seed(0)
    model = text.transformer()
    train(model, splits.train, optimizer=torch.optim.Adam(model.parameters(), lr=3e-3), epochs=4,
          batch_size=64, seed=0, progress=Progress(enabled=False), label="float")
    model.eval()
    qf = flow_for(Flow(flow))
    prepared = calibrate(qf, model, (splits.test[0][0].unsqueeze(0),), splits.calibration,
                         batches=4, batch_size=64, qat=True)
    loss = finetune(qf, prepared, splits.train, qat=QATSection(epochs=1, lr=5e-4, optimizer="adam"),
                    batch_size=64, seed=0)  # raises TrainingDiverged on a NaN loss
    assert loss < 1.0
    test = stack(splits.test)
    with qf.engine():
        assert top1(logits(qf.convert(prepared), test), test.labels) > 0.6
