"""Load stage: the user's model and data, checked against the recipe's example inputs and the
plan, then the float model trained when the recipe says so (or taken from the stage cache)."""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from edgeship.data import Arrays, Splits, as_inputs, check_labels, stack
from edgeship.errors import UserError
from edgeship.factories import load_data, load_model, load_teacher, teacher_digest
from edgeship.pipeline.cache import digest, tensors_digest
from edgeship.pipeline.context import RunContext
from edgeship.pipeline.plan import check_float_layers, check_model
from edgeship.pipeline.stages import StageNotes
from edgeship.pipeline.values import Loaded
from edgeship.metrics import TaskLoss, TaskMetric
from edgeship.quantize.evaluate import scored
from edgeship.quantize.training import LossFn, TrainingDiverged, distillation_loss, train
from edgeship.recipe import Recipe

_DTYPES = {"float32": torch.float32, "int64": torch.int64, "int32": torch.int32}


def example_inputs(recipe: Recipe) -> tuple[torch.Tensor, ...]:
    """Zero tensors of the recipe's shapes and dtypes (fill_examples puts real data in them)."""
    return tuple(torch.zeros(spec.shape, dtype=_DTYPES[spec.dtype]) for spec in recipe.model.example_inputs)


def check_fit(model: nn.Module, examples: tuple[torch.Tensor, ...], splits: Splits) -> None:
    """Example inputs must match the data and the model must accept them: say which does not."""
    sample = as_inputs(splits.test[0][0])
    if len(sample) != len(examples):
        raise UserError(f"model.example_inputs has {len(examples)} inputs; the data gives {len(sample)}")
    for i, (example, x) in enumerate(zip(examples, sample)):
        if list(example.shape[1:]) != list(x.shape) or example.dtype != x.dtype:
            raise UserError(
                f"model.example_inputs[{i}]: shape {list(example.shape)} {str(example.dtype)[6:]} does "
                f"not fit the data: a sample is {list(x.shape)} {str(x.dtype)[6:]}, so expected "
                f"[batch, {', '.join(map(str, x.shape))}]")
    model.eval()
    try:
        with torch.no_grad():
            model(*examples)
    except Exception as e:  # noqa: BLE001
        shapes = ", ".join(f"{list(x.shape)} {str(x.dtype)[6:]}" for x in examples)
        raise UserError(f"model.example_inputs {shapes}, which fit data.factory's samples, do not "
                        f"fit the model: {_one_line(e)}") from None


def _one_line(error: Exception) -> str:
    lines = str(error).splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def stack_splits(splits: Splits, labels: str = "classes") -> dict[str, Arrays]:
    """Every split stacked and checked (see edgeship.data.stack); the test split first, so the
    others are held to its shapes and dtypes. `labels`: what the metric reads in a label."""
    test = stack(splits.test, "test", labels=labels)
    others = {name: stack(dataset, name, like=test, labels=labels)
              for name, dataset in splits.present().items() if name != "test"}
    return {"test": test, **others}


# Enough samples that a model mixing up the batch dimension shows it
_PROBE_BATCH = 8


@dataclass(frozen=True)
class FirstAnswers:
    """The model's output on the first test samples (the first item of a tuple, as evaluation
    reads it), their labels, and where they are, for messages."""

    scores: torch.Tensor
    labels: np.ndarray
    where: str


def first_answers(model: nn.Module, test: Arrays) -> FirstAnswers:
    n = min(len(test), _PROBE_BATCH)
    batch = tuple(torch.from_numpy(a[:n]) for a in test.inputs)
    where = f"data split 'test', samples 0..{n - 1}"
    model.eval()
    try:
        with torch.no_grad():
            out = model(*batch)
    except Exception as e:  # noqa: BLE001 - the user's model failed on their data
        raise UserError(f"{where}: the model fails on this batch of {n}: {_one_line(e)}") from None
    scores = scored(out)
    if not isinstance(scores, torch.Tensor):
        raise UserError(f"{where}: the model's output for a batch of {n} is {type(scores).__name__}; "
                        f"it must be a tensor (or a tuple whose first item is one)")
    return FirstAnswers(scores, test.labels[:n], where)


