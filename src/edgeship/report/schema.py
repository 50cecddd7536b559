"""report.json's schema. Field names are a contract (shared/design.md): add, never rename.
Units are in the key names; MB means 10^6 bytes."""

from __future__ import annotations

import builtins
from typing import Literal

from pydantic import BaseModel, Field, field_validator

from edgeship.devices.profile import DeviceProfile
from edgeship.targets import TARGETS, known_targets

# Every status edgeship writes. A stage is `cached` when all its work came from the stage cache.
StageStatus = Literal["ok", "cached", "skipped", "failed"]
ArtifactStatus = Literal["ok", "failed"]
# A runner that gave no result says how (RunnerFailed.status: timeout, crashed, error,
# unreachable); `skipped`: the device lacks the runtime or engine; `missing`: a budget expected a
# benchmark on a device that has none; `failed`: shown for an artifact that never got measured.
BenchmarkStatus = Literal["ok", "skipped", "missing", "timeout", "crashed", "error", "unreachable",
                          "failed"]


class Stage(BaseModel):
    name: str
    status: StageStatus
    seconds: float
    detail: str = ""


class MetricInfo(BaseModel):
    """The recipe's task metric (edgeship/metrics.py): every `accuracy` field of the report holds
    its value, and every drop (`*drop_points`, budgets' max_accuracy_drop) how much worse it got,
    in `drop_unit` (points for top1: percentage points; the metric's own units otherwise)."""

    name: str = "top1"
    higher_is_better: bool = True
    drop_scale: builtins.float = 100.0  # a drop is the worsening x this

    @property
    def drop_unit(self) -> str:
        return "points" if self.drop_scale == 100 else self.name

    @property
    def label(self) -> str:
        """What tables and plots call the figure: `accuracy` for top1, else the metric's name."""
        return "accuracy" if self.name == "top1" else self.name

    @property
    def short_unit(self) -> str:
        """The drop unit as table headers write it."""
        return "pts" if self.drop_scale == 100 else self.name

    def worsening(self, reference: builtins.float, value: builtins.float) -> builtins.float:
        """How much worse `value` is than `reference`, in drop units (negative: better)."""
        change = reference - value if self.higher_is_better else value - reference
        return change * self.drop_scale

    def is_better(self, a: builtins.float, b: builtins.float) -> bool:
        return a > b if self.higher_is_better else a < b

    def format(self, value: builtins.float | None) -> str:
        return "—" if value is None else f"{value:.4f}" if self.drop_scale == 100 else f"{value:.4g}"

    def format_drop(self, value: builtins.float | None) -> str:
        """A drop or gain in drop units, signed: +0.25 (points), -0.0031 (mse)."""
        if value is None:
            return "—"
        value += 0.0  # no "-0.00"
        return f"{value:+.2f}" if self.drop_scale == 100 else f"{value:+.4g}"

    def shown(self, value: builtins.float | None) -> builtins.float | None:
        """The value as plots draw it: top1 in percent, the others as they are."""
        return None if value is None else value * 100 if self.drop_scale == 100 else value


TOP1 = MetricInfo()


class FloatResult(BaseModel):
    accuracy: float
    train_loss: float | None = None
    warning: str | None = None  # the float model answers near chance: it has not learned the task
    batch_norms: int | None = None  # its batch-norm layers (None: a report written before they were counted)


class EmulatedCheck(BaseModel):
    """One artifact answering on an emulated device (qemu-user: the ARM kernels' own answers)
    against the same artifact's answers here (x86) and against its reference model, on the first
    `samples` test samples."""

    device: str
    cpu: str  # the CPU model qemu emulated
    status: str  # ok, skipped, crashed, timeout, error
    error: str | None = None
    samples: int = 0
    outputs: int = 0  # output values compared
    top1_agreement: float | None = None  # with x86; None: outputs are not class scores
    max_abs_error: float | None = None  # with x86
    differing_outputs: int | None = None  # values not bit-equal to x86's
    one_step_outputs: int | None = None  # of those, how many differ by one output quantization step
    step: float | None = None  # that step, read off the x86 outputs' grid (int8 artifacts)
    reference_top1_agreement: float | None = None
    reference_max_abs_error: float | None = None
    seconds: float | None = None


