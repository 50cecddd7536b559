"""Writing a decided report: report.json, report.md, junit.xml and report.html in one folder,
each atomically, and report.samples.npz beside report.json (report/samples.py). `edgeship run` and `edgeship gate --write` both publish through here."""

from __future__ import annotations

from pathlib import Path

from edgeship.fileio import write_atomic
from edgeship.gate.budgets import Check
from edgeship.recipe import Budget
from edgeship.report.html import write_html
from edgeship.report.junit import write_junit
from edgeship.report.samples import split_samples
from edgeship.report.schema import Report
from edgeship.report.writers import write_json, write_markdown


def publish(report: Report, decision_checks: list[Check], budgets: list[Budget], folder: Path, *,
            json_name: str = "report.json", baseline: Report | None = None) -> list[Path]:
    """Writes the four files (the JSON under `json_name`), and the raw latency samples beside the
    JSON when there are any, and returns their paths, report.json's first. `decision_checks`: the
    gate's checks (Decision.checks), the cases junit.xml shows; `baseline`: the report the gate
    compared with, whose deltas report.html shows."""
    paths = [folder / json_name, folder / "report.md", folder / "junit.xml", folder / "report.html"]
    stored, samples = split_samples(report, json_name)
    if samples is not None:  # before the report that names it
        paths.append(folder / stored.samples_file)
        write_atomic(paths[-1], samples)
    write_json(stored, paths[0])
    write_markdown(report, paths[1])
    write_junit(report, decision_checks, paths[2])
    write_html(report, budgets, paths[3], baseline)
    return paths
