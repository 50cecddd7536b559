"""edgeship's device runner: one file, no edgeship import, copied to the device and run there with
only the artifact's runtime installed (torch for .pt and .pte, onnxruntime for .onnx, numpy).

    python runner.py bench ARTIFACT --inputs inputs.npz --warmup N --min-iterations N
        --min-seconds S --max-seconds S [--engine qnnpack] [--threads 1] [--cpus 3]
    python runner.py predict ARTIFACT --inputs inputs.npz --outputs outputs.npz [--batch-size 1]

It prints one JSON object as the last line of stdout. Latency samples are raw milliseconds: the
host computes percentiles, so the method is visible and the same on every device.

When it cannot give a result it prints one line on stderr, `runner: error: ...`, and exits non-zero
(2: bad arguments or an artifact that is not what its suffix says; 3: the runtime failed on it,
as edgeship's own exit codes say; never 1, which means a budget failed),
never a Python traceback: the host reports that line as the target's failure on this device.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import resource
import struct
import sys
import time

RUNNER_VERSION = 2  # 2: the device's CPU and thermal state in a bench result (`system`)


class BadArtifact(Exception):
    """The file cannot be what its suffix says; found before the runtime is handed its bytes (a
    runtime may abort the process on some corrupt files instead of raising)."""


def first_line(e: BaseException) -> str:
    text = next((line.strip() for line in str(e).splitlines() if line.strip()), "")
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


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

    def profile(self, inputs, warmup: int, runs: int) -> list[dict]:
        """torch.profiler's self CPU time per op (self times add up to the whole, not nested)."""
        from torch.profiler import ProfilerActivity, profile

        for _ in range(warmup):
            self(inputs)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(runs):
                self(inputs)
        return [{"name": e.key, "op": e.key.split("::")[-1], "kernel": e.key.split("::")[0],
                 "ms": e.self_cpu_time_total / 1e3 / runs, "calls": e.count / runs}
                for e in prof.key_averages() if e.self_cpu_time_total > 0]


class OnnxModel:
    def __init__(self, path: str, engine: str | None, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own classes; say what is wrong
            raise BadArtifact(onnx_problem(path) or first_line(e)) from None
        self.names = [i.name for i in self.session.get_inputs()]
        self.runtime = {"name": "onnxruntime", "version": ort.__version__,
                        "engine": "CPUExecutionProvider"}
        self.path, self.options = path, options

    def profile(self, inputs, warmup: int, runs: int) -> list[dict]:
        """ONNX Runtime's profiler: kernel time per node of the optimized graph, with the kernel's
        op type (QLinearConv: int8; Conv: float) and provider. Warm-up runs are dropped by time."""
        import tempfile

        import onnxruntime as ort

        with tempfile.TemporaryDirectory() as tmp:
            self.options.enable_profiling = True
            self.options.profile_file_prefix = os.path.join(tmp, "ort")
            session = ort.InferenceSession(self.path, self.options, providers=["CPUExecutionProvider"])
            for _ in range(warmup + runs):
                session.run(None, inputs)
            with open(session.end_profiling()) as f:
                events = json.load(f)
        starts = sorted(e["ts"] + e["dur"] for e in events if e.get("name") == "model_run")
        after = starts[warmup - 1] if warmup else -1
        ops = {}
        for e in events:
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] > after:
                name, detail = e["name"][: -len("_kernel_time")], e.get("args", {})
                op = ops.setdefault(name, {"name": name, "op": detail.get("op_name"),
                                           "kernel": detail.get("provider"), "ms": 0.0, "calls": 0.0})
                op["ms"] += e["dur"] / 1e3 / runs
                op["calls"] += 1 / runs
        return list(ops.values())

    def to_native(self, arrays):
        return dict(zip(self.names, arrays))

    def __call__(self, inputs):
        return self.session.run(None, inputs)