class Parity(BaseModel):
    """The artifact's outputs against the converted PyTorch model's on the same test inputs."""

    reference: str  # what the artifact was compared with
    top1_agreement: float | None  # argmax agreement (per position for tokens); None: not classes
    max_abs_error: float
    # RMS of the difference over RMS of the reference: how int8 outputs that are not class
    # scores (regression) are held to their reference
    relative_error: float | None = None


class Latency(BaseModel):
    min: float
    p50: float
    p90: float
    p99: float
    mean: float
    stdev: float


class Benchmark(BaseModel):
    device: str
    status: BenchmarkStatus
    error: str = ""
    latency_ms: Latency | None = None
    iterations: int | None = None
    seconds: float | None = None
    valid: bool | None = None
    invalid_reasons: list[str] = Field(default_factory=list)
    load_ms: float | None = None
    first_inference_ms: float | None = None
    peak_rss_mb: float | None = None
    rss_delta_mb: float | None = None
    threads: int | None = None
    cpu_affinity: list[int] | None = None
    runtime: dict = Field(default_factory=dict)
    # The device as the runner saw it: cpu, arch, cores, int8_isa, the cpus that ran, and
    # governor / MHz / thermal zones before and after the timed runs, where readable.
    system: dict = Field(default_factory=dict)
    # With `repetitions` > 1: each fresh process's own median, the spread between processes
    # (latency_ms and the samples hold all processes' runs together).
    process_p50_ms: list[float] | None = None
    # With `profile = true`: {runs, ms_per_run, ops[{name, op, kernel, ms, calls, nested}],
    # ms_by_op_type}, or {error}; from a process of its own, after the timed runs.
    profile: dict | None = None
    cached: bool = False  # taken from the stage cache of an earlier run, not measured in this one
    # The runner's raw timed runs, in order. Written to the report's samples file (samples_key
    # names the array there), read back into this field; older reports hold them inline.
    samples_ms: list[float] = Field(default_factory=list)
    samples_key: str | None = None
    # int8 only: {latency_p50_ratio, peak_rss_ratio} to its fp32 twin on the same device (>1: int8 is more)
    vs_fp32: dict | None = None


class FloatOp(BaseModel):
    name: str  # the layer's module path where the artifact keeps it, else the op's own name
    op: str
    macs_fraction: float  # of the artifact's multiply-accumulates
    why: str | None = None  # why it stayed float, where the pipeline knows


class Int8Share(BaseModel):
    """How much of an artifact's arithmetic runs with int8 kernels, read from the artifact itself
    (formats/compute.py): by multiply-accumulates (what `min_int8_fraction` gates) and by weights."""

    macs_fraction: float | None = None  # None: no compute op found, or `error`
    weights_fraction: float | None = None
    macs: int = 0  # per inference, at the exported input shapes
    weights: int = 0
    compute_ops: int = 0
    float_compute_ops: int = 0
    float_ops: list[FloatOp] = Field(default_factory=list)  # the largest float ones first
    error: str | None = None  # why the artifact's ops could not be read

    @property
    def mostly_float(self) -> bool:
        return self.macs_fraction is not None and self.macs_fraction < MOSTLY_INT8


# An int8 target whose artifact runs less than this share of its MACs int8 is "mostly fp32"
MOSTLY_INT8 = 0.5


class Artifact(BaseModel):
    target: str
    format: str
    engine: str
    precision: str
    flow: str | None = None
    status: ArtifactStatus
    error: str = ""
    path: str | None = None  # relative to the run folder
    files: list[str] = Field(default_factory=list)
    sha256: str | None = None
    size_bytes: int | None = None
    accuracy: float | None = None
    parity: Parity | None = None
    details: dict = Field(default_factory=dict)
    int8_share: Int8Share | None = None
    benchmarks: list[Benchmark] = Field(default_factory=list)
    emulated: list[EmulatedCheck] = Field(default_factory=list)  # answers on emulated ARM devices

    @property
    def precision_shown(self) -> str:
        """The precision the tables show: an int8 target's artifact that runs most of its MACs in
        float is `mostly fp32`, whatever its target is called."""
        if self.precision == "int8" and self.int8_share is not None and self.int8_share.mostly_float:
            return "mostly fp32"
        return self.precision

    @field_validator("target")
    @classmethod
    def _known_target(cls, name: str) -> str:
        # The gate, the writers and the plots look every artifact's target up (its precision,
        # its fp32 twin): a name this edgeship does not know is a report it cannot have written.
        if name not in TARGETS:
            raise ValueError(f"unknown target {name!r}; known: {known_targets()}")
        return name


