"""Debian packages for the emulated device, fetched with the host's apt-get under a private
configuration (its own sources, lists and cache; the host's apt state is not touched): qemu-user
from trixie (bookworm's 7.2 crashes in onnxruntime), an aarch64 CPython 3.11 with its libraries
from bookworm, and bookworm's aarch64 binutils for the CUDA stubs. Packages are unpacked with
`dpkg-deb -x`, never installed."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from edgeship.errors import UserError

KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
SOURCES = (f"deb [arch=amd64 signed-by={KEYRING}] http://deb.debian.org/debian trixie main\n"
           f"deb [arch=arm64,amd64 signed-by={KEYRING}] http://deb.debian.org/debian bookworm main\n")
QEMU = "qemu-user/trixie"
CROSS_BINUTILS = "binutils-aarch64-linux-gnu/bookworm"
# The interpreter and what torch's libraries link against besides it (libgomp: OpenMP).
SYSROOT_ROOTS = ("python3.11:arm64", "libstdc++6:arm64", "libgomp1:arm64", "libatomic1:arm64")


class Apt:
    def __init__(self, folder: Path) -> None:
        for tool in ("apt-get", "apt-cache", "dpkg-deb"):
            if shutil.which(tool) is None:
                raise UserError(f"the emulated device is built with Debian's {tool}, which this host "
                                f"lacks (a Debian or Ubuntu host is needed)")
        if not Path(KEYRING).is_file():
            raise UserError(f"{KEYRING} is missing: apt-get install debian-archive-keyring")
        self.folder = folder
        (folder / "lists" / "partial").mkdir(parents=True, exist_ok=True)
        (folder / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
        (folder / "sources.list").write_text(SOURCES)

    def _options(self) -> list[str]:
        return ["-o", f"Dir::Etc::sourcelist={self.folder / 'sources.list'}", "-o", "Dir::Etc::sourceparts=-",
                "-o", f"Dir::State::Lists={self.folder / 'lists'}", "-o", f"Dir::Cache={self.folder / 'cache'}",
                "-o", "APT::Architectures=amd64,arm64", "-o", "Debug::NoLocking=1",
                "-o", "APT::Sandbox::User=root"]

    def _call(self, tool: str, *args: str, cwd: Path | None = None) -> str:
        proc = subprocess.run([tool, *self._options(), *args], capture_output=True, text=True, cwd=cwd,
                              timeout=900)
        if proc.returncode != 0:
            raise UserError(f"{tool} {' '.join(args[:3])}: {proc.stderr.strip().splitlines()[-1:]}")
        return proc.stdout

    def update(self) -> None:
        self._call("apt-get", "update", "-qq")

    def closure(self, roots: tuple[str, ...]) -> list[str]:
        """`roots` and everything they depend on (not recommends), as arch-qualified names."""
        out = self._call("apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests",
                         "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances", *roots)
        return sorted({line for line in out.splitlines() if re.fullmatch(r"[a-z0-9.+-]+:arm64", line)})

    def download(self, packages: list[str], dest: Path) -> list[Path]:
        dest.mkdir(parents=True, exist_ok=True)
        self._call("apt-get", "download", *packages, cwd=dest)
        return sorted(dest.glob("*.deb"))


def unpack(deb: Path, dest: Path, members: tuple[str, ...] = ()) -> None:
    """The package's files under `dest`; only `members` (./usr/bin/x) when given."""
    if not members:
        subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], check=True)
        return
    dest.mkdir(parents=True, exist_ok=True)
    tar = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(dest), *members], stdin=tar.stdout, check=True)
    tar.wait()
