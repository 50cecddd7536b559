"""pytest-benchmark's JSON from an edgeship report, read back by pytest-benchmark's own code: its
file loader, its `compare` command, a pytest run's --benchmark-compare-fail; and the int8-vs-fp32
ratios and plain statements."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from pytest_benchmark.logger import Logger
from pytest_benchmark.stats import Stats
from pytest_benchmark.storage.file import FileStorage
from pytest_benchmark.utils import parse_compare_fail

from edgeship import __version__
from edgeship.report.pytest_json import stats_seconds, to_pytest_benchmark
from edgeship.devices.profile import LocalTransport
from edgeship.devices.transports import Local, RunnerCall
from edgeship.environment import environment
from edgeship.pipeline.benchmark import to_benchmark
from edgeship.pipeline.assemble import attach_fp32_ratios
from edgeship.report.load import load_report
from edgeship.report.schema import Artifact, Benchmark, Latency, Report
from edgeship.report.findings import int8_slower
from edgeship.report.writers import markdown, write_json
from support import bench_args, run_cli

DATA = Path(__file__).parent / "data"
PYTEST_BENCHMARK = Path(sys.executable).parent / "pytest-benchmark"


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> Report:
    """A report whose one benchmark is a real runner measurement (Local transport, fresh process)
    of a TorchScript Linear(8, 4), beside one device that was not reached."""
    folder = tmp_path_factory.mktemp("bench-json")
    torch.manual_seed(0)
    example = torch.randn(1, 8)
    path = folder / "torchscript-fp32.pt"
    torch.jit.save(torch.jit.trace(torch.nn.Linear(8, 4).eval(), example), path)
    inputs = folder / "inputs.npz"
    np.savez(inputs, input_0=example.numpy())
    call = RunnerCall("bench", path, (path,), inputs,
                      bench_args(warmup_iterations=5, min_iterations=300, min_seconds=0.1),
                      timeout_seconds=120.0)
    bench = to_benchmark("local", Local(LocalTransport(kind="local")).run(call))
    unreached = Benchmark(device="rpi5", status="unreachable", error="cannot reach rpi5")
    artifact = Artifact(target="torchscript-fp32", format="torchscript", engine="torch",
                        precision="fp32", status="ok", path=path.name, size_bytes=path.stat().st_size,
                        benchmarks=[bench, unreached])
    return Report(edgeship_version=__version__, recipe_name="tiny", recipe_sha256="0" * 64,
                  environment=environment(), artifacts=[artifact])


def slowed(report: Report, factor: float) -> Report:
    """The same report with every latency sample `factor` times longer."""
    copy = report.model_copy(deep=True)
    for a in copy.artifacts:
        for b in a.benchmarks:
            b.samples_ms = [s * factor for s in b.samples_ms]
    return copy


def write_report(report: Report, path: Path) -> Path:
    write_json(report, path)
    return path


def test_stats_are_numpys_on_the_samples_in_seconds(measured):
    bench = measured.artifacts[0].benchmarks[0]
    assert len(bench.samples_ms) == bench.iterations >= 300
    (entry,) = to_pytest_benchmark(measured)["benchmarks"]  # the unreached device is left out
    assert entry["name"] == "torchscript-fp32[local]" and entry["group"] == "local"
    assert entry["fullname"] == "edgeship/tiny::torchscript-fp32[local]"
    assert entry["params"] == {"device": "local"} and entry["extra_info"]["peak_rss_mb"] > 0
    s = entry["stats"]
    seconds = np.asarray(bench.samples_ms) / 1e3
    assert "data" not in s  # pytest-benchmark's default: --benchmark-save-data adds it
    data = to_pytest_benchmark(measured, with_data=True)["benchmarks"][0]["stats"]["data"]
    assert data == pytest.approx(seconds.tolist(), rel=1e-15)
    assert s["rounds"] == len(seconds) and s["iterations"] == 1
    for key, value in {"min": seconds.min(), "max": seconds.max(), "mean": seconds.mean(),
                       "median": np.median(seconds), "stddev": seconds.std(ddof=1),
                       "total": seconds.sum(), "ops": len(seconds) / seconds.sum()}.items():
        assert s[key] == pytest.approx(value, rel=1e-12), key
    # the host's own summary (report.json latency_ms) is the same median, in ms
    assert s["median"] * 1e3 == pytest.approx(bench.latency_ms.p50, rel=1e-12)
    assert s["q1"] <= s["median"] <= s["q3"] and s["iqr"] == pytest.approx(s["q3"] - s["q1"])


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 301])
def test_quartiles_and_outliers_are_pytest_benchmarks_definitions(n):
    samples = np.random.default_rng(n).lognormal(0, 0.5, n).tolist()  # skewed, like latencies
    ours = stats_seconds(samples)
    theirs = Stats()
    for s in samples:
        theirs.update(s / 1e3)
    for key in Stats.fields:
        expected = getattr(theirs, key)
        if isinstance(expected, str):
            assert ours[key] == expected, key
        else:
            assert ours[key] == pytest.approx(expected, rel=1e-12, abs=1e-15), key


def test_pytest_benchmark_loads_and_compares_edgeship_files(measured, tmp_path):
    before, after = tmp_path / "0001_before.json", tmp_path / "0002_after.json"
    for report, out in ((measured, before), (slowed(measured, 1.10), after)):
        result = run_cli("bench", str(write_report(report, tmp_path / "report.json")),
                         "--benchmark-json", str(out))
        assert result.code == 0, result.stderr
        assert f"wrote 1 benchmarks to {out}" in result.stdout
    storage = FileStorage(tmp_path / "storage", logger=Logger(Logger.QUIET))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the loader only warns on a file it cannot read
        loaded = list(storage.load_benchmarks(str(before), str(after)))
    assert [(Path(b["path"]).name, b["name"]) for b in loaded] == [
        (before.name, "torchscript-fp32[local]"), (after.name, "torchscript-fp32[local]")]
    old, new = loaded
    assert new["median"] == pytest.approx(old["median"] * 1.10, rel=1e-9)
    # --benchmark-compare-fail expressions, parsed and evaluated by pytest-benchmark
    assert "'median' has failed PercentageRegressionCheck" in parse_compare_fail("median:5%").fails(new, old)
    assert parse_compare_fail("median:15%").fails(new, old) is None
    assert parse_compare_fail("mean:5%").fails(old, new) is None  # faster is no regression


def test_pytest_benchmark_compare_command_reads_edgeship_files(measured, tmp_path):
    files = []
    for name, factor in (("0001_before", 1.0), ("0002_after", 2.0)):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(to_pytest_benchmark(slowed(measured, factor))))
        files.append(str(path))
    table = subprocess.run([str(PYTEST_BENCHMARK), "compare", *files, "--columns=min,median,rounds",
                            "--time-unit=us"], capture_output=True, text=True, timeout=120)
    assert table.returncode == 0, table.stderr
    assert "Failed to load" not in table.stdout + table.stderr
    rounds = str(measured.artifacts[0].benchmarks[0].iterations)
    rows = [line for line in table.stdout.splitlines() if "torchscript-fp32[local]" in line]
    assert len(rows) == 2 and all(rounds in r.replace(",", "") for r in rows), table.stdout
    between = subprocess.run([str(PYTEST_BENCHMARK), "compare", "--between=median", *files],
                             capture_output=True, text=True, timeout=120)
    assert between.returncode == 0, between.stderr
    assert "torchscript-fp32[local]" in between.stdout and "0002_after" in between.stdout
    print(table.stdout + between.stdout)


DUMMY_TEST = """
import time

