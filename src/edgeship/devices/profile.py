"""Device profiles: TOML files describing a device and how to reach it.

Shipped profiles live in devices/profiles/; a recipe names one by name or gives a path to its own.
"""

from __future__ import annotations

import platform
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationError, create_model, field_validator
from pydantic.fields import FieldInfo

from edgeship.config import Name, Section, read_toml, validation_problems
from edgeship.errors import UserError
from edgeship.targets import Format


class BenchmarkSettings(Section):
    """How a device measures an artifact. Declared once: a profile's [benchmark] table, the
    recipe's overrides (BenchmarkOverrides) and the runner's arguments all come from these fields.
    The upper bounds are far beyond any real measurement; past them a value is a typo that would
    otherwise fail later inside the runner (threads, timers) or never finish."""

    threads: int = Field(1, ge=1, le=1024, description="Intra-op threads of the runtime.")
    cpus: list[Annotated[int, Field(ge=0, le=65535)]] | None = Field(
        None, description="CPU ids to pin the runner to (big cores).")
    warmup_iterations: int = Field(10, ge=0, le=1_000_000, description="Untimed runs before timing.")
    min_iterations: int = Field(100, ge=1, le=1_000_000_000, description="Timed runs, at least.")
    min_seconds: float = Field(1.0, ge=0, le=3600, description="Seconds of timed runs, at least.")
    timeout_seconds: float = Field(120.0, gt=0, le=86400, description="Kill a measurement after this.")
    repetitions: int = Field(1, ge=1, le=100, description="Fresh runner processes per artifact, one "
                                                          "after another; the report gives the spread "
                                                          "between them beside the spread within one.")
    cooldown_seconds: float = Field(0.0, ge=0, le=600, description="Pause before each repetition "
                                                                   "after the first.")
    profile: bool = Field(False, description="Also profile each artifact per op on the device "
                                             "(ONNX Runtime's profiler, torch.profiler, ExecuTorch "
                                             "ETDump), in a process of its own: never in a timing.")

    def overridden(self, overrides: BenchmarkOverrides) -> BenchmarkSettings:
        """These settings with the recipe's overrides (the fields it sets) put in."""
        return self.model_copy(update=overrides.model_dump(exclude_none=True))

    def runner_args(self) -> tuple[str, ...]:
        """The runner's bench arguments for these settings (it has no defaults of its own)."""
        args = ["--threads", str(self.threads), "--warmup", str(self.warmup_iterations),
                "--min-iterations", str(self.min_iterations), "--min-seconds", str(self.min_seconds),
                # the runner stops itself (and says the run is not valid) before the hard kill
                "--max-seconds", str(max(self.min_seconds, self.timeout_seconds / 2))]
        if self.cpus:
            args += ["--cpus", ",".join(map(str, self.cpus))]
        return tuple(args)


# Pinning to CPU ids is a fact of one device: a recipe's overrides apply to every device of a run.
_PER_DEVICE = {"cpus"}


def _optional(field: FieldInfo) -> tuple:
    """The field, unset by default, with its constraints and description."""
    kind = Annotated[field.annotation, *field.metadata] if field.metadata else field.annotation
    return kind | None, \
        Field(None, description=field.description)


BenchmarkOverrides = create_model(
    "BenchmarkOverrides", __base__=Section,
    __doc__="The recipe's [benchmark]: overrides of the device profiles' benchmark settings, for "
            "every device of this run.",
    **{name: _optional(field) for name, field in BenchmarkSettings.model_fields.items()
       if name not in _PER_DEVICE})


class LocalTransport(Section):
    kind: Literal["local"]
    python: str | None = Field(None, description="Python to run the runner with; default: "
                                                 "the one running edgeship.")


class SshTransport(Section):
    kind: Literal["ssh"]
    host: str = Field(min_length=1, description="Host name or address of the device.")
    port: int = Field(22, ge=1, le=65535, description="sshd port on the device.")
    user: str | None = Field(None, description="Login name; default: ssh's own (config or $USER).")
    identity_file: Path | None = Field(None, description="Private key to log in with (~ expanded); "
                                                         "default: ssh's own keys and agent.")
    python: str = Field("python3", description="Python on the device that has the runtimes.")
    workdir: str = Field("/tmp/edgeship", description="Folder on the device for artifacts, inputs "
                                                      "and the runner; absolute or ~/...")
    connect_timeout_seconds: int = Field(10, ge=1, description="Give up on an unreachable device "
                                                               "after this (ssh ConnectTimeout).")
    options: list[str] = Field(default_factory=list, description="Extra ssh -o options, e.g. "
                                                                 "'UserKnownHostsFile=/dev/null'.")

    @field_validator("identity_file")
    @classmethod
    def _expand_user(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    @field_validator("workdir")
    @classmethod
    def _rooted(cls, value: str) -> str:
        # Remote commands run from the login folder, and paths are built by joining onto this one.
        if not (value.startswith("/") or value.startswith("~/")):
            raise ValueError(f"must be absolute or start with ~/, not {value!r}")
        return value.rstrip("/")


class AdbTransport(Section):
    kind: Literal["adb"]
    serial: str | None = Field(None, description="Device serial (`adb devices`); default: the one "
                                                 "device attached.")
    python: str | None = Field(None, description="Path to a Python on the device that the adb "
                                                 "shell user can run (with the runtimes).")
    workdir: str = Field("/data/local/tmp/edgeship", description="Folder on the device for "
                                                                 "artifacts, inputs and the runner.")
    adb: str = Field("adb", description="The adb client: a name on PATH or a path.")
    command_timeout_seconds: float = Field(60.0, gt=0, description="Limit for each adb command "
                                                                   "other than the measurement.")

    @field_validator("workdir")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"must be an absolute path on the device, not {value!r}")
        return value.rstrip("/")


