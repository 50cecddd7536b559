"""Raw latency samples beside report.json, not in it: `report.samples.npz` (numpy's compressed
archive, one float64 array per benchmark) keeps the report small. report.json names the file
(`samples_file`) and each benchmark its array (`samples_key`); reading a report fills the
samples back in, so every reader of `Benchmark.samples_ms` works on either form (older reports
hold them inline)."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from edgeship.errors import UserError
from edgeship.report.schema import Benchmark, Report


def samples_name(json_name: str) -> str:
    """report.json → report.samples.npz: a report rewritten under another name keeps its own."""
    return f"{Path(json_name).stem}.samples.npz"


def take_samples(benchmarks: Iterable[tuple[str, Benchmark]]) -> bytes | None:
    """Moves each benchmark's samples into an archive under its key (and names the key in the
    benchmark); the archive's bytes, or None when no benchmark has samples."""
    arrays = {}
    for key, bench in benchmarks:
        if bench.samples_ms:
            bench.samples_key = key
            arrays[key] = np.asarray(bench.samples_ms, dtype=np.float64)
            bench.samples_ms = []
    if not arrays:
        return None
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def split_samples(report: Report, json_name: str) -> tuple[Report, bytes | None]:
    """A copy of `report` that names its samples instead of holding them, and the archive's bytes
    (None when no benchmark has samples)."""
    out = report.model_copy(deep=True)
    data = take_samples((f"a{a}b{b}", bench) for a, artifact in enumerate(out.artifacts)
                        for b, bench in enumerate(artifact.benchmarks))
    out.samples_file = samples_name(json_name) if data is not None else None
    return out, data


def _archive(report: Report, folder: Path) -> Path:
    name = report.samples_file or ""
    if Path(name).name != name or name in ("", ".", ".."):
        raise UserError(f"samples_file {name!r}: must name a file beside the report")
    return folder / name


def attach_samples(report: Report, report_path: Path) -> Report:
    """Fills `samples_ms` of each benchmark from the archive report.json names. A missing archive
    leaves them empty (what needs them says so); one that is not an archive of arrays, or lacks a
    named array, is a UserError naming the file."""
    if report.samples_file is None:
        return report
    path = _archive(report, report_path.parent)
    if not path.is_file():
        return report
    try:
        with np.load(path, allow_pickle=False) as archive:
            for bench in (b for a in report.artifacts for b in a.benchmarks if b.samples_key):
                if bench.samples_key not in archive.files:
                    raise UserError(f"{path}: has no samples {bench.samples_key!r} (for "
                                    f"{bench.device}); it is not this report's samples file")
                bench.samples_ms = archive[bench.samples_key].astype(float).ravel().tolist()
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise UserError(f"{path}: not a samples archive numpy can read ({e})") from None
    return report