def test_sleep(benchmark):
    benchmark.pedantic(time.sleep, args=(0.002,), rounds=5, iterations=1)
"""


def _outer_pytest_unset() -> dict[str, str]:
    """This environment without what pytest-xdist sets for its workers, which the inner pytest's
    benchmark plugin reads as "benchmarks under xdist" and does not run."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_XDIST", "PYTEST_CURRENT"))}


@pytest.mark.parametrize("limit, fails", [("median:5%", True), ("median:1000000%", False)])
def test_a_pytest_run_compares_with_an_edgeship_file(measured, tmp_path, limit, fails):
    """--benchmark-compare pairs benchmarks by fullname: the edgeship entry is renamed to the
    dummy test's node id, so a 2 ms sleep meets the tiny model's measured stats."""
    (tmp_path / "test_dummy.py").write_text(DUMMY_TEST)
    document = to_pytest_benchmark(measured)
    document["benchmarks"][0]["fullname"] = "test_dummy.py::test_sleep"
    saved = tmp_path / "edgeship.json"
    saved.write_text(json.dumps(document))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                           "test_dummy.py", f"--benchmark-compare={saved}",
                           f"--benchmark-compare-fail={limit}", "--benchmark-columns=median",
                           "--benchmark-time-unit=us"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120, env=_outer_pytest_unset())
    out = proc.stdout + proc.stderr
    assert "Comparing against benchmarks from" in out, out
    # the table's row for the saved run shows edgeship's measured median
    (row,) = [line for line in out.splitlines() if line.startswith("test_sleep (") and "edgeship)" in line]
    assert f"{document['benchmarks'][0]['stats']['median'] * 1e6:,.4f}" in row, out
    assert ("Performance has regressed" in out) is fails, out
    assert (proc.returncode != 0) is fails, out


