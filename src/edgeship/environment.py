"""What the run ran on: library versions and the host, recorded in every report."""

from __future__ import annotations

import importlib.metadata
import os
import platform

import psutil

_PACKAGES = ("torch", "torchao", "executorch", "onnx", "onnxruntime", "onnxscript", "numpy")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# The CPU features int8 kernels pick their code paths by: x86 without a VNNI instruction multiplies
# u8 x s8 pairs into saturating 16-bit sums (VPMADDUBSW), ARM has dot-product and i8mm instructions.
INT8_ISA_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8",
                  "asimddp", "i8mm", "sve")
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as /proc/cpuinfo lists them (x86 `flags`, ARM `Features`)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def int8_saturates(machine: str | None = None, flags: frozenset[str] | None = None) -> bool:
    """True on an x86 CPU without VNNI: its u8 x s8 int8 kernels add pairs of products in
    saturating 16-bit registers, so 8-bit weights against full-range activations can overflow
    (ONNX Runtime's documentation: quantize weights with 7 bits there, `reduce_range`).

    >>> int8_saturates("x86_64", frozenset({"avx2"})), int8_saturates("x86_64", frozenset({"avx512_vnni"}))
    (True, False)
    >>> int8_saturates("aarch64", frozenset({"asimddp"}))
    False
    """
    machine = machine or platform.machine()
    flags = cpu_flags() if flags is None else flags
    return machine.lower() in ("x86_64", "amd64", "i686") and not flags & VNNI_FLAGS


def environment() -> dict:
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "python": platform.python_version(),
        **versions,
        "host": {
            "cpu": cpu_model(),
            "arch": platform.machine(),
            "cores": os.cpu_count(),
            "int8_isa": sorted(cpu_flags() & set(INT8_ISA_FLAGS)),
            "memory_mb": round(psutil.virtual_memory().total / 1e6),
            "os": f"{platform.system()} {platform.release()}",
        },
    }