def _expected(metric: TaskMetric, labels: np.ndarray) -> tuple[int, str] | None:
    """The output rank the metric reads and its shape in words; None: any shape."""
    n = labels.shape[0]
    if metric.labels == "classes":
        return 2, f"[batch, classes], here [{n}, classes]"
    if metric.labels == "tokens":
        return 3, f"[batch, positions, vocabulary], here [{n}, {labels.shape[1]}, vocabulary]"
    return None  # any shape with the batch first


def check_outputs(answers: FirstAnswers, metric: TaskMetric) -> int | None:
    """The model's outputs must be what `metric` reads: UserError saying what they are instead.
    Returns the classes (vocabulary) it scores, if it scores any."""
    scores, labels, where = answers.scores, answers.labels, answers.where
    expected, n = _expected(metric, labels), len(labels)
    fits = scores.ndim >= 1 and scores.shape[0] == n and (expected is None or (
        scores.ndim == expected[0] and scores.shape[-1] >= 1 and scores.shape[1:-1] == labels.shape[1:]))
    need = expected[1] if expected else f"the batch first, [{n}, ...]"
    if fits and metric.name == "mse" and scores[0].numel() != labels[0].size:
        fits, need = False, f"{labels[0].size} numbers per sample, as its labels hold"
    if not fits:
        raise UserError(f"{where}: the model's output for a batch of {n} is {list(scores.shape)}; "
                        f"data.metric {metric.name!r} needs {need}")
    return int(scores.shape[-1]) if expected is not None and metric.name != "mse" else None


def check_task(answers: FirstAnswers, metric: TaskMetric, loss: TaskLoss | None) -> None:
    """The metric and the loss on the first test samples: a user's function that fails says so
    here, in one line, not after training."""
    metric.score(answers.scores.numpy(), answers.labels)
    if loss is not None:
        _check_loss(loss, answers.scores, answers.labels)


def _check_loss(loss: TaskLoss, scores: torch.Tensor, labels: np.ndarray) -> None:
    try:
        value = loss(scores.float(), torch.from_numpy(labels))
    except Exception as e:  # noqa: BLE001 - the user's loss (or a loss that does not fit) failed
        raise UserError(f"data.loss {loss.name!r} fails on the model's outputs {list(scores.shape)} "
                        f"and labels {list(labels.shape)}: {_one_line(e)}") from None
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        shown = list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise UserError(f"data.loss {loss.name!r} returned {shown}; it must return a scalar tensor")


def checked_data(model: nn.Module, examples: tuple[torch.Tensor, ...], splits: Splits,
                 metric: TaskMetric, loss: TaskLoss | None) -> dict[str, Arrays]:
    """Every split stacked, once each has passed every check that needs no training: sample
    format, shapes, finite inputs, labels the metric reads and within the model's classes."""
    arrays = stack_splits(splits, metric.labels)
    check_fit(model, examples, splits)
    answers = first_answers(model, arrays["test"])
    classes = check_outputs(answers, metric)
    if classes is not None:
        for name, split in arrays.items():
            check_labels(split, name, classes)
    check_task(answers, metric, loss)
    return arrays


def fill_examples(examples: tuple[torch.Tensor, ...], test: Arrays) -> tuple[torch.Tensor, ...]:
    """Real data in the example inputs: observers and tracers see what the model will see."""
    rows = np.arange(examples[0].shape[0]) % len(test)
    return tuple(torch.from_numpy(a[rows]) for a in test.inputs)


def _float_loss(config, teacher: nn.Module | None, task: LossFn) -> LossFn:
    if teacher is None:
        return task
    d = config.distillation
    return distillation_loss(teacher, d.weight, d.temperature, d.loss, task)


def model_source(model: nn.Module) -> list[str]:
    """The source of the user's module classes in `model`: a forward() edited since the last
    run is another model, whose trained weights the cache must not give back."""
    out = []
    for cls in dict.fromkeys(type(m) for m in model.modules()):
        if not cls.__module__.startswith("torch."):
            try:
                out.append(inspect.getsource(cls))
            except (OSError, TypeError):  # defined in a notebook or built at run time
                out.append(cls.__qualname__)
    return out