def test_report_without_samples_is_refused_in_one_line(tmp_path):
    result = run_cli("bench", str(DATA / "report-digits.json"), "--benchmark-json",
                     str(tmp_path / "out.json"))
    assert result.code == 2
    assert result.stderr.startswith("error: report has no raw latency samples for torchscript-fbgemm[local]")
    assert not (tmp_path / "out.json").exists()


def _with_p50(report: Report, target: str, p50: float, peak_rss_mb: float, *, samples: int = 0,
              spread: float = 0.05, seed: int = 0) -> None:
    """Sets a benchmark's p50 and peak RSS, and `samples` raw samples around that p50."""
    bench = report.artifact(target).benchmarks[0]
    bench.latency_ms = Latency(min=p50, p50=p50, p90=p50, p99=p50, mean=p50, stdev=0.0)
    bench.peak_rss_mb = peak_rss_mb
    drawn = p50 * np.random.default_rng(seed).lognormal(0, spread, samples)
    bench.samples_ms = (drawn * p50 / np.median(drawn)).tolist() if samples else []


def test_int8_slower_than_its_twin_is_said_plainly():
    report = load_report(DATA / "report-digits.json")
    _with_p50(report, "onnx-int8", 0.025, 66.0, samples=5000)
    _with_p50(report, "onnx-fp32", 0.017, 60.0, samples=5000, seed=1)
    (line,) = int8_slower(report)  # the stored run's other int8 artifacts are faster
    assert line.startswith("onnx-int8 is 1.47x slower than onnx-fp32 on local (p50 0.025 vs 0.017 ms, "
                           "95% CI 1.4") and line.endswith(")")
    assert f"- ⚠️ {line}" in markdown(report).splitlines()
    attach_fp32_ratios({a.target: a for a in report.artifacts})
    ratios = report.artifact("onnx-int8").benchmarks[0].vs_fp32
    assert ratios == {"latency_p50_ratio": pytest.approx(0.025 / 0.017),
                      "peak_rss_ratio": pytest.approx(66.0 / 60.0), "latency": "slower",
                      "latency_p50_ratio_ci95": [pytest.approx(1.47, abs=0.01)] * 2}
    fbgemm = report.artifact("torchscript-fbgemm").benchmarks[0].vs_fp32
    assert fbgemm["latency_p50_ratio"] == pytest.approx(0.043354 / 0.144093)  # faster: no sentence
    assert report.artifact("onnx-fp32").benchmarks[0].vs_fp32 is None  # fp32 has no twin but itself
    entries = {b["name"]: b for b in to_pytest_benchmark(_samples_from_latency(report))["benchmarks"]}
    assert entries["onnx-int8[local]"]["extra_info"]["vs_fp32"] == ratios


