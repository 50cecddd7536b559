"""edgeship's device runner: one file, no edgeship import, copied to the device and run there with
only the artifact's runtime installed (torch for .pt and .pte, onnxruntime for .onnx, numpy).

    python runner.py bench ARTIFACT --inputs inputs.npz --warmup N --min-iterations N
        --min-seconds S --max-seconds S [--engine qnnpack] [--threads 1] [--cpus 3]
    python runner.py predict ARTIFACT --inputs inputs.npz --outputs outputs.npz [--batch-size 1]

It prints one JSON object as the last line of stdout. Latency samples are raw milliseconds: the
host computes percentiles, so the method is visible and the same on every device.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import sys
import time

RUNNER_VERSION = 1


def rss_bytes() -> int:
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except ImportError:  # a bare device: /proc is enough on Linux and Android
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    # Linux: VmHWM, the high-water mark of this process image alone. ru_maxrss is no good here:
    # the kernel carries the pre-exec image's peak across execve, so a runner started by a big
    # host process would report the host's memory.
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


class TorchScriptModel:
    def __init__(self, path: str, engine: str | None, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        if engine:
            if engine not in torch.backends.quantized.supported_engines:
                raise SystemExit(f"quantized engine {engine!r} not in this torch build: "
                                 f"{torch.backends.quantized.supported_engines}")
            torch.backends.quantized.engine = engine
        self.torch = torch
        self.module = torch.jit.load(path)
        self.runtime = {"name": "torch", "version": torch.__version__,
                        "engine": torch.backends.quantized.engine}

    def to_native(self, arrays):
        return [self.torch.from_numpy(a) for a in arrays]

    def __call__(self, inputs):
        with self.torch.inference_mode():
            out = self.module(*inputs)
        return [o.numpy() for o in (out if isinstance(out, (tuple, list)) else [out])]


class OnnxModel:
    def __init__(self, path: str, engine: str | None, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.names = [i.name for i in self.session.get_inputs()]
        self.runtime = {"name": "onnxruntime", "version": ort.__version__,
                        "engine": "CPUExecutionProvider"}

    def to_native(self, arrays):
        return dict(zip(self.names, arrays))

    def __call__(self, inputs):
        return self.session.run(None, inputs)


class ExecuTorchModel:
    def __init__(self, path: str, engine: str | None, threads: int) -> None:
        import torch
        from executorch.extension.pybindings import portable_lib
        from executorch.runtime import Runtime

        portable_lib._unsafe_reset_threadpool(threads)  # XNNPACK's thread pool
        self.torch = torch
        self.method = Runtime.get().load_program(path).load_method("forward")
        try:
            from executorch.version import __version__ as version
        except ImportError:
            version = "unknown"
        self.runtime = {"name": "executorch", "version": version, "engine": "xnnpack"}

    def to_native(self, arrays):
        return [self.torch.from_numpy(a) for a in arrays]

    def __call__(self, inputs):
        return [o.numpy() for o in self.method.execute(inputs)]


LOADERS = {".pt": TorchScriptModel, ".onnx": OnnxModel, ".pte": ExecuTorchModel}


def load(path: str, engine: str | None, threads: int):
    suffix = os.path.splitext(path)[1]
    if suffix not in LOADERS:
        raise SystemExit(f"{path}: unknown artifact type {suffix!r}; known: {', '.join(LOADERS)}")
    return LOADERS[suffix](path, engine, threads)


def read_inputs(path: str):
    import numpy as np

    with np.load(path) as data:
        return [data[f"input_{i}"] for i in range(len(data.files))]


def timed_runs(model, inputs, args) -> tuple[list[float], float]:
    """Timed runs until both a count and a duration are reached (TFLite's benchmark_model method);
    max_seconds bounds a slow device, and such a run is marked not valid. Returns the samples in
    ms and the seconds they took."""
    samples = []
    # No collection pauses inside timed runs (timeit's and pytest-benchmark's disable_gc): the
    # loop allocates a little each run, and a collection would land in some runs and not others.
    gc.collect()
    gc.disable()
    start = time.perf_counter_ns()
    deadline_ns = start + int(args.max_seconds * 1e9)
    min_ns = int(args.min_seconds * 1e9)
    while True:
        t0 = time.perf_counter_ns()
        model(inputs)
        t1 = time.perf_counter_ns()
        samples.append((t1 - t0) / 1e6)
        if len(samples) >= args.min_iterations and t1 - start >= min_ns:
            break
        if t1 >= deadline_ns:
            break
    seconds = (time.perf_counter_ns() - start) / 1e9
    gc.enable()
    return samples, seconds


def invalid_reasons(samples: list[float], seconds: float, args) -> list[str]:
    reasons = []
    if len(samples) < args.min_iterations:
        reasons.append(f"{len(samples)} iterations < min_iterations {args.min_iterations}")
    if seconds < args.min_seconds:
        reasons.append(f"{seconds:.3f} s < min_seconds {args.min_seconds}")
    return reasons


def milliseconds_of(call) -> tuple[object, float]:
    """What `call()` returns, and how long it took in ms."""
    t0 = time.perf_counter_ns()
    result = call()
    return result, (time.perf_counter_ns() - t0) / 1e6


def bench(args) -> dict:
    affinity = apply_affinity(args.cpus)
    inputs_np = read_inputs(args.inputs)
    rss_before_load = rss_bytes()
    model, load_ms = milliseconds_of(lambda: load(args.artifact, args.engine, args.threads))
    inputs = model.to_native(inputs_np)
    _, first_ms = milliseconds_of(lambda: model(inputs))
    warmup = [milliseconds_of(lambda: model(inputs))[1] for _ in range(args.warmup)]
    samples, seconds = timed_runs(model, inputs, args)
    reasons = invalid_reasons(samples, seconds, args)
    rss_end = rss_bytes()
    return {
        "mode": "bench", "load_ms": load_ms, "first_inference_ms": first_ms, "warmup_ms": warmup,
        "samples_ms": samples, "iterations": len(samples), "seconds": seconds,
        "valid": not reasons, "invalid_reasons": reasons,
        "peak_rss_mb": peak_rss_bytes() / 1e6,
        "rss_before_load_mb": rss_before_load / 1e6,
        "rss_end_mb": rss_end / 1e6,
        "rss_delta_mb": (rss_end - rss_before_load) / 1e6,
        "threads": args.threads, "cpu_affinity": affinity, "runtime": model.runtime,
    }


def predict(args) -> dict:
    import numpy as np

    apply_affinity(args.cpus)
    arrays = read_inputs(args.inputs)
    model = load(args.artifact, args.engine, args.threads)
    n, b = len(arrays[0]), args.batch_size
    outputs = []
    for start in range(0, n, b):
        chunk = [a[start:start + b] for a in arrays]
        short = b - len(chunk[0])
        if short:  # artifacts have a fixed batch: pad the last chunk, drop the padding after
            chunk = [np.concatenate([c, np.repeat(c[-1:], short, axis=0)]) for c in chunk]
        out = model(model.to_native(chunk))
        outputs.append([o[:b - short] for o in out])
    merged = {f"output_{k}": np.concatenate([o[k] for o in outputs]) for k in range(len(outputs[0]))}
    tmp = args.outputs + ".tmp.npz"
    np.savez(tmp, **merged)
    os.replace(tmp, args.outputs)
    return {"mode": "predict", "samples": n, "outputs": len(merged), "runtime": model.runtime}


def apply_affinity(cpus: str | None) -> list[int] | None:
    if cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None


# What bench needs to be told: the host's benchmark settings (BenchmarkSettings in
# devices/profile.py, the one place they are declared with their defaults), never a default here.
BENCH_SETTINGS = (("--warmup", int), ("--min-iterations", int), ("--min-seconds", float),
                  ("--max-seconds", float))


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["bench", "predict"])
    parser.add_argument("artifact")
    parser.add_argument("--inputs", required=True, help=".npz with input_0, input_1, ...")
    parser.add_argument("--outputs", help="predict: .npz to write output_0, ... to")
    parser.add_argument("--engine", help="quantized engine for TorchScript (fbgemm, qnnpack)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cpus", help="comma-separated CPU ids to pin the process to")
    parser.add_argument("--batch-size", type=int, default=1)
    settings = [parser.add_argument(flag, type=kind, help="bench: required")
                for flag, kind in BENCH_SETTINGS]
    args = parser.parse_args(argv)
    missing = [a.option_strings[0] for a in settings if getattr(args, a.dest) is None]
    if args.mode == "bench" and missing:
        parser.error(f"bench needs {', '.join(missing)} (the host's benchmark settings)")
    return args


def main(argv=None) -> None:
    args = parse(argv)
    result = bench(args) if args.mode == "bench" else predict(args)
    result.update(runner_version=RUNNER_VERSION, artifact=os.path.basename(args.artifact),
                  python=platform.python_version(), machine=platform.machine())
    sys.stdout.flush()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
