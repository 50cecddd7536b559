"""Benchmark stage: every artifact on every device, through the device's transport.

Devices run concurrently; on one device, one measurement at a time. A device that fails marks
its own results and the others go on."""

from __future__ import annotations

import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeship.benchmarks.runner import RUNNER_VERSION
from edgeship.benchmarks.stats import latency_summary
from edgeship.devices.profile import BenchmarkSettings, DeviceProfile
from edgeship.devices.transports import DeviceTransport, RunnerCall, RunnerFailed, transport_for
from edgeship.fileio import sha256_file
from edgeship.formats import ExportedArtifact, spec_for
from edgeship.pipeline.cache import StageCache, digest, tensors_digest
from edgeship.pipeline.context import RunContext
from edgeship.pipeline.stages import naming_target
from edgeship.pipeline.values import Exported
from edgeship.progress import Progress
from edgeship.report.schema import Benchmark, Latency
from edgeship.targets import Target, get_target


def skip_reason(profile: DeviceProfile, target: Target) -> str | None:
    if target.format not in profile.runtimes:
        return f"device has no {target.format.value} runtime (profile runtimes: " \
               f"{', '.join(r.value for r in profile.runtimes)})"
    if target.is_int8 and target.engine not in profile.int8_engines:
        return f"device has no {target.engine} int8 engine (profile int8_engines: " \
               f"{', '.join(profile.int8_engines)})"
    return None


def merged(results: list[dict]) -> dict:
    """Runner results of one artifact from several fresh processes as one: the samples of all, in
    order; load and first inference of the first (the cold start); the worst peak RSS; valid only
    when every process was; and each process's own median (`process_p50_ms`)."""
    first, last = results[0], results[-1]
    if len(results) == 1:
        return first
    samples = [s for r in results for s in r["samples_ms"]]
    reasons = [f"process {i + 1}: {why}" for i, r in enumerate(results) for why in r["invalid_reasons"]]
    system = {**first.get("system", {}), "after": last.get("system", {}).get("after", {})}
    return {**first, "samples_ms": samples, "iterations": len(samples),
            "seconds": sum(r["seconds"] for r in results), "valid": all(r["valid"] for r in results),
            "invalid_reasons": reasons, "peak_rss_mb": max(r["peak_rss_mb"] for r in results),
            "rss_delta_mb": max(r["rss_delta_mb"] for r in results), "system": system,
            "process_p50_ms": [float(np.median(r["samples_ms"])) for r in results]}


def to_benchmark(device: str, result: dict) -> Benchmark:
    return Benchmark(
        device=device, status="ok", latency_ms=Latency(**latency_summary(result["samples_ms"])),
        iterations=result["iterations"], seconds=result["seconds"], valid=result["valid"],
        invalid_reasons=result["invalid_reasons"], load_ms=result["load_ms"],
        first_inference_ms=result["first_inference_ms"], peak_rss_mb=result["peak_rss_mb"],
        rss_delta_mb=result["rss_delta_mb"], threads=result["threads"],
        cpu_affinity=result["cpu_affinity"], runtime=result["runtime"],
        system=result.get("system", {}), samples_ms=result["samples_ms"],
        process_p50_ms=result.get("process_p50_ms"))


def measured(device: str, transport: DeviceTransport, call: RunnerCall,
             settings: BenchmarkSettings) -> Benchmark:
    """`call` run `settings.repetitions` times in fresh processes, merged; RunnerFailed when the
    runner gave no result."""
    runs = []
    for repetition in range(settings.repetitions):
        if repetition and settings.cooldown_seconds:
            time.sleep(settings.cooldown_seconds)
        runs.append(transport.run(call))
    bench = to_benchmark(device, merged(runs))
    if settings.profile:
        bench.profile = profiled(transport, call)
    return bench


PROFILE_OPS = 60  # the most time-consuming ops kept in the report; the sums count them all


def profiled(transport: DeviceTransport, call: RunnerCall) -> dict:
    """The runner's per-op profile of the artifact, run after (never inside) the timed runs;
    a profile that fails says why and leaves the benchmark as it was."""
    try:
        result = transport.run(dataclasses.replace(call, mode="profile"))
    except RunnerFailed as e:
        return {"error": str(e)}
    ops = result["ops"]
    by_type: dict[str, float] = {}
    for op in (o for o in ops if not o.get("nested")):
        by_type[op["op"]] = by_type.get(op["op"], 0.0) + op["ms"]
    return {"runs": result["runs"], "ms_per_run": result["ms_per_run"], "ops": ops[:PROFILE_OPS],
            "ms_by_op_type": dict(sorted(by_type.items(), key=lambda kv: -kv[1]))}


