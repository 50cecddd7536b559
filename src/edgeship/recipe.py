"""The recipe: one TOML file that says what to ship, where, and within which budgets.

Validated in full before any stage runs. Every problem is reported at once, each on one line
with its key path, so a user fixes the file in one pass.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator

from edgeship.config import Name, Section, apply_overrides, parse_toml, read_toml, validation_problems
from edgeship.devices.profile import BenchmarkOverrides
from edgeship.errors import UserError
from edgeship.regression import Regression
from edgeship.regression import parse as parse_regression
from edgeship.targets import TARGETS, known_targets

PositiveFloat = Annotated[float, Field(gt=0)]


# One example input of 2^28 elements is a gigabyte of float32; more is a typo that torch would
# only find when it allocates the tensor, deep in the load stage.
MAX_INPUT_ELEMENTS = 2**28


class InputSpec(Section):
    shape: list[Annotated[int, Field(ge=1)]] = Field(
        min_length=1, description="Shape including the batch dimension, e.g. [1, 1, 8, 8].")
    dtype: Literal["float32", "int64", "int32"] = Field(
        "float32", description="Element type of this input.")

    @field_validator("shape")
    @classmethod
    def _not_huge(cls, shape: list[int]) -> list[int]:
        if math.prod(shape) > MAX_INPUT_ELEMENTS:
            raise ValueError(f"{math.prod(shape)} elements; at most {MAX_INPUT_ELEMENTS} (2^28)")
        return shape


class FloatTraining(Section):
    epochs: int = Field(ge=1, description="Epochs of float training in the load stage.")
    lr: PositiveFloat = Field(1e-2, description="Adam learning rate.")
    schedule: Literal["constant", "cosine"] = Field(
        "constant", description="Learning rate over the steps: constant, or cosine-annealed to 0 "
                                "(settles the weights, so batch-norm statistics match them).")
    distillation: Distillation | None = Field(
        None, description="Train the float model (the student) to mimic a teacher network too.")

    @field_validator("distillation")
    @classmethod
    def _has_teacher(cls, value: Distillation | None) -> Distillation | None:
        if value is not None and value.teacher is None:
            raise ValueError("float training distils from a separate network: set "
                             "distillation.teacher (a factory, and weights)")
        return value


class ModelSection(Section):
    factory: str = Field(description="'package.module:function' or 'path/to/file.py:function' "
                                     "returning an nn.Module; paths are relative to the recipe.")
    kwargs: dict = Field(default_factory=dict, description="Keyword arguments for the factory.")
    example_inputs: list[InputSpec] = Field(
        min_length=1, description="One entry per forward() argument; artifacts take these shapes.")
    train: FloatTraining | None = Field(
        None, description="Train the float model in the load stage (for untrained factories).")


# Built-in metrics and whether higher is better; losses by name (edgeship/metrics.py has both)
METRICS = {"top1": True, "mse": False, "perplexity": False}
LOSSES = ("cross_entropy", "mse")
MATCHING_LOSS = {"top1": "cross_entropy", "mse": "mse", "perplexity": "cross_entropy"}


class DataSection(Section):
    factory: str = Field(description="'package.module:function' returning edgeship.data.Splits "
                                     "(or a mapping with train, calibration and test datasets).")
    kwargs: dict = Field(default_factory=dict, description="Keyword arguments for the factory.")
    batch_size: int = Field(64, ge=1, description="Batch size for training and calibration.")
    metric: str = Field(
        "top1", description="Task metric on the test split: top1 (classes), mse (regression), "
                            "perplexity (next-token logits [batch, positions, vocabulary]), or a "
                            "function 'package.module:function' / 'file.py:function' called on "
                            "each batch's outputs and labels, returning a number.")
    higher_is_better: bool | None = Field(
        None, description="Direction of a metric function (required for one); the built-ins "
                          "know theirs (top1 higher, mse and perplexity lower).")
    loss: str | None = Field(
        None, description="Training loss of float training, fine-tuning and QAT: cross_entropy, "
                          "mse or a function (outputs, labels) -> scalar tensor; default: the "
                          "metric's match (top1, perplexity: cross_entropy; mse: mse).")

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        if value not in METRICS and ":" not in value:
            raise ValueError(f"unknown metric {value!r}; allowed: {', '.join(METRICS)}, or a "
                             f"function 'package.module:function' or 'file.py:function'")
        return value

    @field_validator("loss")
    @classmethod
    def _known_loss(cls, value: str | None) -> str | None:
        if value is not None and value not in LOSSES and ":" not in value:
            raise ValueError(f"unknown loss {value!r}; allowed: {', '.join(LOSSES)}, or a "
                             f"function 'package.module:function' or 'file.py:function'")
        return value

    @model_validator(mode="after")
    def _direction_known(self) -> DataSection:
        builtin = METRICS.get(self.metric)
        if builtin is None and self.higher_is_better is None:
            raise ValueError(f"metric {self.metric!r} is a function: set data.higher_is_better "
                             f"(true when a larger value is better)")
        if builtin is not None and self.higher_is_better not in (None, builtin):
            raise ValueError(f"higher_is_better = {self.higher_is_better} contradicts metric "
                             f"{self.metric!r}, where {'higher' if builtin else 'lower'} is better; "
                             f"leave it out")
        return self


class Teacher(Section):
    """A separate, usually larger, trained network to distil from."""

    factory: str = Field(description="'package.module:function' or 'path/to/file.py:function' "
                                     "returning the teacher nn.Module; paths are relative to the recipe.")
    kwargs: dict = Field(default_factory=dict, description="Keyword arguments for the factory.")
    weights: str | None = Field(
        None, description="A state_dict file (torch.save) loaded into the teacher with "
                          "weights_only=True, relative to the recipe; default: the factory's weights.")


class Distillation(Section):
    """Knowledge distillation: the student learns the teacher's outputs as well as the labels."""

    weight: float = Field(0.5, ge=0, le=1, description="Share of the distillation loss; the rest "
                                                      "is the task loss on the labels (data.loss).")
    # 1, not Hinton's 4: QAT fine-tunes a student that already agrees with its teacher, and at
    # T = 4 the T²-scaled soft loss outweighed the labels (MobileNetV2 example, fbgemm: top-1
    # 0.924 at T = 4, 0.988 at T = 1, 0.986 without distillation).
    temperature: PositiveFloat = Field(1.0, description="Softmax temperature of both models (kl).")
    loss: Literal["kl", "mse"] = Field(
        "kl", description="kl: Hinton's T²-scaled KL divergence of the softened outputs; mse: "
                          "squared error between the two models' logits.")
    teacher: Teacher | None = Field(
        None, description="The network to distil from; default in QAT: the float model. Float "
                          "training (model.train.distillation) needs one.")


