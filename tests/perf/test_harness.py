"""How honest edgeship's benchmark harness is, measured side by side in one run (`make bench`):

a. overhead: edgeship's reported median (runner in a fresh process, Local transport) against a
   bare in-process loop calling the same runtime on the same input as many times, one thread;
b. repeatability: five back-to-back measurements of one artifact, max/min of their medians;
c. memory: the runner's peak_rss_mb against /usr/bin/time -v's maximum resident set size of the
   same process;
d. ssh: one artifact through ssh to a real sshd on 127.0.0.1 and through local.

The issue's targets are 3%, 1.05, 5% and 5%. The assertions are looser where the figure depends
on how busy this shared machine is; every figure is printed and stored in the benchmark's
extra_info (so in --benchmark-json).
"""

from __future__ import annotations

import os
import re
import shlex
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from edgeship.devices.profile import BenchmarkSettings, DeviceProfile, LocalTransport, SshTransport
from edgeship.pipeline.benchmark import benchmark_device
from edgeship.progress import Progress
from edgeship.report.schema import Benchmark
from perf_support import LOCAL, SETTINGS, Built, conv_net
from sshd import sshd  # noqa: F401  (a fixture: a real OpenSSH server on 127.0.0.1)

TIME = "/usr/bin/time"


def measure(profile: DeviceProfile, built: Built, settings: BenchmarkSettings = SETTINGS) -> Benchmark:
    """One measurement by edgeship's benchmark stage, as a run makes it."""
    result = benchmark_device(profile, settings, [(built.target, built.artifact)], built.inputs,
                              Progress(enabled=False))[built.target.name]
    assert result.status == "ok", result.error
    assert result.valid, result.invalid_reasons
    return result


@contextmanager
def threads(count: int):
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def bare_call(built: Built):
    """The runtime called directly, as the runner calls it, with the runner's thread settings."""
    path = str(built.artifact.path)
    if built.target.format.value == "torchscript":
        module = torch.jit.load(path)
        x = torch.from_numpy(built.example)

        def call() -> None:
            with torch.inference_mode():
                module(x)

        return call
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = SETTINGS.threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: built.example}
    return lambda: session.run(None, feed)


def bare_p50_ms(call, calls: int, warmup: int) -> float:
    """The median of `calls` timed calls after `warmup` untimed ones: the runner's loop, bare."""
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(calls):
        t0 = time.perf_counter_ns()
        call()
        samples.append((time.perf_counter_ns() - t0) / 1e6)
    return statistics.median(samples)


@pytest.mark.parametrize("kind", ["torchscript", "onnx"])
def test_harness_overhead(benchmark, figure, artifacts, kind):
    """Three runner measurements interleaved with three bare loops of as many calls: the ratio of
    the medians of each three, so one disturbed measurement on a busy host does not decide it.
    The first bare loop is pytest-benchmark's own (its entry in --benchmark-json)."""
    built = artifacts[kind]
    call = bare_call(built)
    runner_ms, bare_ms = [], []
    with threads(SETTINGS.threads):
        for i in range(3):
            runner = measure(LOCAL, built)
            runner_ms.append(runner.latency_ms.p50)
            if i == 0:
                calls = runner.iterations
                benchmark.pedantic(call, rounds=calls, iterations=1,
                                   warmup_rounds=SETTINGS.warmup_iterations)
                bare_ms.append(benchmark.stats.stats.median * 1e3)
            else:
                bare_ms.append(bare_p50_ms(call, calls, SETTINGS.warmup_iterations))
    ratio = statistics.median(runner_ms) / statistics.median(bare_ms)
    figure(f"edgeship p50 {_ms(runner_ms)} ms (runner, fresh process) vs bare in-process loop p50 "
           f"{_ms(bare_ms)} ms, interleaved, {calls} calls each, 1 thread: ratio of medians "
           f"{ratio:.3f} (target 0.97-1.03){_load()}", runner_p50_ms=runner_ms, bare_p50_ms=bare_ms,
           calls=calls, overhead_ratio=ratio, loadavg=os.getloadavg())
    assert 0.85 < ratio < 1.15


