"""Benchmark stage: every artifact on every device, through the device's transport.

Devices run concurrently; on one device, one measurement at a time. A device that fails marks
its own results and the others go on."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from edgeship.benchmarks.stats import latency_summary
from edgeship.fileio import sha256_file
from edgeship.pipeline.cache import StageCache, digest
from edgeship.devices.profile import BenchmarkDefaults, DeviceProfile
from edgeship.devices.transports import RunnerCall, RunnerFailed, transport_for
from edgeship.exporters.base import ExportedArtifact
from edgeship.pipeline.verify import runner_engine_args
from edgeship.progress import Progress
from edgeship.report.schema import Benchmark, Latency
from edgeship.targets import Target


def _skip_reason(profile: DeviceProfile, target: Target) -> str | None:
    if target.format not in profile.runtimes:
        return f"device has no {target.format.value} runtime (profile runtimes: " \
               f"{', '.join(r.value for r in profile.runtimes)})"
    if target.is_int8 and target.engine not in profile.int8_engines:
        return f"device has no {target.engine} int8 engine (profile int8_engines: " \
               f"{', '.join(profile.int8_engines)})"
    return None


def _runner_args(settings: BenchmarkDefaults, target: Target) -> tuple[str, ...]:
    args = ["--threads", str(settings.threads), "--warmup", str(settings.warmup_iterations),
            "--min-iterations", str(settings.min_iterations), "--min-seconds", str(settings.min_seconds),
            # the runner stops itself (and says the run is not valid) before the hard kill
            "--max-seconds", str(max(settings.min_seconds, settings.timeout_seconds / 2))]
    if settings.cpus:
        args += ["--cpus", ",".join(map(str, settings.cpus))]
    return tuple(args + runner_engine_args(target))


def to_benchmark(device: str, result: dict) -> Benchmark:
    return Benchmark(
        device=device, status="ok", latency_ms=Latency(**latency_summary(result["samples_ms"])),
        iterations=result["iterations"], seconds=result["seconds"], valid=result["valid"],
        invalid_reasons=result["invalid_reasons"], load_ms=result["load_ms"],
        first_inference_ms=result["first_inference_ms"], peak_rss_mb=result["peak_rss_mb"],
        rss_delta_mb=result["rss_delta_mb"], threads=result["threads"],
        cpu_affinity=result["cpu_affinity"], runtime=result["runtime"],
        samples_ms=result["samples_ms"])


def benchmark_device(profile: DeviceProfile, settings: BenchmarkDefaults,
                     artifacts: list[tuple[Target, ExportedArtifact]], inputs_npz: Path,
                     progress: Progress, cache: StageCache | None = None,
                     key_base: str = "") -> dict[str, Benchmark]:
    """`key_base` hashes what else the measurement depends on (library versions, inputs)."""
    transport = transport_for(profile)
    try:
        results: dict[str, Benchmark] = {}
        with progress.task(f"benchmark on {profile.name}", total=len(artifacts)) as advance:
            unreachable: RunnerFailed | None = None
            for target, artifact in artifacts:
                reason = _skip_reason(profile, target)
                if unreachable is not None:  # one connect timeout per device, not per artifact
                    results[target.name] = Benchmark(device=profile.name, status=unreachable.status,
                                                     error=str(unreachable))
                elif reason:
                    results[target.name] = Benchmark(device=profile.name, status="skipped", error=reason)
                elif cache is not None and (found := cache.load_json(
                        "benchmark", key := digest("benchmark", key_base, sha256_file(artifact.path),
                                                   profile, settings))) is not None:
                    results[target.name] = Benchmark(**{**found, "cached": True})
                else:
                    call = RunnerCall("bench", artifact.path, artifact.files, inputs_npz,
                                      _runner_args(settings, target),
                                      timeout_seconds=settings.timeout_seconds)
                    try:
                        results[target.name] = to_benchmark(profile.name, transport.run(call))
                        if cache is not None:
                            cache.store_json("benchmark", key, results[target.name].model_dump(mode="json"))
                    except RunnerFailed as e:
                        results[target.name] = Benchmark(device=profile.name, status=e.status, error=str(e))
                        if e.status == "unreachable":
                            unreachable = e
                advance()
    finally:
        transport.close()  # ends an ssh control connection
    return results


def benchmark_all(devices: list[tuple[DeviceProfile, BenchmarkDefaults]],
                  artifacts: list[tuple[Target, ExportedArtifact]], inputs_npz: Path,
                  progress: Progress, cache: StageCache | None = None,
                  key_base: str = "") -> dict[str, dict[str, Benchmark]]:
    """{device name: {target name: Benchmark}}"""
    with ThreadPoolExecutor(max_workers=max(1, len(devices))) as pool:
        futures = {p.name: pool.submit(benchmark_device, p, s, artifacts, inputs_npz, progress,
                                       cache, key_base)
                   for p, s in devices}
        return {name: f.result() for name, f in futures.items()}