def load(ctx: RunContext) -> Loaded:
    recipe = ctx.recipe
    with ctx.log.stage("load") as notes:
        model = load_model(recipe)
        splits = load_data(recipe)
        examples = example_inputs(recipe)
        arrays = checked_data(model, examples, splits, ctx.metric, ctx.loss)
        check_model(ctx.plan, model)
        check_float_layers(recipe.quantization.float_layers, model)
        examples = fill_examples(examples, arrays["test"])
        float_teacher, qat_teacher = load_teachers(recipe, model, examples)
        data = [arrays[name] for name in ("train", "calibration", "test")]
        key = digest("float", ctx.env_key, recipe.model, recipe.data, recipe.seed,
                     ctx.metric.source, ctx.loss.source if ctx.loss else None,
                     tensors_digest(model.state_dict()), model_source(model),
                     tensors_digest([a for d in data for a in (*d.inputs, d.labels)]),
                     *([teacher_digest(recipe, recipe.model.train.distillation.teacher)] if float_teacher else []))
        losses = _train_float(ctx, model, splits, key, notes, float_teacher) if recipe.model.train else ()
        model.eval()
        notes.append(f"{len(splits.train)} train / {len(splits.calibration)} calibration / "
                     f"{len(splits.test)} test samples")
    fresh = losses and not notes.cached  # a cached model's last loss was said by the run that trained it
    return Loaded(model, splits, examples, data[2], key, losses[-1] if fresh else None, tuple(losses),
                  qat_teacher, arrays)


def load_teachers(recipe: Recipe, model: nn.Module, examples: tuple) -> tuple[nn.Module | None, nn.Module | None]:
    """The separate teachers of float training and of QAT (None: none), each checked to answer
    the example inputs in the student's shape."""
    found = []
    train = recipe.model.train
    for key, distillation in (("model.train.distillation", train.distillation if train else None),
                              ("quantization.qat.distillation", recipe.quantization.qat.distillation)):
        teacher = None
        if distillation is not None and distillation.teacher is not None:
            teacher = load_teacher(recipe, distillation.teacher, f"{key}.teacher")
            _answers_like(teacher, model, examples, f"{key}.teacher {distillation.teacher.factory!r}")
        found.append(teacher)
    return found[0], found[1]


def _answers_like(teacher: nn.Module, student: nn.Module, examples: tuple, what: str) -> None:
    training = student.training
    try:
        with torch.no_grad():
            theirs, ours = scored(teacher(*examples)), scored(student.eval()(*examples))
    except Exception as e:  # noqa: BLE001 - the user's teacher failed on the student's inputs
        raise UserError(f"{what} fails on the model's example inputs: {type(e).__name__}: {e}") from None
    finally:
        student.train(training)
    if getattr(theirs, "shape", None) != ours.shape:
        raise UserError(f"{what} answers in shape {tuple(getattr(theirs, 'shape', ()))}, the model in "
                        f"{tuple(ours.shape)}: a teacher must answer as the student does")


def _train_float(ctx: RunContext, model: nn.Module, splits: Splits, key: str,
                 notes: StageNotes, teacher: nn.Module | None = None) -> list[float]:
    """Trains `model` in place, or loads its trained state from the cache; its mean loss per epoch."""
    recipe, config = ctx.recipe, ctx.recipe.model.train
    state, cached = ctx.cache.load_state("float", key), ctx.cache.load_json("float-losses", key)
    if state is not None:
        model.load_state_dict(state)
        notes.cached = True
        return cached["losses"] if cached else []
    torch.manual_seed(recipe.seed)
    losses: list[float] = []
    try:
        train(model, splits.train, optimizer=torch.optim.Adam(model.parameters(), lr=config.lr),
              epochs=config.epochs, batch_size=recipe.data.batch_size, seed=recipe.seed,
              progress=ctx.progress, label="train float model", schedule=config.schedule,
              on_epoch_end=lambda epoch, loss: losses.append(loss), loss_fn=_float_loss(config, teacher, ctx.loss))
    except TrainingDiverged as e:  # nothing to ship: say which key to change
        raise UserError(f"model.train: {e}") from None
    ctx.cache.store_json("float-losses", key, {"losses": losses})
    ctx.cache.store_state("float", key, model)
    notes.append(f"trained {config.epochs} epochs, loss {losses[-1]:.4f}")
    return losses
