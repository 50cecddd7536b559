"""Device profiles: TOML files describing a device and how to reach it.

Shipped profiles live in devices/profiles/; a recipe names one by name or gives a path to its own.
"""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgeship.errors import UserError
from edgeship.recipe import BenchmarkSection, validation_problems
from edgeship.targets import Format


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BenchmarkDefaults(_Section):
    threads: int = Field(1, ge=1, description="Intra-op threads of the runtime.")
    cpus: list[int] | None = Field(None, description="CPU ids to pin the runner to (big cores).")
    warmup_iterations: int = Field(10, ge=0, description="Untimed runs before timing.")
    min_iterations: int = Field(50, ge=1, description="Timed runs, at least.")
    min_seconds: float = Field(1.0, ge=0, description="Seconds of timed runs, at least.")
    timeout_seconds: float = Field(120.0, gt=0, description="Kill a measurement after this.")

    def overridden(self, recipe: BenchmarkSection) -> BenchmarkDefaults:
        changes = {k: v for k, v in recipe.model_dump().items() if v is not None}
        return self.model_copy(update=changes)


class LocalTransport(_Section):
    kind: Literal["local"]
    python: str | None = Field(None, description="Python to run the runner with; default: "
                                                 "the one running edgeship.")


Transport = LocalTransport


class DeviceProfile(_Section):
    name: str
    description: str = ""
    arch: Literal["x86_64", "aarch64", "auto"] = Field(description="'auto': read from the host.")
    os: Literal["linux", "android", "macos"] = "linux"
    cores: int | None = Field(None, ge=1, description="CPU cores; None: read from the host.")
    big_cores: list[int] | None = Field(None, description="Ids of the fast cores, if any.")
    memory_mb: int | None = Field(None, ge=1, description="RAM in 10^6 bytes.")
    int8_engines: list[Literal["fbgemm", "qnnpack", "xnnpack", "onnxruntime"]] = Field(
        description="int8 kernel libraries present on the device.")
    runtimes: list[Format] = Field(description="Artifact formats the device can run.")
    benchmark: BenchmarkDefaults = Field(default_factory=BenchmarkDefaults)
    transport: Transport = Field(discriminator="kind")


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
    try:
        data = tomllib.loads(path.read_text())
    except OSError as e:
        raise UserError(f"{path}: cannot read device profile: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: not valid TOML: {e}") from None
    try:
        return DeviceProfile.model_validate(data)
    except ValidationError as e:
        raise UserError("\n".join(f"{path}: {p}" for p in validation_problems(e))) from None
