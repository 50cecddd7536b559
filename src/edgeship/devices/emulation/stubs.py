"""Stub shared objects for what torch's aarch64 wheel links and nobody ships. torch 2.13 publishes
only a CUDA build for aarch64; its libraries name CUDA's (libcudart.so.13, libcudnn.so.9, ...,
NVSHMEM's versioned symbols) as NEEDED. The list is read from the wheel itself, never written
down: every NEEDED soname found neither in the installed wheels nor in the sysroot gets a stub
that defines the symbol versions and the symbols the wheel imports from it (functions that
return at once, zeroed data), built with Debian's aarch64 binutils. CUDA is never called on a CPU
run; `import torch` is checked under qemu afterwards."""

from __future__ import annotations

import os
import re
import subprocess
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

LIBRARY_DIRS = ("lib/aarch64-linux-gnu", "usr/lib/aarch64-linux-gnu")


@dataclass
class Needs:
    by: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))  # soname -> needing libs
    versions: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    symbols: dict[str, dict[tuple[str, str], str]] = field(default_factory=lambda: defaultdict(dict))


class Binutils:
    def __init__(self, cross: Path) -> None:
        self.bin = cross / "usr" / "bin"
        self.env = {**os.environ, "LD_LIBRARY_PATH": str(cross / "usr" / "lib" / "x86_64-linux-gnu")}

    def __call__(self, tool: str, *args: str) -> str:
        return subprocess.run([str(self.bin / f"aarch64-linux-gnu-{tool}"), *args], capture_output=True,
                              text=True, env=self.env, check=True).stdout


def _shared_objects(*folders: Path) -> list[Path]:
    return [p for folder in folders if folder.is_dir() for p in folder.rglob("*.so*")
            if p.is_file() and not p.is_symlink() and ".so" in p.name]


def _dynamic_symbols(tools: Binutils, lib: Path) -> list[list[str]]:
    return [line.split() for line in tools("readelf", "--dyn-syms", "-W", str(lib)).splitlines()
            if re.match(r"\s*\d+:", line) and len(line.split()) >= 8]


def _versions_needed(tools: Binutils, lib: Path, missing: list[str]) -> dict[str, str]:
    """version name -> the missing soname it is required from."""
    owner, out = None, {}
    for line in tools("readelf", "-V", "-W", str(lib)).splitlines():
        if found := re.search(r"File: (\S+)", line):
            owner = found.group(1)
        elif (found := re.search(r"Name: (\S+)\s+Flags", line)) and owner in missing:
            out[found.group(1)] = owner
    return out


def find_needs(tools: Binutils, libs: list[Path], available: set[str]) -> Needs:
    needs = Needs()
    for lib in libs:
        dynamic = tools("readelf", "-d", "-W", str(lib))
        missing = [n for n in re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", dynamic) if n not in available]
        if not missing:
            continue
        for name in missing:
            needs.by[name].add(lib.name)
        versions = _versions_needed(tools, lib, missing)
        for version, soname in versions.items():
            needs.versions[soname].add(version)
        for parts in _dynamic_symbols(tools, lib):
            name, _, version = parts[7].partition("@")
            if parts[6] == "UND" and version.lstrip("@") in versions:
                needs.symbols[versions[version.lstrip("@")]][(name, version.lstrip("@"))] = parts[3]
    return needs


def add_orphans(tools: Binutils, needs: Needs, libs: list[Path], pool: list[Path]) -> int:
    """Unversioned imports of the needing libraries that nothing available defines (the loader
    binds some at load time): to the stub the most libraries need."""
    defined, wanted = set(), set()
    needing = {name for names in needs.by.values() for name in names}
    for lib in pool:
        for parts in _dynamic_symbols(tools, lib):
            name = parts[7].split("@")[0]
            if parts[6] != "UND":
                defined.add(name)
            elif lib.name in needing and "@" not in parts[7] and parts[4] != "WEAK":
                wanted.add((name, parts[3]))
    home = max(sorted(needs.by), key=lambda s: len(needs.by[s]))
    for name, kind in wanted:
        if name not in defined:
            needs.symbols[home][(name, "")] = kind
    return sum(name not in defined for name, _ in wanted)


def _assembly(symbols: dict[tuple[str, str], str]) -> str:
    lines = []
    for name, _ in sorted(symbols):
        if symbols[(name, _)] == "OBJECT":
            lines += [".data", f".globl {name}", f".type {name}, %object", f".size {name}, 64", f"{name}:", ".zero 64"]
        else:
            lines += [".text", f".globl {name}", f".type {name}, %function", f"{name}:", "ret"]
    return "\n".join(lines) + "\n"


def _version_script(versions: set[str], symbols: dict[tuple[str, str], str]) -> str:
    by_version = defaultdict(list)
    for name, version in symbols:
        by_version[version].append(name)
    if not versions:
        return "{ global: *; };\n"
    nodes = []
    for i, version in enumerate(sorted(versions)):
        names = by_version[version] + (by_version[""] if i == 0 else [])
        body = (" global: " + " ".join(f"{n};" for n in names) if names else "") + (" local: *;" if i == 0 else "")
        nodes.append(f"{version} {{{body} }};")
    return "\n".join(nodes) + "\n"


def provided(site: Path, sysroot: Path) -> tuple[list[Path], set[str]]:
    """The shared objects the wheels under `site` and the sysroot provide, and every soname
    available to the loader (the sysroot's soname links included)."""
    pool = _shared_objects(site, *(sysroot / d for d in LIBRARY_DIRS))
    return pool, {p.name for p in pool} | {p.name for d in LIBRARY_DIRS for p in (sysroot / d).glob("*.so*")}


def build_stubs(cross: Path, site: Path, sysroot: Path, out: Path) -> list[str]:
    """The stubs torch's libraries under `site` need, in `out`; their sonames."""
    tools = Binutils(cross)
    libs = _shared_objects(site / "torch")
    pool, available = provided(site, sysroot)
    needs = find_needs(tools, libs, available)
    if not needs.by:
        return []  # a CPU build: nothing to stand in for
    add_orphans(tools, needs, libs, pool)
    out.mkdir(parents=True, exist_ok=True)
    for soname in sorted(needs.by):
        source, script = out / f"{soname}.s", out / f"{soname}.map"
        source.write_text(_assembly(needs.symbols[soname]))
        script.write_text(_version_script(needs.versions[soname], needs.symbols[soname]))
        tools("as", "-o", str(out / f"{soname}.o"), str(source))
        tools("ld", "-shared", "-soname", soname, "--version-script", str(script), "-o", str(out / soname),
              str(out / f"{soname}.o"))
    return sorted(needs.by)