def onnx_problem(path: str) -> str | None:
    """What onnx's checker finds wrong in the model and its external data, when onnx is installed.
    Run only after onnxruntime refused the file: it loads the model, which would count in the
    peak RSS this process reports."""
    try:
        import onnx
    except ImportError:
        return None
    try:
        onnx.checker.check_model(path)  # given a path, it checks the external data beside it too
    except Exception as e:  # noqa: BLE001 - protobuf, checker and OS errors alike
        return f"not a valid ONNX model: {first_line(e)}"
    return None


# A .pte is a flatbuffer: a 4-byte root offset, then the file identifier "ET" and two digits of
# schema version; executorch's serializer inserts its extended header ("eh00", its length, the
# program size, the segments' offset and size, little-endian) after them (exir/_serialize/_program.py).
PTE_IDENTIFIER = b"ET"
PTE_EXTENDED_HEADER = b"eh00"
PTE_HEADER_MIN_LENGTH = 24


def check_pte(path: str) -> None:
    """Raise BadArtifact unless the file starts as a .pte and is as long as its header says."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(64)
    if len(head) < 8 or head[4:6] != PTE_IDENTIFIER or not head[6:8].isdigit():
        raise BadArtifact(f"not an ExecuTorch program: no 'ET' flatbuffer identifier at byte 4 "
                          f"(found {head[4:8]!r}, {size} bytes)")
    if head[8:12] != PTE_EXTENDED_HEADER:
        return  # a file without the extended header: the runtime's own verification decides
    length = struct.unpack_from("<I", head, 12)[0] if len(head) >= 16 else 0
    if len(head) < 8 + max(length, PTE_HEADER_MIN_LENGTH):
        raise BadArtifact(f"truncated ExecuTorch program: {size} bytes, its header is cut off or corrupt")
    program_size, segment_base = struct.unpack_from("<QQ", head, 16)
    segment_size = struct.unpack_from("<Q", head, 32)[0] if length > PTE_HEADER_MIN_LENGTH else 0
    if length < PTE_HEADER_MIN_LENGTH or program_size > size:
        raise BadArtifact(f"truncated or corrupt ExecuTorch program: header says {program_size} "
                          f"bytes of program, the file has {size}")
    if segment_base and segment_base + segment_size > size:
        raise BadArtifact(f"truncated ExecuTorch program: its data segments end at byte "
                          f"{segment_base + segment_size}, the file has {size} bytes")


class ExecuTorchModel:
    def __init__(self, path: str, engine: str | None, threads: int) -> None:
        check_pte(path)
        import torch
        from executorch.extension.pybindings import portable_lib
        from executorch.runtime import Runtime

        portable_lib._unsafe_reset_threadpool(threads)  # XNNPACK's thread pool
        self.torch = torch
        self.path = path
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

    def profile(self, inputs, warmup: int, runs: int) -> list[dict]:
        """The runtime's ETDump read with ExecuTorch's devtools Inspector: time per delegate call
        (XNNPACK) and per operator left to the portable kernels."""
        import tempfile

        from executorch.devtools import Inspector
        from executorch.runtime import Runtime

        program = Runtime.get().load_program(self.path, enable_etdump=True)
        method = program.load_method("forward")
        for _ in range(warmup):
            method.execute(inputs)
        with tempfile.TemporaryDirectory() as tmp:
            program.write_etdump_result_to_file(os.path.join(tmp, "run.etdp"), os.path.join(tmp, "debug.bin"))
            warm = Inspector(etdump_path=os.path.join(tmp, "run.etdp"))
            for _ in range(runs):
                method.execute(inputs)
            program.write_etdump_result_to_file(os.path.join(tmp, "run.etdp"), os.path.join(tmp, "debug.bin"))
            inspector = Inspector(etdump_path=os.path.join(tmp, "run.etdp"))
        return etdump_ops(inspector, warm, runs)


def etdump_ops(inspector, warm, runs: int) -> list[dict]:
    """Per event of the method's executions (a delegate call, an op inside a delegate, an operator
    on the portable kernels): ms per execution of the `runs` measured. Ops inside a delegate are
    `nested`: their time is part of their DELEGATE_CALL's.

    Writing a dump empties ExecuTorch's buffer (executorch 1.5.1: the second dump holds only the
    runs after the first), so the warm-up's dump (`warm`) is taken away only from a dump that still
    holds it. Taking it from one that did not made the times low, and the delegate call's negative
    when the first call, which packs the weights, was slow: the profile then lost it."""
    def totals(source) -> tuple[dict, int]:
        out, executions = {}, 0
        for block in source.event_blocks:
            for e in block.events:
                if e.name == "Method::execute":
                    executions += len(e.perf_data.raw) if e.perf_data else 0
                if e.name in ("Method::execute", "Program::load_method") or not e.perf_data:
                    continue
                key = (e.name, bool(e.is_delegated_op), e.delegate_backend_name or "")
                ms, calls = out.get(key, (0.0, 0))
                out[key] = (ms + sum(e.perf_data.raw), calls + len(e.perf_data.raw))
        return out, executions

    (before, warm_runs), (after, all_runs) = totals(warm), totals(inspector)
    if all_runs <= runs:  # the dump holds the measured runs alone
        before, warm_runs = {}, 0
    runs = max(1, all_runs - warm_runs)
    ops = []
    for (name, nested, backend), (ms, calls) in after.items():
        old_ms, old_calls = before.get((name, nested, backend), (0.0, 0))
        ops.append({"name": name, "op": name.split(" #")[0], "nested": nested,
                    "kernel": backend or ("delegate" if nested or name == "DELEGATE_CALL" else "portable"),
                    "ms": (ms - old_ms) / runs, "calls": (calls - old_calls) / runs})
    return ops


LOADERS = {".pt": TorchScriptModel, ".onnx": OnnxModel, ".pte": ExecuTorchModel}


def load(path: str, engine: str | None, threads: int):
    suffix = os.path.splitext(path)[1]
    if suffix not in LOADERS:
        raise BadArtifact(f"unknown artifact type {suffix!r}; known: {', '.join(LOADERS)}")
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


# The CPU features int8 kernels choose their code paths by (edgeship.environment.INT8_ISA_FLAGS;
# the runner imports nothing of edgeship): x86 VNNI/AMX multiply int8 pairs without 16-bit
# saturation, ARM's dot-product and i8mm instructions likewise.
INT8_ISA_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8",
                  "asimddp", "i8mm", "sve")


def read_text(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except (OSError, UnicodeDecodeError):
        return None


def cpu_facts() -> dict:
    """The CPU model and its int8 ISA flags, from /proc/cpuinfo (x86 `flags`, ARM `Features`)."""
    model, flags = None, set()
    for line in (read_text("/proc/cpuinfo") or "").splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "Hardware") and model is None:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    return {"cpu": model or platform.processor() or platform.machine(), "arch": platform.machine(),
            "cores": os.cpu_count(), "int8_isa": sorted(flags & set(INT8_ISA_FLAGS))}


def thermal_state(cpus: list[int]) -> dict:
    """What can skew a timing, where the kernel lets it be read (a VM often shows none): each
    CPU's frequency governor and current MHz, and every thermal zone's temperature."""
    governor, mhz, celsius = {}, {}, {}
    for cpu in cpus:
        base = f"/sys/devices/system/cpu/cpu{cpu}/cpufreq/"
        if (value := read_text(base + "scaling_governor")) is not None:
            governor[str(cpu)] = value
        if (value := read_text(base + "scaling_cur_freq")) and value.isdigit():
            mhz[str(cpu)] = int(value) / 1000
    zones = "/sys/class/thermal"
    for zone in sorted(os.listdir(zones)) if os.path.isdir(zones) else []:
        temp = read_text(f"{zones}/{zone}/temp")
        if zone.startswith("thermal_zone") and temp and temp.lstrip("-").isdigit():
            celsius[f"{read_text(f'{zones}/{zone}/type') or zone}:{zone}"] = int(temp) / 1000
    return {"governor": governor, "mhz": mhz, "celsius": celsius}


def bench(args) -> dict:
    affinity = apply_affinity(args.cpus)
    cpus = affinity or (sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [])
    before = thermal_state(cpus)
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
        "system": {**cpu_facts(), "cpus": cpus, "before": before, "after": thermal_state(cpus)},
    }


PROFILED_RUNS = 200  # enough for steady per-op means; profiles of more grow large


def profile(args) -> dict:
    """Per-op time on the device, in a process of its own: profiling adds overhead, so these
    runs never enter a latency figure."""
    apply_affinity(args.cpus)
    model = load(args.artifact, args.engine, args.threads)
    inputs = model.to_native(read_inputs(args.inputs))
    runs = max(1, min(args.min_iterations, PROFILED_RUNS))
    ops = model.profile(inputs, max(1, args.warmup), runs)
    ops = sorted((o for o in ops if o["ms"] > 0), key=lambda o: -o["ms"])
    return {"mode": "profile", "runs": runs, "ops": ops, "runtime": model.runtime,
            "ms_per_run": sum(o["ms"] for o in ops if not o.get("nested"))}


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


def count(least: int):
    """An argparse type: a whole number >= `least`."""
    def parse_count(text: str) -> int:
        value = int(text)  # argparse reports a ValueError as "invalid parse_count value"
        if value < least:
            raise argparse.ArgumentTypeError(f"{value} is below {least}")
        return value
    return parse_count


def seconds(text: str) -> float:
    """An argparse type: a finite, non-negative number of seconds (inf would overflow the
    nanosecond deadline; nan would never end a loop)."""
    value = float(text)
    if not math.isfinite(value) or value < 0 or value > MAX_SECONDS:
        raise argparse.ArgumentTypeError(f"{text} is not a number of seconds from 0 to {MAX_SECONDS:g}")
    return value


MAX_SECONDS = 7 * 24 * 3600.0

# What bench needs to be told: the host's benchmark settings (BenchmarkSettings in
# devices/profile.py, the one place they are declared with their defaults), never a default here.
BENCH_SETTINGS = (("--warmup", count(0)), ("--min-iterations", count(1)), ("--min-seconds", seconds),
                  ("--max-seconds", seconds))


class Parser(argparse.ArgumentParser):
    def error(self, message):
        """One line, not argparse's usage and error: the host shows the runner's last lines."""
        fail(f"bad arguments: {message}", 2)


def parse(argv):
    parser = Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["bench", "predict", "profile"])
    parser.add_argument("artifact")
    parser.add_argument("--inputs", required=True, help=".npz with input_0, input_1, ...")
    parser.add_argument("--outputs", help="predict: .npz to write output_0, ... to")
    parser.add_argument("--engine", help="quantized engine for TorchScript (fbgemm, qnnpack)")
    parser.add_argument("--threads", type=count(1), default=1)
    parser.add_argument("--cpus", help="comma-separated CPU ids to pin the process to")
    parser.add_argument("--batch-size", type=count(1), default=1)
    settings = [parser.add_argument(flag, type=kind, help="bench: required")
                for flag, kind in BENCH_SETTINGS]
    args = parser.parse_args(argv)
    missing = [a.option_strings[0] for a in settings if getattr(args, a.dest) is None]
    if args.mode in ("bench", "profile") and missing:
        parser.error(f"bench needs {', '.join(missing)} (the host's benchmark settings)")
    return args


def fail(message: str, code: int) -> None:
    sys.stdout.flush()
    sys.stderr.write(f"runner: error: {message}\n")
    sys.stderr.flush()
    sys.exit(code)


def run(args) -> dict:
    """bench or predict; a failure is one line and an exit code, never a traceback."""
    if not os.path.isfile(args.artifact):
        fail(f"{args.artifact}: no such file", 2)
    try:
        return {"bench": bench, "predict": predict, "profile": profile}[args.mode](args)
    except BadArtifact as e:
        fail(f"{os.path.basename(args.artifact)}: {e}", 2)
    except Exception as e:  # noqa: BLE001 - the runtime failed on it: the host reports the line
        fail(f"{os.path.basename(args.artifact)}: {first_line(e)}", 3)


def main(argv=None) -> None:
    args = parse(argv)
    result = run(args)
    result.update(runner_version=RUNNER_VERSION, artifact=os.path.basename(args.artifact),
                  python=platform.python_version(), machine=platform.machine())
    sys.stdout.flush()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