def test_int8_slower_within_the_noise_is_not_said():
    report = load_report(DATA / "report-digits.json")
    _with_p50(report, "onnx-int8", 0.0204, 60.0, samples=200, spread=0.3)  # 1.02x, a wide spread
    _with_p50(report, "onnx-fp32", 0.0200, 60.0, samples=200, spread=0.3, seed=1)
    assert int8_slower(report) == []
    _with_p50(report, "onnx-int8", 0.0204, 60.0)  # no samples (an older report): said, untested
    _with_p50(report, "onnx-fp32", 0.0200, 60.0)
    assert int8_slower(report) == ["onnx-int8 is 1.02x slower than onnx-fp32 on local (p50 0.020 vs "
                                   "0.020 ms, not tested against noise: no raw samples)"]


def test_no_ratio_without_the_twin_measured_on_that_device():
    report = load_report(DATA / "report-digits.json")
    report.artifact("onnx-fp32").benchmarks[0].device = "rpi5"
    attach_fp32_ratios({a.target: a for a in report.artifacts})
    assert report.artifact("onnx-int8").benchmarks[0].vs_fp32 is None
    assert not any(line.startswith("onnx-int8") for line in int8_slower(report))


def _samples_from_latency(report: Report) -> Report:
    copy = report.model_copy(deep=True)
    for a in copy.artifacts:
        for b in a.benchmarks:
            b.samples_ms = [b.latency_ms.min, b.latency_ms.p50, b.latency_ms.p90]
    return copy


def test_stats_refuse_no_samples():
    with pytest.raises(ValueError):
        stats_seconds([])
    assert math.isclose(stats_seconds([2.0])["median"], 0.002)


def test_repetitions_run_fresh_processes_and_report_their_spread(tmp_path):
    """`repetitions = 3`: three runner processes for one artifact, their samples together, each
    one's median kept, and a line saying how far apart they were."""
    from edgeship.devices.profile import BenchmarkSettings, DeviceProfile
    from edgeship.formats.artifact import ExportedArtifact
    from edgeship.pipeline.benchmark import benchmark_device
    from edgeship.progress import Progress
    from edgeship.report.writers import between_processes
    from edgeship.targets import get_target

    path = tmp_path / "torchscript-fp32.pt"
    example = torch.randn(1, 8)
    torch.jit.save(torch.jit.trace(torch.nn.Linear(8, 4).eval(), example), path)
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, input_0=example.numpy())
    settings = BenchmarkSettings(warmup_iterations=2, min_iterations=50, min_seconds=0.05,
                                 repetitions=3, cooldown_seconds=0.1)
    profile = DeviceProfile.model_validate({"name": "local", "arch": "auto", "transport": {"kind": "local"},
                                            "runtimes": ["torchscript"], "int8_engines": ["fbgemm"]})
    target = get_target("torchscript-fp32")
    (bench,) = benchmark_device(profile, settings, [(target, ExportedArtifact(path, (path,)))], inputs,
                                Progress(None, enabled=False)).values()
    assert bench.status == "ok" and len(bench.process_p50_ms) == 3
    assert bench.iterations == len(bench.samples_ms) >= 150
    assert bench.latency_ms.p50 == pytest.approx(np.median(bench.samples_ms))
    report = Report(edgeship_version=__version__, recipe_name="tiny", recipe_sha256="0" * 64,
                    environment=environment(),
                    artifacts=[Artifact(target="torchscript-fp32", format="torchscript", engine="torch",
                                        precision="fp32", status="ok", path=path.name,
                                        size_bytes=path.stat().st_size, benchmarks=[bench])])
    (line,) = between_processes(report)
    assert line.startswith("torchscript-fp32 on local: p50 of 3 processes ") and "spread" in line
