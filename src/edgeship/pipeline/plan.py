"""The plan: which stages run, for which flows and targets, on which devices. Built from the
recipe and checked before any stage runs (as ExecuTorch's export pipeline checks its stage order
up front); what needs the model is checked right after loading it, before any training."""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from torch import nn

from edgeship.devices.profile import BenchmarkSettings, DeviceProfile, load_profile
from edgeship.errors import UserError
from edgeship.formats import unsupported_layers
from edgeship.quantize.distributed import backend_for
from edgeship.cluster import require_ray
from edgeship.quantize.dynamic import check_quantizable
from edgeship.recipe import Recipe
from edgeship.targets import Flow, Target, get_target, with_twins


@dataclass(frozen=True)
class Device:
    profile: DeviceProfile
    settings: BenchmarkSettings  # the profile's benchmark settings with the recipe's overrides


@dataclass(frozen=True)
class Plan:
    targets: tuple[Target, ...]  # the recipe's, then the fp32 twins they need
    static: tuple[Target, ...]  # int8 targets quantized with calibration (and QAT)
    dynamic: tuple[Target, ...]  # int8 targets quantized dynamically
    devices: tuple[Device, ...]
    prune: bool
    analyse: bool  # per-layer sensitivity or accuracy-aware fallback
    qat: bool
    listed: tuple[str, ...] = ()  # the target names the recipe lists (targets: with the twins)

    @property
    def static_flows(self) -> list[Flow]:
        """The flows of the statically quantized targets, each calibrated once."""
        return list(dict.fromkeys(t.flow for t in self.static))

    @property
    def arm_only(self) -> bool:
        """Every device the run measures is known to be ARM64 (no devices: the artifacts are for
        no particular CPU, and x86's choices stand)."""
        return bool(self.devices) and all(d.profile.known_arch == "aarch64" for d in self.devices)

    def targets_of(self, flow: Flow) -> list[Target]:
        return [t for t in self.static if t.flow is flow]

    @property
    def stages(self) -> list[str]:
        """The stages that will run, in order."""
        flows = self.static_flows
        names = ["load", "evaluate-float", *(["prune"] if self.prune else []),
                 *(["sensitivity"] if self.analyse and flows else [])]
        if flows:
            names += ["calibrate", *(["qat"] if self.qat else []), "convert"]
        names += ["quantize-dynamic"] if self.dynamic else []
        return names + ["export", "verify", "benchmark", "gate", "report"]


def make_plan(recipe: Recipe) -> Plan:
    """Everything a user can get wrong in the recipe that no validator saw: unknown device
    profiles, a distributed backend this machine lacks. UserError names it."""
    targets = with_twins(recipe.targets) if recipe.fp32_twins else [get_target(n) for n in recipe.targets]
    int8 = [t for t in targets if t.is_int8]
    q = recipe.quantization
    if recipe.cluster:
        require_ray("cluster")
    if q.qat.enabled and q.qat.distributed:
        if q.qat.distributed.engine == "ray":
            require_ray("quantization.qat.distributed.engine = 'ray'")
        backend_for(q.qat.distributed)
    profiles = [load_profile(d, recipe.base_dir) for d in recipe.devices]
    check_budget_devices(recipe, [p.name for p in profiles])
    return Plan(targets=tuple(targets),
                static=tuple(t for t in int8 if recipe.mode(t.name) == "static"),
                dynamic=tuple(t for t in int8 if recipe.mode(t.name) == "dynamic"),
                devices=tuple(Device(p, p.benchmark.overridden(recipe.benchmark)) for p in profiles),
                prune=recipe.prune is not None, analyse=bool(q.sensitivity or q.fallback),
                qat=q.qat.enabled, listed=tuple(recipe.targets))


def check_budget_devices(recipe: Recipe, devices: list[str]) -> None:
    """A budget on a device the run does not measure would check nothing and pass: UserError.
    Here, not in the recipe's validator: a profile given by path has its device name inside it."""
    for i, budget in enumerate(recipe.budgets):
        unmeasured = [d for d in budget.devices or [] if d not in devices]
        if unmeasured:
            raise UserError(f"budgets[{i}].devices: {', '.join(map(repr, unmeasured))} not in "
                            f"this recipe's devices; its devices: {', '.join(devices) or 'none'}")


def check_float_layers(names: list[str], model: nn.Module) -> None:
    """quantization.float_layers names modules of the model: a typo would quantize the layer."""
    modules = [name for name, _ in model.named_modules() if name]
    unknown = [name for name in names if name not in modules]
    if unknown:
        near = [m for name in unknown for m in difflib.get_close_matches(name, modules, n=1)]
        shown = ", ".join(modules[:12]) + (f", … ({len(modules)} in all)" if len(modules) > 12 else "")
        raise UserError(f"quantization.float_layers: {', '.join(map(repr, unknown))} "
                        f"{'is not a module' if len(unknown) == 1 else 'are not modules'} of the model"
                        + (f" (did you mean {', '.join(map(repr, near))}?)" if near else "")
                        + f"; its modules: {shown}")


def check_model(plan: Plan, model: nn.Module) -> None:
    """Before any training: what a target cannot do with this model is said now, one line per
    target and reason, naming the targets the recipe lists (a twin fails with its int8 target)."""
    check_quantizable(model, list(plan.dynamic))
    problems, refused = [], set()
    modules = dict(model.named_modules())
    for t in plan.targets:
        by_reason: dict[str, list[str]] = {}
        for name, reason in unsupported_layers(model, t).items():
            by_reason.setdefault(reason, []).append(f"{name!r} ({type(modules[name]).__name__})")
        if by_reason and not any(get_target(r).twin == t.name for r in refused):
            twin = t.twin if t.twin in plan.listed and unsupported_layers(model, get_target(t.twin)) else None
            remove = " and ".join([t.name] + ([twin] if twin and twin != t.name else []))
            problems += [f"target {t.name} cannot run layer{'s' if len(layers) > 1 else ''} "
                         f"{', '.join(layers)}: {reason}; remove {remove} from targets"
                         for reason, layers in by_reason.items()]
        refused |= {t.name} if by_reason else set()
    if problems:
        raise UserError("\n".join(problems))
