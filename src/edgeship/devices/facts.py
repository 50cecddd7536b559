"""What a device has for the runner: its Python, CPU, memory, the runtimes that import there, and
for each format and target what it lacks. Read by `edgeship devices check` through any transport."""

from __future__ import annotations

from edgeship.environment import INT8_ISA_FLAGS
from edgeship.formats import FORMATS, spec_for
from edgeship.targets import TARGETS

# Run with `python -c` on a device by `check()`: what it has for the runner. Standalone, like the
# runner; modules are imported, not just looked up, because a wheel built for another CPU or
# Python is found but does not load.
CHECK_SNIPPET = """
import importlib, json, os, platform, sys
from importlib import metadata
packages, errors = {}, {}
for name, module in (("numpy", "numpy"), ("psutil", "psutil"), ("torch", "torch"),
                     ("onnxruntime", "onnxruntime"), ("executorch", "executorch.runtime")):
    try:
        importlib.import_module(module)
    except Exception as e:
        packages[name], errors[name] = None, f"{type(e).__name__}: {e}".splitlines()[0][:200]
        continue
    try:
        packages[name] = metadata.version(name)
    except Exception:
        packages[name] = "unknown"
engines = []
if packages["torch"]:
    import torch
    engines = list(torch.backends.quantized.supported_engines)
cpu, flags = None, set()
try:
    with open("/proc/cpuinfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Hardware") and cpu is None:
                cpu = value.strip()
            elif key.strip() in ("flags", "Features") and not flags:
                flags = set(value.split())
except OSError:
    pass
int8_isa = sorted(flags & set(%(INT8_ISA_FLAGS)r))
try:
    memory_mb = round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 1e6)
except (ValueError, OSError):
    memory_mb = None
print(json.dumps({"python": platform.python_version(), "executable": sys.executable,
                  "machine": platform.machine(), "system": platform.system(),
                  "release": platform.release(), "cpu": cpu or platform.processor() or None,
                  "cpu_count": os.cpu_count(), "memory_mb": memory_mb, "packages": packages,
                  "import_errors": errors, "torch_quantized_engines": engines,
                  "int8_isa": int8_isa}))
""" % {"INT8_ISA_FLAGS": INT8_ISA_FLAGS}

def with_missing(facts: dict) -> dict:
    """Adds, for each format and each target, what the device lacks to run it ([] = runnable):
    the packages its format's runner imports (FormatSpec.runtime_packages), and for an artifact
    packed for one torch quantized engine, that engine in the device's torch build."""
    have = {name for name, version in facts["packages"].items() if version}
    formats = {fmt.value: [p for p in spec.runtime_packages if p not in have]
               for fmt, spec in FORMATS.items()}
    targets = {}
    for target in TARGETS.values():
        missing = list(formats[target.format.value])
        engine = spec_for(target.format).torch_engine(target)
        if engine and "torch" in have and engine not in facts["torch_quantized_engines"]:
            missing.append(f"torch quantized engine {engine}")
        targets[target.name] = missing
    return {**facts, "formats": formats, "targets": targets}
