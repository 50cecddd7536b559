"""What the tables cannot say at a glance, said in one plain line each under them (console,
report.md, report.html): an int8 artifact notably worse or better than the float model, slower or
larger than its fp32 twin, or running mostly float; and the twin ratios the tables show."""

from __future__ import annotations

from edgeship.gate.notable import notably, notably_worse
from edgeship.report.compare import latency_test
from edgeship.report.schema import Artifact, Benchmark, Report
from edgeship.targets import get_target


def twin_of(artifacts: list[Artifact], artifact: Artifact) -> Artifact | None:
    """The int8 artifact's fp32 twin among `artifacts`; None for an fp32 artifact or a missing twin."""
    twin_name = get_target(artifact.target).twin
    if twin_name == artifact.target:
        return None
    return next((a for a in artifacts if a.target == twin_name), None)


def twin_benchmark(artifacts: list[Artifact], artifact: Artifact, bench: Benchmark) -> Benchmark | None:
    """The fp32 twin's benchmark on the device of `bench`, if there is one."""
    twin = twin_of(artifacts, artifact)
    return next((b for b in twin.benchmarks if b.device == bench.device), None) if twin else None


def size_ratio(report: Report, artifact: Artifact) -> float | None:
    twin = twin_of(report.artifacts, artifact)
    if twin is None or not twin.size_bytes or artifact.size_bytes is None:
        return None
    return artifact.size_bytes / twin.size_bytes


def latency_ratio(report: Report, artifact: Artifact, bench: Benchmark) -> float | None:
    # Computed, not read from bench.vs_fp32: stored reports from before that field have none.
    twin_bench = twin_benchmark(report.artifacts, artifact, bench)
    if not (bench.latency_ms and twin_bench and twin_bench.latency_ms):
        return None
    return bench.latency_ms.p50 / twin_bench.latency_ms.p50


def int8_slower(report: Report) -> list[str]:
    """One plain sentence per device where an int8 artifact is slower than its fp32 twin, tested
    on both runs' raw samples (the median ratio's 95% interval above 1; report/compare.py):
    `onnx-int8 is 1.49x slower than onnx-fp32 on local (p50 0.025 vs 0.017 ms, 95% CI 1.47–1.51)`.
    Without samples (an older report) the p50 ratio alone, said untested."""
    out = []
    for a in report.artifacts:
        for b in a.benchmarks:
            ratio = latency_ratio(report, a, b)
            if ratio is None or round(ratio, 2) <= 1.0:
                continue
            base = twin_benchmark(report.artifacts, a, b)
            test = latency_test(base, b)
            if test is not None and test.verdict != "slower":
                continue
            tested = f"95% CI {test.interval()}" if test else "not tested against noise: no raw samples"
            out.append(f"{a.target} is {ratio:.2f}x slower than {get_target(a.target).twin} on {b.device} "
                       f"(p50 {b.latency_ms.p50:.3f} vs {base.latency_ms.p50:.3f} ms, {tested})")
    return out


def int8_bigger(report: Report) -> list[str]:
    """One plain sentence per int8 artifact larger than its fp32 twin (an LSTM unrolled for int8
    kernels, scales outweighing small weights): `executorch-xnnpack is 1.66x the size of
    executorch-fp32 (0.278 vs 0.167 MB)`."""
    out = []
    for a in report.artifacts:
        ratio = size_ratio(report, a)
        if ratio is not None and round(ratio, 2) > 1.0:
            twin = twin_of(report.artifacts, a)
            out.append(f"{a.target} is {ratio:.2f}x the size of {twin.target} ({a.size_bytes / 1e6:.3f} vs "
                       f"{twin.size_bytes / 1e6:.3f} MB)")
    return out


def int8_worse(report: Report) -> list[str]:
    """One plain sentence per int8 artifact notably worse than the float model that no accuracy
    budget limits (gate/notable.py), so a run without one still says it; the recommendation
    leaves it out: `torchscript-fbgemm is 88.53 points worse than the float model (accuracy
    0.0604 vs 0.9457); no budget …`."""
    metric = report.metric
    return [f"{target} is {by} worse than the float model ({metric.label} "
            f"{metric.format(report.artifact(target).accuracy)} vs {metric.format(report.float.accuracy)}); "
            f"no budget limits it: max_accuracy_drop would gate on it"
            for target, by in notably_worse(report).items()]


def mostly_float(report: Report) -> list[str]:
    """One line per int8 artifact that runs under half its multiply-accumulates with int8 kernels,
    or whose ops could not be read, with its largest float ops and why they stayed float:
    `executorch-xnnpack runs 3% of its multiply-accumulates int8; float: lstm aten.linear 96% (…)`."""
    out = []
    for a in report.artifacts:
        share = a.int8_share
        if a.precision != "int8" or share is None:
            continue
        if share.error:
            out.append(f"{a.target}: its int8 share could not be read from the artifact: {share.error}")
        elif share.mostly_float:
            by_why: dict[str | None, list[str]] = {}  # a reason said once for the ops it covers
            for op in share.float_ops[:3]:
                by_why.setdefault(op.why, []).append(f"{op.name} {op.op} {op.macs_fraction:.0%}")
            floats = "; ".join(", ".join(ops) + (f" ({why})" if why else "") for why, ops in by_why.items())
            out.append(f"{a.target} runs only {share.macs_fraction:.0%} of its multiply-accumulates with "
                       f"int8 kernels; float: {floats}")
    return out


def int8_better(report: Report) -> list[str]:
    """One line per int8 artifact fine-tuned by QAT that is notably better than the float model
    (the same thresholds as int8_worse): QAT's fine-tune improved the model itself (an
    under-trained one, or batch-norm statistics training left off), so the drop column says little
    about what int8 costs (a video net: 0.6962 float, 0.8310 int8)."""
    if report.float is None:
        return []
    # stale running statistics are a cause only for a model that has them (unknown: say it)
    stale = ("; or its batch-norm running statistics out of step with its weights (training ended at a "
             "high learning rate)") if report.float.batch_norms != 0 else ""
    out = []
    for a in report.artifacts:
        history = (a.details.get("quantization") or {}).get("qat_history") or {}
        fine_tuned = history.get("shipped") == "qat" and history.get("shipped_epoch", 0) >= 1
        if a.precision != "int8" or a.accuracy is None or not fine_tuned:
            continue
        by = notably(report, a.accuracy, worse=False)
        if by is not None:
            out.append(f"{a.target} is {by} better than the float model ({report.metric.label} "
                       f"{report.metric.format(a.accuracy)} vs {report.metric.format(report.float.accuracy)}): "
                       f"QAT's fine-tune improved the model itself, so the drop says little about what int8 "
                       f"costs; the float model may be under-trained (model.train){stale}")
    return out


def said(report: Report) -> list[tuple[str, str]]:
    """Every finding as (its label, its line), in the order the console, report.md and report.html
    say them."""
    found = [("int8 worse", int8_worse), ("int8 better", int8_better), ("int8 slower", int8_slower),
             ("int8 bigger", int8_bigger), ("mostly float", mostly_float)]
    return [(label, line) for label, lines in found for line in lines(report)]
