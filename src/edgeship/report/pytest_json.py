"""An edgeship report in pytest-benchmark's JSON schema, so its tools read edgeship's results:

    edgeship bench report.json --benchmark-json a.json
    pytest-benchmark compare a.json b.json --columns=min,median,iqr,ops
    pytest-benchmark compare --between=median a.json b.json

One pytest-benchmark entry per measured (artifact, device): name `onnx-int8[local]`, group the
device, stats computed from the runner's raw samples in seconds (pytest-benchmark's unit), each
sample one round of one iteration. The statistics are pytest-benchmark's own definitions
(`pytest_benchmark/stats.py`: sample stddev, quartiles by its methods 2 and 3, Tukey fences), so a
`median:5%` or `iqr:0.001` check means the same on edgeship's files as on a pytest run's.
pytest-benchmark itself is not needed to write the file.
"""

from __future__ import annotations

import json
import statistics
from bisect import bisect_left, bisect_right
from datetime import datetime, timezone
from pathlib import Path

from edgeship.errors import UserError
from edgeship.fileio import write_atomic
from edgeship.report.schema import Artifact, Benchmark, Report

# The pytest-benchmark release whose loader and comparison this output is tested with.
SCHEMA_VERSION = "5.3.1"


def _quartiles(data: list[float]) -> tuple[float, float]:
    """Q1, Q3 of sorted `data` as pytest-benchmark computes them (Wikipedia's methods 3 and 2)."""
    n = len(data)
    if n == 1:
        return data[0], data[0]
    if n % 2:
        k, r = n // 4, n % 4
        if r == 1:
            return (0.25 * data[k - 1] + 0.75 * data[k],
                    0.75 * data[3 * k] + 0.25 * data[3 * k + 1])
        return (0.75 * data[k] + 0.25 * data[k + 1],
                0.25 * data[3 * k + 1] + 0.75 * data[3 * k + 2])
    return statistics.median(data[: n // 2]), statistics.median(data[n // 2:])


def stats_seconds(samples_ms: list[float], with_data: bool = True) -> dict:
    """pytest-benchmark's `stats` object for raw latency samples given in milliseconds; the
    samples themselves (`data`) only `with_data`, as pytest-benchmark's --benchmark-save-data."""
    if not samples_ms:
        raise ValueError("no latency samples")
    data = [s / 1e3 for s in samples_ms]
    ordered = sorted(data)
    mean = statistics.mean(data)
    stddev = statistics.stdev(data) if len(data) > 1 else 0.0
    q1, q3 = _quartiles(ordered)
    iqr = q3 - q1
    low, high = q1 - 1.5 * iqr, q3 + 1.5 * iqr
    iqr_outliers = sum(1 for v in data if v < low or v > high)
    stddev_outliers = sum(1 for v in data if v < mean - stddev or v > mean + stddev)
    total = sum(data)
    return {
        "min": ordered[0], "max": ordered[-1], "mean": mean, "stddev": stddev,
        "rounds": len(data), "median": statistics.median(ordered), "iqr": iqr, "q1": q1, "q3": q3,
        "iqr_outliers": iqr_outliers, "stddev_outliers": stddev_outliers,
        "outliers": f"{stddev_outliers};{iqr_outliers}",
        "ld15iqr": ordered[0] if len(data) == 1 else ordered[bisect_left(ordered, low)],
        "hd15iqr": ordered[-1] if len(data) == 1 else ordered[bisect_right(ordered, high) - 1],
        "ops": len(data) / total if total else 0,
        "total": total, "iterations": 1, **({"data": data} if with_data else {}),
    }


def _machine_info(report: Report) -> dict:
    """pytest-benchmark's keys, filled from what the report knows of the host that ran edgeship.
    The devices measured on (maybe not this host) are under `edgeship_devices`."""
    env = report.environment
    host = env.get("host", {})
    system, _, release = str(host.get("os", "")).partition(" ")
    return {
        "machine": host.get("arch"), "processor": host.get("arch"), "system": system or None,
        "release": release or None, "python_implementation": "CPython",
        "python_version": env.get("python"),
        "cpu": {"brand_raw": host.get("cpu"), "count": host.get("cores"), "arch": host.get("arch")},
        "edgeship_devices": [d.model_dump(mode="json") for d in report.devices],
    }


def _commit_info(report: Report) -> dict:
    """The report records no commit; pytest-benchmark's keys with its own 'unknown' values."""
    git = report.environment.get("git") or {}
    return {"id": git.get("id", "unknown"), "time": git.get("time"), "author_time": None,
            "dirty": bool(git.get("dirty", False)), "project": report.recipe_name,
            "branch": git.get("branch", "(unknown)")}


def _entry(report: Report, artifact: Artifact, bench: Benchmark, with_data: bool) -> dict:
    name = f"{artifact.target}[{bench.device}]"
    lat = bench.latency_ms
    return {
        "group": bench.device,
        "name": name,
        "fullname": f"edgeship/{report.recipe_name}::{name}",
        "params": {"device": bench.device},
        "param": bench.device,
        "extra_info": {
            "target": artifact.target, "precision": artifact.precision, "format": artifact.format,
            "engine": artifact.engine, "sha256": artifact.sha256, "size_bytes": artifact.size_bytes,
            "accuracy": artifact.accuracy, "p90_ms": lat.p90 if lat else None,
            "p99_ms": lat.p99 if lat else None, "load_ms": bench.load_ms,
            "first_inference_ms": bench.first_inference_ms, "peak_rss_mb": bench.peak_rss_mb,
            "rss_delta_mb": bench.rss_delta_mb, "valid": bench.valid,
            "invalid_reasons": bench.invalid_reasons, "threads": bench.threads,
            "cpu_affinity": bench.cpu_affinity, "runtime": bench.runtime, "vs_fp32": bench.vs_fp32,
        },
        # each sample is one timed call, read with time.perf_counter_ns on the device
        "options": {"timer": "time.perf_counter_ns", "disable_gc": True, "warmup": True},
        "stats": stats_seconds(bench.samples_ms, with_data),
    }


def to_pytest_benchmark(report: Report, now: datetime | None = None, *, with_data: bool = False) -> dict:
    """The pytest-benchmark JSON document for every measured benchmark in `report`.

    Benchmarks that did not run (skipped, failed, timeout) have no figures and are left out, as
    pytest-benchmark leaves out a benchmark that raised. A measured one without raw samples (a
    report written before edgeship stored them) cannot give quartiles: UserError."""
    measured = [(a, b) for a in report.artifacts for b in a.benchmarks if b.status == "ok"]
    lacking = [f"{a.target}[{b.device}]" for a, b in measured if not b.samples_ms]
    if lacking:
        raise UserError(f"report has no raw latency samples for {', '.join(lacking)} (written by an "
                        f"edgeship that did not keep them): run the benchmark again")
    return {
        "machine_info": _machine_info(report),
        "commit_info": _commit_info(report),
        "benchmarks": [_entry(report, a, b, with_data) for a, b in measured],
        "datetime": (now or datetime.now(timezone.utc)).isoformat(),
        "version": SCHEMA_VERSION,
        "edgeship": {"version": report.edgeship_version, "recipe_name": report.recipe_name,
                     "recipe_sha256": report.recipe_sha256},
    }


def write_pytest_benchmark(report: Report, path: Path, *, with_data: bool = False) -> int:
    """Writes the document to `path` (atomically); returns how many benchmarks it holds."""
    if path.is_dir():
        raise UserError(f"--benchmark-json {path}: is a folder; give the path of a file to write, "
                        f"such as {path / 'benchmarks.json'}")
    document = to_pytest_benchmark(report, with_data=with_data)
    try:
        write_atomic(path, json.dumps(document, indent=2) + "\n")
    except OSError as e:  # a parent that is a file, a read-only folder: the user's path
        raise UserError(f"--benchmark-json {path}: cannot write it: {e.strerror or e}") from None
    return len(document["benchmarks"])
