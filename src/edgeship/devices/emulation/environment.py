"""The emulated aarch64 environment: qemu-aarch64, an aarch64 sysroot with CPython 3.11, the
aarch64 wheels of the host's own runtime versions, and the stubs torch's wheel needs. Built once
into a cache folder outside any run folder (`edgeship devices setup NAME`), into a temporary
folder renamed when whole, and described by its `environment.json`; a folder without it, or
made for other versions, is never used."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from edgeship.devices.emulation.apt import CROSS_BINUTILS, QEMU, SYSROOT_ROOTS, Apt, unpack
from edgeship.devices.emulation.stubs import build_stubs
from edgeship.errors import UserError

EMULATION_VERSION = 1  # bump when the layout of the environment changes
RUNTIMES = ("torch", "onnxruntime", "executorch", "numpy")
# What torch and executorch import beyond their own wheels (both installed without their
# dependencies: torch's name CUDA packages that have no use here); pinned to the host's versions.
PURE_DEPENDENCIES = ("filelock", "typing_extensions", "sympy", "mpmath", "networkx", "jinja2", "MarkupSafe",
                     "fsspec", "ruamel.yaml", "pyyaml", "tabulate", "packaging", "flatbuffers")
PLATFORM = ("--only-binary=:all:", "--platform", "manylinux_2_28_aarch64", "--python-version", "3.11",
            "--implementation", "cp", "--abi", "cp311")
# One environment serves every emulated CPU: the shipped profile's name always builds it.
SETUP_COMMAND = "edgeship devices setup arm64-emulated"
IMPORT_CHECK = ("import torch, onnxruntime, executorch.runtime, numpy, json; "
                "print(json.dumps({'torch': torch.__version__, 'onnxruntime': onnxruntime.__version__, "
                "'engines': torch.backends.quantized.supported_engines}))")


def host_versions() -> dict[str, str]:
    out = {}
    for name in RUNTIMES:
        try:  # 2.13.0+cpu: the local part names a build (CPU, CUDA), not a release
            out[name] = metadata.version(name).split("+")[0]
        except metadata.PackageNotFoundError:
            raise UserError(f"the emulated device takes the host's {name} version, and {name} is not "
                            f"installed here") from None
    return out


def cache_root() -> Path:
    return Path(os.environ.get("EDGESHIP_CACHE") or Path.home() / ".cache" / "edgeship")


def folder_for(versions: dict[str, str]) -> Path:
    key = hashlib.sha256(json.dumps([EMULATION_VERSION, versions], sort_keys=True).encode()).hexdigest()
    return cache_root() / f"aarch64-{key[:12]}"


class Environment:
    """One built environment: what runs the runner as aarch64, under a given CPU model."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.qemu = folder / "usr" / "bin" / "qemu-aarch64"
        self.sysroot, self.site, self.stubs = folder / "sysroot", folder / "site", folder / "stubs"
        self.python = self.sysroot / "usr" / "bin" / "python3.11"

    def argv(self, cpu: str, *args: str) -> list[str]:
        return [str(self.qemu), "-cpu", cpu, str(self.python), *args]

    def env(self) -> dict[str, str]:
        return {**os.environ, "QEMU_LD_PREFIX": str(self.sysroot), "PYTHONPATH": str(self.site),
                "LD_LIBRARY_PATH": str(self.stubs), "PYTHONDONTWRITEBYTECODE": "1"}

    @property
    def description(self) -> dict:
        return json.loads((self.folder / "environment.json").read_text())


def ready_environment(setup_hint: str = SETUP_COMMAND) -> Environment:
    """The environment for the host's versions, or UserError with the command that builds it."""
    versions = host_versions()
    folder = folder_for(versions)
    marker = folder / "environment.json"
    if not marker.is_file():
        raise UserError(f"the emulated aarch64 environment for {', '.join(f'{k} {v}' for k, v in versions.items())} "
                        f"is not built ({folder} {'is half-built' if folder.exists() else 'does not exist'}); "
                        f"build it with: {setup_hint}")
    return Environment(folder)


def _pip(command: str, *args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", command, "-q", "--disable-pip-version-check", *args],
                          capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise UserError(f"pip could not fetch the aarch64 wheels: {proc.stderr.strip().splitlines()[-1:]}")


def _pinned(names: tuple[str, ...]) -> list[str]:
    out = []
    for name in names:
        try:
            out.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            out.append(name)
    return out


def _wheels(work: Path, versions: dict[str, str], say) -> None:
    """Downloaded into work/wheels (their size is the download), then installed from there."""
    say("aarch64 wheels: numpy, onnxruntime and their dependencies; torch and executorch without theirs")
    wheels, site = str(work / "wheels"), str(work / "site")
    _pip("download", "-d", wheels, *PLATFORM, f"numpy=={versions['numpy']}",
         f"onnxruntime=={versions['onnxruntime']}", *_pinned(PURE_DEPENDENCIES))
    _pip("download", "-d", wheels, "--no-deps", *PLATFORM, f"torch=={versions['torch']}",
         f"executorch=={versions['executorch']}")
    _pip("install", "--no-index", "--no-deps", "--target", site, *PLATFORM,
         *map(str, sorted((work / "wheels").glob("*.whl"))))


def _debian(work: Path, say) -> None:
    apt = Apt(work / "apt")
    say("apt: package lists of bookworm (arm64, amd64) and trixie (amd64), privately")
    apt.update()
    say("qemu-aarch64 from trixie's qemu-user; aarch64 binutils; the aarch64 CPython 3.11 sysroot")
    for deb in apt.download([QEMU], work / "debs" / "qemu"):
        unpack(deb, work, ("./usr/bin/qemu-aarch64",))
    for deb in apt.download([CROSS_BINUTILS], work / "debs" / "cross"):
        unpack(deb, work / "cross")
    for deb in apt.download(apt.closure(SYSROOT_ROOTS), work / "debs" / "sysroot"):
        unpack(deb, work / "sysroot")


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def setup(say=print) -> Environment:
    """Build the environment for the host's versions (a no-op when it is there) and check that
    torch, onnxruntime and executorch import under qemu."""
    versions = host_versions()
    folder = folder_for(versions)
    if (folder / "environment.json").is_file():
        return Environment(folder)
    started, work = time.monotonic(), folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        _debian(work, say)
        _wheels(work, versions, say)
        download = _size(work / "debs") + _size(work / "wheels")
        say("stubs for what torch's aarch64 wheel links and nobody ships (read from the wheel)")
        stubs = build_stubs(work / "cross", work / "site", work / "sysroot", work / "stubs")
        for leftover in ("debs", "apt", "cross", "wheels"):
            shutil.rmtree(work / leftover)
        found = _import_check(Environment(work))
        description = {"versions": versions, "qemu": QEMU, "stubs": stubs, "imports": found,
                       "seconds": round(time.monotonic() - started, 1), "download_bytes": download,
                       "disk_bytes": _size(work), "emulation_version": EMULATION_VERSION}
        (work / "environment.json").write_text(json.dumps(description, indent=2) + "\n")
        shutil.rmtree(folder, ignore_errors=True)  # half-built by a killed setup
        work.rename(folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return Environment(folder)


def _import_check(env: Environment) -> dict:
    proc = subprocess.run(env.argv("max", "-c", IMPORT_CHECK), env=env.env(), capture_output=True, text=True,
                          timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        raise UserError(f"the emulated environment does not import its runtimes (exit {proc.returncode}): {tail}")
    return json.loads(lines[-1])