class Distributed(Section):
    """QAT on several workers, each training on its shard of the train split under
    DistributedDataParallel; rank 0's weights come back. engine "torchrun": processes on this
    machine; engine "ray": Ray Train workers on the Ray cluster of [cluster]."""

    engine: Literal["torchrun", "ray"] = Field(
        "torchrun", description="torchrun: processes on this machine; ray: Ray Train's TorchTrainer "
                                "on a Ray cluster (pip install 'edgeship[ray]').")
    processes: int | None = Field(None, ge=2, description="torchrun: processes on this machine "
                                                          "(--nproc-per-node).")
    workers: int | None = Field(None, ge=2, description="ray: Ray Train workers, placed by Ray on the "
                                                        "cluster's nodes.")
    use_gpu: bool = Field(False, description="ray: a GPU per worker (nccl); otherwise CPU (gloo).")
    backend: Literal["auto", "gloo", "nccl"] = Field(
        "auto", description="torchrun: collective backend, gloo on CPU, nccl on CUDA GPUs (one per "
                            "process); auto picks nccl when CUDA is available.")

    @model_validator(mode="after")
    def _count_for_the_engine(self) -> Distributed:
        wanted, other = ("processes", "workers") if self.engine == "torchrun" else ("workers", "processes")
        if getattr(self, other) is not None:
            raise ValueError(f"{other} is for engine = {'torchrun' if other == 'processes' else 'ray'!r}; "
                             f"engine = {self.engine!r} takes {wanted}")
        if getattr(self, wanted) is None:
            raise ValueError(f"engine = {self.engine!r} needs {wanted} (2 or more)")
        if self.engine == "torchrun" and self.use_gpu:
            raise ValueError("use_gpu is for engine = 'ray'; torchrun takes backend = 'nccl'")
        if self.engine == "ray" and self.backend != "auto":
            raise ValueError("backend is for engine = 'torchrun'; Ray Train takes gloo, or nccl with use_gpu")
        return self

    @property
    def count(self) -> int:
        """How many ranks train: processes (torchrun) or workers (ray)."""
        return self.processes or self.workers

    @property
    def count_key(self) -> str:
        return "processes" if self.engine == "torchrun" else "workers"