def _ms(values: list[float]) -> str:
    return ", ".join(f"{v:.4f}" for v in values)


def _load() -> str:
    """The host's load: these figures are only as good as the machine is idle."""
    return " · load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def _window_medians(samples_ms: list[float], window_s: float = 0.5) -> list[float]:
    """Medians of consecutive windows of one measurement: how much the host drifts within it."""
    windows: list[list[float]] = [[]]
    elapsed = 0.0
    for sample in samples_ms:
        if elapsed >= window_s:
            windows.append([])
            elapsed = 0.0
        windows[-1].append(sample)
        elapsed += sample / 1000
    return [statistics.median(w) for w in windows if len(w) >= 20]


def test_repeatability(benchmark, figure, artifacts):
    runs: list[Benchmark] = []
    # pytest-benchmark times each whole measurement: process start, load, warm-up, timed runs
    benchmark.pedantic(lambda: runs.append(measure(LOCAL, artifacts["torchscript"])), rounds=5, iterations=1)
    medians = [r.latency_ms.p50 for r in runs]
    spread = max(medians) / min(medians)
    # The same figure inside each single process: where it is far above 1 too, the host's other
    # tenants moved the medians, not the harness.
    within = max(max(w) / min(w) for w in (_window_medians(r.samples_ms) for r in runs))
    figure(f"5 back-to-back p50s {_ms(medians)} ms: max/min {spread:.3f} (target <= 1.05); "
           f"worst max/min of 0.5 s window medians inside one process {within:.3f}{_load()}",
           p50_ms=medians, max_over_min=spread, within_process_max_over_min=within,
           loadavg=os.getloadavg())
    # A harness fault (timing warm-up, another process's work) shows as a spread far beyond the
    # host's own drift; the drift itself reached 1.34 on this shared VM.
    assert spread < 1.05 or spread < 1.2 * within


def _max_rss_kib(time_log: Path) -> int:
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", time_log.read_text())
    assert match, time_log.read_text()
    return int(match.group(1))


@pytest.mark.parametrize("kind", ["torchscript", "onnx"])
def test_peak_rss_matches_time_v(benchmark, figure, artifacts, kind, tmp_path):
    if not Path(TIME).exists():
        pytest.skip(f"{TIME} missing: apt-get install time")
    log = tmp_path / "time-v.txt"
    # The profile's Python is this wrapper: the runner Local starts is /usr/bin/time's child.
    wrapper = tmp_path / "python-under-time"
    wrapper.write_text(f"#!/bin/sh\nexec {TIME} -v -o {shlex.quote(str(log))} "
                       f"{shlex.quote(sys.executable)} \"$@\"\n")
    wrapper.chmod(0o755)
    profile = LOCAL.model_copy(update={"transport": LocalTransport(kind="local", python=str(wrapper))})
    short = SETTINGS.model_copy(update={"min_seconds": 0.5})
    bench = benchmark.pedantic(measure, args=(profile, artifacts[kind], short), rounds=1, iterations=1)
    time_mb = _max_rss_kib(log) * 1024 / 1e6  # KiB to MB (10^6 bytes)
    ratio = bench.peak_rss_mb / time_mb
    figure(f"runner peak_rss_mb {bench.peak_rss_mb:.2f} vs /usr/bin/time -v max RSS {time_mb:.2f} "
           f"MB: ratio {ratio:.4f} (target 0.95-1.05)", peak_rss_mb=bench.peak_rss_mb,
           time_v_max_rss_mb=time_mb, peak_rss_ratio=ratio)
    assert 0.95 < ratio < 1.05