class Sparsity(BaseModel):
    overall: float  # zero weights over all pruned layers, a fraction
    layers: dict[str, float]  # per pruned layer


class PruneResult(BaseModel):
    """The prune stage: what was pruned and the float accuracy before, pruned, and fine-tuned."""

    method: str
    amount: dict[str, float]  # per layer type (conv, linear)
    sparsity: Sparsity
    accuracy_before: float
    accuracy_pruned: float
    accuracy_finetuned: float


class SensitivityRow(BaseModel):
    layer: str
    type: str
    only_this_quantized_drop_points: float
    all_but_this_quantized_drop_points: float


class SensitivityResult(BaseModel):
    """Per-layer accuracy cost of one flow's post-training int8, worst first."""

    flow: str
    split: str  # the split it was measured on (calibration: the test split stays unseen)
    float_accuracy: float
    rows: list[SensitivityRow]


class FallbackStep(BaseModel):
    float_layers: list[str]
    drop_points: float


class FallbackResult(BaseModel):
    """Accuracy-aware fallback of one flow: the float layers kept and the drops tried."""

    flow: str
    max_accuracy_drop: float
    met: bool
    float_layers: list[str]
    drop_points: float
    steps: list[FallbackStep]


class QatEpoch(BaseModel):
    epoch: int  # 0: the calibrated state, before any fine-tuning
    accuracy: float  # the metric of the fake-quant model on the scoring split
    loss: float | None = None  # that epoch's mean training loss


class QatSetting(BaseModel):
    value: float | int | str | None = None  # None: never (a freeze that does not happen)
    source: Literal["recipe", "probe", "default"]


class QatTrial(BaseModel):
    optimizer: str
    lr: float
    loss: float | None = None  # task loss on the scoring split after the probe's steps; None: diverged
    accuracy: float | None = None  # the task metric there; None: diverged
    moved: float | None = None  # |w - w0| / |w0|: how far its steps moved the weights
    p_worse: float | None = None  # one-sided Wilcoxon p that its loss is above the lowest trial's
    worse: bool = False  # p_worse below the probe's significance: not a candidate for the choice


class QatProbe(BaseModel):
    """The learning-rate probe: each candidate fine-tuned `steps` steps from the calibrated
    state, scored on the same split as QAT; of the candidates not worse than the lowest loss
    beyond noise (not `worse`), the one that moved the weights furthest was chosen."""

    steps: int
    seconds: float
    calibrated_loss: float
    trials: list[QatTrial]


class QatHistory(BaseModel):
    """One flow's QAT, scored after calibration and after every epoch on a split it never trains
    on; the best state ships (a tie keeps the earlier one)."""

    split: Literal["validation", "calibration"]
    epochs: list[QatEpoch]
    shipped_epoch: int  # 0: fine-tuning did not beat calibration, the calibrated state shipped
    diverged: str | None = None  # why fine-tuning stopped early: its loss stopped being finite
    # After conversion, on the same split: the best QAT state against the same flow's
    # post-training (calibration only) model
    qat_accuracy: float | None = None
    post_training_accuracy: float | None = None
    shipped: Literal["qat", "post-training"] = "qat"
    # Both models' mean cross-entropy on the split, the samples only one of them answers right,
    # and the one-sided Wilcoxon signed-rank p that QAT's per-sample loss is the lower: QAT ships
    # only when p < 0.05, its mean loss is lower and its top-1 no lower (post_training.py)
    qat_loss: float | None = None
    post_training_loss: float | None = None
    qat_only_right: int | None = None
    post_training_only_right: int | None = None
    p_value: float | None = None
    settings: dict[str, QatSetting] = {}  # what QAT ran with, and where each value came from
    probe: QatProbe | None = None  # when the recipe left the learning rate out
    train_seconds: float | None = None  # QAT's own: the fine-tune and its scores, without the probe


