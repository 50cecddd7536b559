"""The accuracy analyses of a run (pruning, per-layer sensitivity, fallback) as table rows, for
report.md and report.html alike."""

from __future__ import annotations

from edgeship.report.schema import Report

SENSITIVITY_HEADERS = ["flow", "layer", "type", "drop pts, only this layer int8",
                       "drop pts, all but this layer int8"]


def sensitivity_rows(report: Report) -> list[list[str]]:
    return [[s.flow, r.layer, r.type, f"{r.only_this_quantized_drop_points:+.2f}",
             f"{r.all_but_this_quantized_drop_points:+.2f}"]
            for s in report.sensitivity for r in s.rows]


def fallback_lines(report: Report) -> list[str]:
    out = []
    for f in report.fallback:
        kept = ", ".join(f.float_layers) or "none"
        verdict = "met" if f.met else "NOT met; the best set tried is kept"
        path = " → ".join(f"{s.drop_points:.2f}" for s in f.steps)
        out.append(f"{f.flow}: float layers {kept}; drop {f.drop_points:.2f} pts on the "
                   f"calibration split, target {f.max_accuracy_drop:g} {verdict} (drops tried: {path})")
    return out


def prune_line(report: Report) -> str | None:
    p = report.prune
    if p is None:
        return None
    return (f"pruned ({p.method}, {p.amount}): sparsity {p.sparsity.overall:.2f}; top-1 "
            f"{p.accuracy_before:.4f} before, {p.accuracy_pruned:.4f} pruned, "
            f"{p.accuracy_finetuned:.4f} after fine-tuning")


def analysis_markdown(report: Report) -> list[str]:
    lines = []
    if (line := prune_line(report)) is not None:
        lines += [f"- {line}", ""]
    if report.fallback:
        lines += ["**Accuracy-aware fallback**", ""] + [f"- {line}" for line in fallback_lines(report)] + [""]
    if report.sensitivity:
        lines += ["**Sensitivity per layer** (post-training int8, calibration split, worst first)", "",
                  "| " + " | ".join(SENSITIVITY_HEADERS) + " |", "|" + "---|" * len(SENSITIVITY_HEADERS)]
        lines += ["| " + " | ".join(r) + " |" for r in sensitivity_rows(report)] + [""]
    return lines