def test_ssh_and_local_medians(benchmark, figure, artifacts, sshd, tmp_path):  # noqa: F811
    built = artifacts["torchscript"]
    ssh = DeviceProfile(
        name="ssh-127.0.0.1", arch="x86_64", int8_engines=["fbgemm", "onnxruntime"],
        runtimes=["torchscript", "onnx"],
        transport=SshTransport(kind="ssh", host="127.0.0.1", port=sshd.port,
                               identity_file=sshd.identity_file, python=sys.executable,
                               workdir=str(tmp_path / "device"), connect_timeout_seconds=5,
                               options=[f"UserKnownHostsFile={sshd.known_hosts}"]))
    medians: dict[str, list[float]] = {"local": [], "ssh": []}

    def local_first() -> None:  # pytest-benchmark's setup: not timed, run before each round
        medians["local"].append(measure(LOCAL, built).latency_ms.p50)

    def through_ssh() -> None:
        medians["ssh"].append(measure(ssh, built).latency_ms.p50)

    benchmark.pedantic(through_ssh, setup=local_first, rounds=3, iterations=1)
    ratio = statistics.median(medians["ssh"]) / statistics.median(medians["local"])
    figure(f"p50 ssh {_ms(medians['ssh'])} ms vs local {_ms(medians['local'])} ms (interleaved): "
           f"ratio of medians {ratio:.3f} (target 0.95-1.05){_load()}", p50_ms=medians,
           ssh_over_local=ratio, loadavg=os.getloadavg())
    assert 0.8 < ratio < 1.25



def test_a_model_file_edgeship_did_not_make(benchmark, figure, sshd, tmp_path):  # noqa: F811
    """`edgeship bench MODEL`: an ONNX file written by torch.onnx.export itself, its inputs read
    from the file; edgeship's p50 against a bare onnxruntime loop, and through ssh to 127.0.0.1,
    three rounds interleaved."""
    import onnxruntime as ort

    from edgeship.formats.model_file import open_model_file, random_inputs
    from edgeship.pipeline.model_bench import bench_model_file

    torch.manual_seed(0)
    path = tmp_path / "foreign.onnx"
    torch.onnx.export(conv_net().eval(), (torch.randn(1, 3, 32, 32),), path, dynamo=True)
    model = open_model_file(path)
    ssh = DeviceProfile(
        name="ssh-127.0.0.1", arch="x86_64", int8_engines=["onnxruntime"], runtimes=["onnx"],
        transport=SshTransport(kind="ssh", host="127.0.0.1", port=sshd.port,
                               identity_file=sshd.identity_file, python=sys.executable,
                               workdir=str(tmp_path / "device"), connect_timeout_seconds=5,
                               options=[f"UserKnownHostsFile={sshd.known_hosts}"]))
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = SETTINGS.threads, 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {model.inputs[0].name: random_inputs(model.inputs)[0]}
    medians: dict[str, list[float]] = {"edgeship": [], "bare": [], "ssh": []}

    def p50(profile: DeviceProfile) -> tuple[float, int]:
        report = bench_model_file(model, profile, SETTINGS, given=[], inputs_npz=None, batch_sizes=[],
                                  engine=None, limits={})
        bench = report.runs[0].benchmark
        assert bench.status == "ok" and bench.valid, bench.error or bench.invalid_reasons
        return bench.latency_ms.p50, bench.iterations

    def one_round() -> None:
        ms, calls = p50(LOCAL)
        medians["edgeship"].append(ms)
        medians["bare"].append(bare_p50_ms(lambda: session.run(None, feed), calls, SETTINGS.warmup_iterations))
        medians["ssh"].append(p50(ssh)[0])

    benchmark.pedantic(one_round, rounds=3, iterations=1)
    local = statistics.median(medians["edgeship"])
    bare, through_ssh = statistics.median(medians["bare"]), statistics.median(medians["ssh"])
    figure(f"edgeship bench on a torch.onnx.export file: p50 {_ms(medians['edgeship'])} ms vs bare "
           f"onnxruntime loop {_ms(medians['bare'])} ms: ratio {local / bare:.3f} (target 0.97-1.03); "
           f"through ssh {_ms(medians['ssh'])} ms: ssh/local {through_ssh / local:.3f} (target "
           f"0.95-1.05){_load()}", p50_ms=medians, over_bare=local / bare, ssh_over_local=through_ssh / local)
    assert 0.85 < local / bare < 1.15 and 0.8 < through_ssh / local < 1.25