class QuantizationDetails(BaseModel):
    """How an int8 artifact was quantized; report.json has it in the artifact's
    `details.quantization` (the fields that apply to its mode)."""

    mode: Literal["static", "dynamic"]
    qat: bool
    per_channel: bool
    observer: str | None = None  # static: fake-quant (QAT) or the calibration observer
    float_layers: list[str] | None = None  # static: module names left float
    float_layers_required: dict[str, str] | None = None  # static: left float by the flow, and why
    float_layers_recipe: list[str] | None = None  # named in the recipe's quantization.float_layers
    dynamic_layers: dict[str, str] | None = None  # static: quantized dynamically inside it, and why
    # static, quantized in PyTorch: ops an attention mask's huge values reach a softmax through,
    # left float ("module: op"; quantize/mask_paths.py)
    float_for_masks: list[str] | None = None
    qat_distributed: dict | None = None  # static with distributed QAT: how it ran
    qat_history: QatHistory | None = None  # static with QAT: its scores, and which state shipped
    runtime_quantizer: dict | None = None  # static, made by the runtime's own quantizer: its settings
    layers: str | None = None  # dynamic: which layer types its path quantizes


class DeviceFacts(DeviceProfile):
    """A device profile as a run used it: benchmark settings with the recipe's overrides, and
    for `arch = "auto"` the host's facts read at run time."""

    cpu: str | None = None


class Violation(BaseModel):
    budget: int  # index in the recipe's [[budgets]]
    target: str
    device: str | None = None
    limit_name: str
    limit: float
    measured: float | None
    message: str
    baseline: float | None = None  # the baseline report's figure, for a max_regression expression


class Gate(BaseModel):
    passed: bool
    violations: list[Violation] = Field(default_factory=list)


class ClosestBudget(BaseModel):
    """The failed check nearest to passing: smallest relative excess over its limit."""

    target: str
    limit_name: str
    excess: float | None  # relative: 0.08 = 8% past the limit; None: not measured
    message: str


class Recommendation(BaseModel):
    """What to ship on one device: the fastest artifact meeting every budget, or none."""

    device: str
    target: str | None  # None: no artifact meets every budget on this device
    p50_ms: float | None = None
    candidates: int  # artifacts measured on this device
    meeting: int  # of those, how many meet every budget
    closest: ClosestBudget | None = None  # when target is None
    statement: str  # one plain sentence, shown in the console, report.md and report.html


class Report(BaseModel):
    edgeship_version: str
    recipe_name: str
    recipe_sha256: str
    environment: dict
    stages: list[Stage] = Field(default_factory=list)
    float: FloatResult | None = None
    metric: MetricInfo = TOP1  # what every accuracy figure and drop is (reports without it: top1)
    artifacts: list[Artifact] = Field(default_factory=list)
    gate: Gate | None = None
    devices: list[DeviceFacts] = Field(default_factory=list)
    prune: PruneResult | None = None
    sensitivity: list[SensitivityResult] = Field(default_factory=list)  # per flow
    fallback: list[FallbackResult] = Field(default_factory=list)  # per flow
    budgets: list[dict] = Field(default_factory=list)  # the recipe's [[budgets]], as validated
    recommendations: list[Recommendation] = Field(default_factory=list)
    exit_code: int = 0
    wall_seconds: builtins.float | None = None  # `float` is a field name in this class
    samples_file: str | None = None  # the raw latency samples, beside report.json (report/samples.py)

    def artifact(self, target: str) -> Artifact:
        for a in self.artifacts:
            if a.target == target:
                return a
        raise KeyError(f"no artifact for target {target!r} in this report")


class ModelRun(BaseModel):
    """One input set of `edgeship bench MODEL` and its benchmark on the device."""

    inputs: list[str]  # NAME:1x3x224x224:float32 each (from --inputs: dtype[shape])
    benchmark: Benchmark


class ModelBenchReport(BaseModel):
    """report.json of `edgeship bench MODEL`: a model file made by anything, measured on one
    device (the pipeline's Report is per target; this one is per input set)."""

    edgeship_version: str
    kind: Literal["model-bench"] = "model-bench"
    model: str
    format: str
    sha256: str
    size_bytes: int
    inputs_from: str  # --inputs FILE, --input, or the file's metadata
    device: str
    environment: dict
    runs: list[ModelRun] = Field(default_factory=list)
    limits: dict[str, builtins.float] = Field(default_factory=dict)
    # limits of --budgets that apply but need what a bare file lacks (float model, baseline)
    limits_not_checked: list[str] = Field(default_factory=list)
    gate: Gate
    exit_code: int = 0
    samples_file: str | None = None