class Cluster(Section):
    """The Ray cluster the run joins before any work (pip install 'edgeship[ray]'): exports and
    verifications run there as Ray tasks, and QAT with quantization.qat.distributed.engine = "ray"
    under Ray Train."""

    address: str = Field(
        "auto", min_length=1,
        description="auto: the cluster RAY_ADDRESS names, or the one `ray start` started on this "
                    "machine; local: a cluster started in this process for the run; HOST:PORT or "
                    "ray://HOST:PORT: that cluster.")

    @field_validator("address")
    @classmethod
    def _an_address(cls, value: str) -> str:
        if value not in ("auto", "local"):
            host, _, port = value.removeprefix("ray://").rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{value!r} is not an address: auto, local, HOST:PORT or ray://HOST:PORT")
        return value


class QATSection(Section):
    """Each knob left out is chosen by edgeship (quantize/qat_settings.py) and the report says
    which values came from the recipe, from the learning-rate probe, or from a default."""

    enabled: bool = Field(True, description="Fine-tune with fake quantization after calibration.")
    epochs: int = Field(2, ge=1, description="QAT epochs over the train split.")
    lr: PositiveFloat | None = Field(
        None, description="Learning rate; default: chosen by a short probe of a few rates on a "
                          "slice of the train split, scored on the held-out split.")
    optimizer: Literal["sgd", "adam"] | None = Field(
        None, description="SGD (with momentum) or Adam; default: chosen by the same probe.")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum.")
    freeze_bn_after_epochs: int | Literal["never"] | None = Field(
        None, description="Stop updating batch-norm statistics after this many epochs; default: "
                          "half-way (epochs // 2), none in a 1-epoch run.")
    freeze_observers_after_epochs: int | Literal["never"] | None = Field(
        None, description="Stop moving the quantization ranges after this many epochs; default: "
                          "before the last epoch, none in a 1-epoch run.")
    anchor: float = Field(
        0.01, ge=0, description="L2-SP pull toward the calibrated weights: the loss gains "
                                "anchor / 2 x the squared distance from them; 0 turns it off.")
    trainable: list[str] | None = Field(
        None, description="Train only parameters under these module names (e.g. ['classifier'] "
                          "for the head); default: all.")
    distillation: Distillation | None = Field(
        None, description="Distil from the float model, or from distillation.teacher.")
    distributed: Distributed | None = Field(None, description="Fine-tune on several processes.")

    @field_validator("freeze_bn_after_epochs", "freeze_observers_after_epochs")
    @classmethod
    def _non_negative(cls, value: int | str | None) -> int | str | None:
        if isinstance(value, int) and value < 0:
            raise ValueError("must be >= 0 or 'never'")
        return value


class Fallback(Section):
    """Accuracy-aware fallback: leave the most sensitive layers in float, one at a time."""

    max_accuracy_drop: float = Field(ge=0, le=100, description="Target drop of the metric (top1: "
                                     "in points; others: in their units), measured on the "
                                     "calibration split (the test split stays unseen).")
    max_float_layers: int = Field(4, ge=1, description="Give up after this many float layers.")


