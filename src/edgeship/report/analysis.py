"""The accuracy analyses of a run (pruning, per-layer sensitivity, fallback, QAT's trajectory)
as lines and table rows, for report.md and report.html alike."""

from __future__ import annotations

from edgeship.report.markdown import md_text
from edgeship.report.schema import TOP1, MetricInfo, QatHistory, Report

SENSITIVITY_HEADERS = ["flow", "layer", "type", "drop pts, only this layer int8",
                       "drop pts, all but this layer int8"]


def sensitivity_headers(report: Report) -> list[str]:
    unit = report.metric.short_unit
    return [h.replace("drop pts", f"drop {unit}") for h in SENSITIVITY_HEADERS]


def sensitivity_rows(report: Report) -> list[list[str]]:
    m = report.metric
    return [[s.flow, r.layer, r.type, m.format_drop(r.only_this_quantized_drop_points),
             m.format_drop(r.all_but_this_quantized_drop_points)]
            for s in report.sensitivity for r in s.rows]


def fallback_lines(report: Report) -> list[str]:
    out = []
    for f in report.fallback:
        kept = ", ".join(f.float_layers) or "none"
        verdict = "met" if f.met else "NOT met; the best set tried is kept"
        path = " → ".join(report.metric.format_drop(s.drop_points).lstrip("+") for s in f.steps)
        out.append(f"{f.flow}: float layers {kept}; drop {report.metric.format_drop(f.drop_points).lstrip('+')} "
                   f"{report.metric.short_unit} on the calibration split, target {f.max_accuracy_drop:g} "
                   f"{verdict} (drops tried: {path})")
    return out


def prune_line(report: Report) -> str | None:
    p = report.prune
    if p is None:
        return None
    m = report.metric
    return (f"pruned ({p.method}, {p.amount}): sparsity {p.sparsity.overall:.2f}; "
            f"{'top-1' if m.name == 'top1' else m.name} {m.format(p.accuracy_before)} before, "
            f"{m.format(p.accuracy_pruned)} pruned, {m.format(p.accuracy_finetuned)} after fine-tuning")


def qat_outcome(history: QatHistory, metric: MetricInfo = TOP1) -> str:
    """Which state shipped and why, with the score after calibration and after every epoch."""
    scores = " → ".join(metric.format(e.accuracy) for e in history.epochs)
    what = "top-1" if metric.name == "top1" else metric.name
    tried = f"{what} on the {history.split} split after calibration and each epoch: {scores}"
    if history.post_training_accuracy is not None:
        tried += (f"; converted: QAT {metric.format(history.qat_accuracy)}, calibration only "
                  f"{metric.format(history.post_training_accuracy)}")
    if history.p_value is not None:
        tried += (f"; loss {history.qat_loss:.4f} vs {history.post_training_loss:.4f}, one-sided "
                  f"Wilcoxon p = {history.p_value:.3g}")
        if history.qat_only_right is not None:
            tried += (f"; right only with QAT {history.qat_only_right}, only without "
                      f"{history.post_training_only_right}")
    if history.diverged:
        tried += f"; fine-tuning stopped: {history.diverged}"
    if history.shipped == "post-training" and history.diverged and history.post_training_accuracy is None:
        return f"fine-tuning stopped and QAT's state cannot ship, the post-training model shipped ({tried})"
    if history.shipped == "post-training" and history.post_training_accuracy is not None:
        return (f"did not beat calibration alone beyond the split's noise after conversion, the "
                f"post-training model shipped ({tried})")
    if history.shipped_epoch == 0 and history.post_training_accuracy is not None:
        # converted, QAT's own calibration (fake-quant ranges) beat the post-training observers'
        return (f"fine-tuning did not beat calibration; QAT's calibrated state (its fake-quant "
                f"ranges) beat calibration alone after conversion and shipped ({tried})")
    if history.shipped_epoch == 0:
        return f"fine-tuning did not beat calibration, the calibrated state shipped ({tried})"
    return f"epoch {history.shipped_epoch} of {history.epochs[-1].epoch} shipped ({tried})"


def qat_settings(history: QatHistory) -> str:
    """`lr 0.0001 (probe), optimizer sgd (probe), …; probe …`: what QAT ran with and why."""
    if not history.settings:
        return ""
    said = ", ".join(f"{k} {'never' if v.value is None else f'{v.value:g}' if isinstance(v.value, float) else v.value}"
                     f" ({v.source})" for k, v in history.settings.items())
    if (p := history.probe) is not None:
        tried = ", ".join(f"{t.optimizer} {t.lr:g}: {'diverged' if t.loss is None else f'{t.loss:.4f}'}"
                          f"{_probe_verdict(t)}" for t in p.trials)
        said += (f"; probe: {len(p.trials)} rates x {p.steps} steps in {p.seconds:.1f} s"
                 f"{f' (the fine-tune {history.train_seconds:.1f} s)' if history.train_seconds else ''}"
                 f", loss on the {history.split} split {p.calibrated_loss:.4f} calibrated → {tried}")
    return said


def _probe_verdict(trial) -> str:
    """` (moved 2.1e-04)` for a candidate in the running, ` (worse, p 0.003)` for one out of it."""
    if trial.moved is None:  # a report from before the rule
        return ""
    if trial.worse:
        return f" (worse, p {trial.p_worse:.2g})"
    return f" (moved {trial.moved:.1e})"


def qat_lines(report: Report) -> list[str]:
    """One line per flow fine-tuned with QAT: `fx-fbgemm: epoch 2 of 2 shipped (top-1 …)`."""
    out: dict[str, str] = {}
    for a in report.artifacts:
        found = (a.details.get("quantization") or {}).get("qat_history")
        if found is not None and a.flow not in out:
            history = QatHistory.model_validate(found)
            settings = qat_settings(history)
            out[a.flow] = f"{a.flow}: QAT {qat_outcome(history, report.metric)}" + \
                (f"; ran with {settings}" if settings else "")
    return list(out.values())


def analysis_markdown(report: Report) -> list[str]:
    lines = []
    if qat := qat_lines(report):
        lines += ["**Quantization-aware training**", ""] + [f"- {md_text(line)}" for line in qat] + [""]
    if (line := prune_line(report)) is not None:
        lines += [f"- {md_text(line)}", ""]
    if report.fallback:
        lines += ["**Accuracy-aware fallback**", ""] + [f"- {md_text(line)}" for line in fallback_lines(report)] + [""]
    if report.sensitivity:
        lines += ["**Sensitivity per layer** (post-training int8, calibration split, worst first)", "",
                  "| " + " | ".join(sensitivity_headers(report)) + " |", "|" + "---|" * len(SENSITIVITY_HEADERS)]
        lines += ["| " + " | ".join(map(md_text, r)) + " |" for r in sensitivity_rows(report)] + [""]
    return lines