@dataclass(frozen=True)
class _Measurement:
    """How one device measures: its profile, settings, transport, and the stage cache to use."""

    profile: DeviceProfile
    settings: BenchmarkSettings
    transport: DeviceTransport
    inputs_npz: Path
    cache: StageCache | None
    key_base: str

    def measure(self, target: Target, artifact: ExportedArtifact) -> Benchmark:
        """Cached, or run on the device; RunnerFailed when the runner gave no result."""
        key = digest("benchmark", RUNNER_VERSION, self.key_base, sha256_file(artifact.path),
                     self.profile, self.settings)
        found = self.cache.load_json("benchmark", key) if self.cache is not None else None
        if found is not None:
            return Benchmark(**{**found, "cached": True})
        args = self.settings.runner_args() + spec_for(target.format).runner_args(target)
        call = RunnerCall("bench", artifact.path, artifact.files, self.inputs_npz, args,
                          timeout_seconds=self.settings.timeout_seconds)
        result = measured(self.profile.name, self.transport, call, self.settings)
        if self.cache is not None:
            self.cache.store_json("benchmark", key, result.model_dump(mode="json"))
        return result


def benchmark_device(profile: DeviceProfile, settings: BenchmarkSettings,
                     artifacts: list[tuple[Target, ExportedArtifact]], inputs_npz: Path,
                     progress: Progress, cache: StageCache | None = None,
                     key_base: str = "") -> dict[str, Benchmark]:
    """`key_base` hashes what else the measurement depends on (library versions, inputs)."""
    device = _Measurement(profile, settings, transport_for(profile), inputs_npz, cache, key_base)
    results: dict[str, Benchmark] = {}
    unreachable: RunnerFailed | None = None
    try:
        with progress.task(f"benchmark on {profile.name}", total=len(artifacts)) as advance:
            for target, artifact in artifacts:
                reason = skip_reason(profile, target)
                if unreachable is not None:  # one connect timeout per device, not per artifact
                    results[target.name] = Benchmark(device=profile.name, status=unreachable.status,
                                                     error=str(unreachable))
                elif reason:
                    results[target.name] = Benchmark(device=profile.name, status="skipped", error=reason)
                else:
                    try:
                        with naming_target(target.name):
                            results[target.name] = device.measure(target, artifact)
                    except RunnerFailed as e:
                        results[target.name] = Benchmark(device=profile.name, status=e.status, error=str(e))
                        unreachable = e if e.status == "unreachable" else None
                advance()
    finally:
        device.transport.close()  # ends an ssh control connection
    return results


def benchmark_all(devices: list[tuple[DeviceProfile, BenchmarkSettings]],
                  artifacts: list[tuple[Target, ExportedArtifact]], inputs_npz: Path,
                  progress: Progress, cache: StageCache | None = None,
                  key_base: str = "") -> dict[str, dict[str, Benchmark]]:
    """{device name: {target name: Benchmark}}"""
    with ThreadPoolExecutor(max_workers=max(1, len(devices))) as pool:
        futures = {p.name: pool.submit(benchmark_device, p, s, artifacts, inputs_npz, progress,
                                       cache, key_base)
                   for p, s in devices}
        return {name: f.result() for name, f in futures.items()}


def measure(ctx: RunContext, tmp: Path, examples: tuple, ready: dict[str, Exported]) -> dict[str, list[Benchmark]]:
    """Benchmark stage: {target name: its benchmarks, in the plan's device order}."""
    if not ready:
        ctx.log.skipped("benchmark", "no artifact passed verification")
        return {}
    inputs = tmp / "bench-inputs.npz"
    np.savez(inputs, **{f"input_{i}": x.numpy() for i, x in enumerate(examples)})
    with ctx.log.stage("benchmark") as notes:
        key_base = digest(ctx.env_key, tensors_digest(list(examples)))
        by_device = benchmark_all([(d.profile, d.settings) for d in ctx.plan.devices],
                                  [(get_target(n), e.artifact) for n, e in ready.items()],
                                  inputs, ctx.progress, ctx.cache, key_base)
        reused = sum(b.cached for results in by_device.values() for b in results.values())
        total = sum(len(results) for results in by_device.values())
        notes.cached = 0 < reused == total
    return {name: [results[name] for results in by_device.values() if name in results] for name in ready}