class QuantizationSection(Section):
    mode: Literal["static", "dynamic"] = Field(
        "static", description="static: int8 activations with ranges from calibration (and QAT); "
                              "dynamic: int8 weights, activations quantized at run time (Linear, "
                              "LSTM, GRU).")
    modes: dict[str, Literal["static", "dynamic"]] = Field(
        default_factory=dict, description="Per-target override of mode, e.g. {onnx-int8 = 'dynamic'}.")
    calibration_batches: int = Field(
        8, ge=1, description="Batches of the calibration split the observers see.")
    observer: Literal["minmax", "moving_average_minmax", "histogram"] | None = Field(
        None, description="Activation observer for post-training calibration; default: each "
                          "flow's own (histogram).")
    per_channel: bool = Field(True, description="Per-channel weight scales (else per tensor), for "
                                                "static quantization; dynamic paths keep their "
                                                "runtime's default.")
    sensitivity: bool = Field(False, description="Measure each layer's accuracy cost, per flow.")
    fallback: Fallback | None = Field(None, description="Keep sensitive layers float until the "
                                                        "accuracy target is met.")
    float_layers: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=list, description="Module names (as model.named_modules() gives them, e.g. "
                                          "'features.0' or 'classifier') every flow keeps float, "
                                          "with all they contain, static and dynamic.")
    qat: QATSection = Field(default_factory=QATSection)

    @field_validator("float_layers")
    @classmethod
    def _float_layers_once(cls, names: list[str]) -> list[str]:
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"names {', '.join(map(repr, twice))} more than once")
        return names

    @model_validator(mode="after")
    def _observer_is_for_ptq(self) -> QuantizationSection:
        if self.observer is not None and self.qat.enabled:
            raise ValueError("observer applies to post-training calibration; QAT observes with "
                             "moving-average fake quantization. Set qat.enabled = false or remove "
                             "observer")
        return self


class PruneSection(Section):
    """Pruning before quantization (torch.nn.utils.prune), made permanent, then fine-tuned."""

    method: Literal["l1_unstructured", "ln_structured"] = Field(
        "l1_unstructured", description="Single weights by magnitude, or whole output channels "
                                       "by L1 norm.")
    amount: dict[Literal["conv", "linear"], Annotated[float, Field(ge=0, lt=1)]] = Field(
        description="Fraction of weights (or channels) to prune per layer type.")
    finetune_epochs: int = Field(2, ge=0, description="Float fine-tuning after pruning.")
    lr: PositiveFloat = Field(1e-3, description="Adam learning rate of that fine-tuning.")


class Budget(Section):
    """Limits one release must meet. Applies to the int8 targets unless `targets` names others."""

    targets: list[str] | None = Field(None, description="Target names; default: every int8 target.")
    devices: list[str] | None = Field(None, description="Device names; default: every device.")
    max_accuracy_drop: float | None = Field(
        None, ge=0, le=100, description="How much worse the artifact's metric is than the float "
                                        "model's: top1 in percentage points (0.5 = half a "
                                        "point), other metrics in their own units.")
    max_size_mb: PositiveFloat | None = Field(None, description="Artifact size, 10^6 bytes, "
                                                                "external data included.")
    max_latency_p50_ms: PositiveFloat | None = Field(None, description="p50 latency per device.")
    max_latency_p90_ms: PositiveFloat | None = Field(None, description="p90 latency per device.")
    max_peak_rss_mb: PositiveFloat | None = Field(None, description="Peak RSS of the runner.")
    min_accuracy: float | None = Field(None, ge=0, le=1, description="Artifact top-1, a fraction "
                                                                     "0..1 like the report's.")
    min_metric: float | None = Field(None, description="Artifact metric at least this (a metric "
                                                       "where higher is better), in its units.")
    max_metric: float | None = Field(None, description="Artifact metric at most this (mse, "
                                                       "perplexity, ...), in its units.")
    min_int8_fraction: float | None = Field(
        None, ge=0, le=1, description="Share of the artifact's multiply-accumulates that run int8 "
                                      "kernels, read from the artifact itself (0..1).")
    min_emulated_agreement: float | None = Field(
        None, ge=0, le=1, description="Top-1 agreement of the artifact's answers on every emulated "
                                      "ARM device (a `qemu` profile in `devices`) with its answers "
                                      "here, 0..1; a crash there fails it.")
    max_regression: list[str] | None = Field(
        None, min_length=1, description="Limits relative to a baseline report (--baseline), e.g. "
                                        "['median:5%', 'size:2%', 'accuracy:-0.5']; not evaluated "
                                        "without one.")

    @field_validator("targets")
    @classmethod
    def _known_targets(cls, names: list[str] | None) -> list[str] | None:
        for name in names or []:
            if name not in TARGETS:
                raise ValueError(f"unknown target {name!r}; known: {known_targets()}")
        return names

    @field_validator("max_regression")
    @classmethod
    def _expressions_parse(cls, texts: list[str] | None) -> list[str] | None:
        for text in texts or []:
            parse_regression(text)  # its ValueError names the accepted forms
        return texts

    @model_validator(mode="after")
    def _has_a_limit(self) -> Budget:
        if not self.limits() and not self.max_regression:
            raise ValueError(f"a budget needs at least one limit: {', '.join(ABSOLUTE_LIMITS)} "
                             "or max_regression")
        return self

    def limits(self) -> dict[str, float]:
        """The absolute limits set in this budget (not the baseline-relative ones), by name."""
        return {n: getattr(self, n) for n in ABSOLUTE_LIMITS if getattr(self, n) is not None}

    def regressions(self) -> list[Regression]:
        """The baseline-relative limits, parsed."""
        return [parse_regression(t) for t in self.max_regression or []]


