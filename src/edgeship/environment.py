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
            "memory_mb": round(psutil.virtual_memory().total / 1e6),
            "os": f"{platform.system()} {platform.release()}",
        },
    }