QemuCpu = Literal["cortex-a53", "cortex-a55", "cortex-a72", "cortex-a76", "neoverse-n1", "neoverse-v1",
                  "neoverse-n2", "a64fx", "max"]


class QemuTransport(Section):
    kind: Literal["qemu"]
    cpu: QemuCpu = Field("cortex-a76", description="The CPU qemu emulates: which ISA extensions "
                                                   "the kernels see (a Raspberry Pi 5: cortex-a76).")
    slowdown: float = Field(60.0, ge=1, description="How much longer than on this host a runner "
                                                    "process may take (emulation is 25-200x slower); "
                                                    "scales the benchmark timeout.")


TRANSPORT_KINDS = ("local", "ssh", "adb", "qemu")
Transport = Annotated[LocalTransport | SshTransport | AdbTransport | QemuTransport, Field(discriminator="kind")]


class DeviceProfile(Section):
    name: Name
    description: str = ""
    arch: Literal["x86_64", "aarch64", "auto"] = Field(description="'auto': read from the host.")
    os: Literal["linux", "android", "macos"] = "linux"
    cores: int | None = Field(None, ge=1, description="CPU cores; None: read from the host.")
    big_cores: list[int] | None = Field(None, description="Ids of the fast cores, if any.")
    memory_mb: int | None = Field(None, ge=1, description="RAM in 10^6 bytes.")
    int8_engines: list[Literal["fbgemm", "qnnpack", "xnnpack", "onnxruntime"]] = Field(
        description="int8 kernel libraries present on the device.")
    runtimes: list[Format] = Field(description="Artifact formats the device can run.")
    transport: Transport
    # after transport: report.json's devices[] have always listed it there
    benchmark: BenchmarkSettings = Field(default_factory=BenchmarkSettings)

    @field_validator("transport", mode="before")
    @classmethod
    def _known_kind(cls, value: object) -> object:
        # pydantic's own words here name its discriminator machinery, not the profile's keys.
        if isinstance(value, dict):
            kind = value.get("kind")
            if kind is None:
                raise ValueError(f"kind is missing; one of: {', '.join(TRANSPORT_KINDS)}")
            if kind not in TRANSPORT_KINDS:
                raise ValueError(f"unknown kind {kind!r}; known: {', '.join(TRANSPORT_KINDS)}")
        return value

    @property
    def emulated(self) -> bool:
        """Its latencies are an emulator's: no latency budget and no recommendation reads them."""
        return self.transport.kind == "qemu"

    @property
    def known_arch(self) -> str | None:
        """The CPU architecture before anything is run: 'auto' is this machine's for a local
        device; None for a remote one (known only once it answers)."""
        if self.arch != "auto":
            return self.arch
        return platform.machine().lower().replace("arm64", "aarch64") if self.transport.kind == "local" else None


def _key_path_in_file(problem: str) -> str:
    """pydantic puts the union's tag in the key path (transport.ssh.port); the file says
    transport.port."""
    for kind in TRANSPORT_KINDS:
        if problem.startswith(f"transport.{kind}."):
            return "transport." + problem.removeprefix(f"transport.{kind}.")
    return problem


def shipped_profiles() -> dict[str, Path]:
    folder = resources.files("edgeship.devices") / "profiles"
    return {Path(p.name).stem: Path(str(p)) for p in folder.iterdir() if p.name.endswith(".toml")}


def load_profile(name_or_path: str, base_dir: Path = Path.cwd()) -> DeviceProfile:
    shipped = shipped_profiles()
    if name_or_path in shipped:
        path = shipped[name_or_path]
    elif name_or_path.endswith(".toml"):
        path = base_dir / name_or_path
    else:
        raise UserError(f"unknown device {name_or_path!r}; known: {', '.join(sorted(shipped))} "
                        f"(or a path to a profile .toml)")
    data = read_toml(path, "device profile")
    try:
        return DeviceProfile.model_validate(data)
    except ValidationError as e:
        problems = [_key_path_in_file(p) for p in validation_problems(e, DeviceProfile)]
        raise UserError("\n".join(f"{path}: {p}" for p in problems)) from None