ABSOLUTE_LIMITS = ("max_accuracy_drop", "max_size_mb", "min_accuracy", "min_metric", "max_metric",
                   "min_int8_fraction", "min_emulated_agreement",
                   "max_latency_p50_ms", "max_latency_p90_ms", "max_peak_rss_mb")


class Recipe(Section):
    name: Name = Field(description="Name of this release; shown in reports.")
    # The range torch.manual_seed accepts.
    seed: int = Field(0, ge=-2**63, lt=2**64, description="Seed for training, QAT and data order.")
    model: ModelSection
    data: DataSection
    prune: PruneSection | None = Field(None, description="Prune the float model first.")
    quantization: QuantizationSection = Field(default_factory=QuantizationSection)
    targets: list[str] = Field(min_length=1, description="int8 (or fp32) targets to ship.")
    fp32_twins: bool = Field(True, description="Also build each int8 target's fp32 twin.")
    devices: list[str] = Field(default_factory=lambda: ["local"],
                               description="Device profile names or paths to profile TOML files.")
    benchmark: BenchmarkOverrides = Field(default_factory=BenchmarkOverrides)
    budgets: list[Budget] = Field(default_factory=list)
    cluster: Cluster | None = Field(None, description="A Ray cluster for distributed work.")

    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)

    @model_validator(mode="after")
    def _modes_name_int8_targets(self) -> Recipe:
        for name in self.quantization.modes:
            if name not in self.targets or not TARGETS[name].is_int8:
                int8 = [t for t in self.targets if TARGETS[t].is_int8]
                raise ValueError(f"quantization.modes: {name!r} is not an int8 target of this "
                                 f"recipe; its int8 targets: {', '.join(int8) or 'none'}")
        return self

    @model_validator(mode="after")
    def _batches_split_across_processes(self) -> Recipe:
        distributed = self.quantization.qat.distributed
        if distributed and self.data.batch_size % distributed.count:
            raise ValueError(f"quantization.qat.distributed.{distributed.count_key} = {distributed.count} "
                             f"must divide data.batch_size = {self.data.batch_size}: each rank takes "
                             f"an equal share of every batch")
        return self

    @model_validator(mode="after")
    def _budgets_name_targets_of_this_run(self) -> Recipe:
        # A budget on a target the run does not build would check nothing and pass. Devices are
        # checked by the plan, which loads their profiles (a path's device name is inside it).
        built = self.built_targets()
        for i, budget in enumerate(self.budgets):
            unbuilt = [t for t in budget.targets or [] if t not in built]
            if unbuilt:
                raise ValueError(f"budgets[{i}].targets: {', '.join(map(repr, unbuilt))} not "
                                 f"built by this recipe; its targets: {', '.join(built)}")
        return self

    @model_validator(mode="after")
    def _metric_fits_the_rest(self) -> Recipe:
        """A training loss where anything trains, distillation and budgets that fit the metric."""
        data, q = self.data, self.quantization
        trains = [key for key, on in (("model.train", self.model.train is not None),
                                      ("quantization.qat", q.qat.enabled and any(
                                          TARGETS[t].is_int8 and self.mode(t) == "static" for t in self.targets)),
                                      ("prune.finetune_epochs", bool(self.prune and self.prune.finetune_epochs)))
                  if on]
        if trains and data.loss is None and data.metric not in MATCHING_LOSS:
            raise ValueError(f"data.loss: {trains[0]} trains, and metric {data.metric!r} is a function "
                             f"with no loss of its own: set data.loss to {' or '.join(LOSSES)} or a "
                             f"function (outputs, labels) -> scalar tensor")
        regression = (data.loss or MATCHING_LOSS.get(data.metric)) == "mse"
        for key, d in (("model.train.distillation", self.model.train and self.model.train.distillation),
                       ("quantization.qat.distillation", q.qat.distillation)):
            if d and d.loss == "kl" and regression:
                raise ValueError(f"{key}.loss: 'kl' compares class distributions; a model trained "
                                 f"with mse distils with loss = 'mse'")
        higher = METRICS.get(data.metric, data.higher_is_better)
        for i, budget in enumerate(self.budgets):
            wrong = "max_metric" if higher else "min_metric"
            if getattr(budget, wrong) is not None or (budget.min_accuracy is not None and data.metric != "top1"):
                name = wrong if getattr(budget, wrong) is not None else "min_accuracy"
                right = "min_metric" if higher else "max_metric"
                raise ValueError(f"budgets[{i}].{name}: data.metric {data.metric!r} is "
                                 f"{'higher' if higher else 'lower'}-is-better; use {right}")
        return self

    def built_targets(self) -> list[str]:
        """The recipe's targets, then the fp32 twins it builds beside them."""
        twins = [TARGETS[t].twin for t in self.targets] if self.fp32_twins else []
        return list(dict.fromkeys([*self.targets, *twins]))

    def mode(self, target: str) -> str:
        """static or dynamic, for one int8 target."""
        return self.quantization.modes.get(target, self.quantization.mode)

    @field_validator("targets")
    @classmethod
    def _targets_known_and_unique(cls, names: list[str]) -> list[str]:
        unknown = [name for name in names if name not in TARGETS]
        if unknown:
            said = ", ".join(repr(name) for name in unknown)
            hint = (" (quantization.mode or modes makes a target dynamic)"
                    if any("dynamic" in name for name in unknown) else "")
            raise ValueError(f"unknown target{'s' * (len(unknown) > 1)} {said}; known: {known_targets()}{hint}")
        if len(set(names)) != len(names):
            raise ValueError(f"targets repeat a name: {names}")
        return names

    @property
    def base_dir(self) -> Path:
        """Folder that relative paths in the recipe (model files, device profiles) start from."""
        return self._base_dir

    def with_base_dir(self, base_dir: Path) -> Recipe:
        self._base_dir = base_dir
        return self

    def sha256(self) -> str:
        """Hash of the validated recipe as canonical JSON: comments and layout do not change it."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()


def parse_recipe(data: dict, source: str, base_dir: Path, overrides: dict | None = None) -> Recipe:
    """`data` (a recipe's tables) with `overrides` (`{"qat.epochs": 3}`, as `--set` gives them)
    applied, validated: UserError naming `source` and each key that is wrong."""
    if overrides:
        data = apply_overrides(data, overrides, source)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as e:
        raise UserError("\n".join(f"{source}: {p}" for p in validation_problems(e, Recipe))) from None
    return recipe.with_base_dir(base_dir)


def load_recipe(path: str | Path, overrides: dict | None = None) -> Recipe:
    path = Path(path)
    return parse_recipe(read_toml(path, "recipe"), str(path), path.resolve().parent, overrides)


def parse_recipe_text(text: str, source: str, base_dir: Path, overrides: dict | None = None) -> Recipe:
    return parse_recipe(parse_toml(text, source), source, base_dir, overrides)
