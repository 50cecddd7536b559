"""`edgeship devices list|show|check|setup`: the shipped profiles, one profile validated, what a
device has (connecting to it), and building what an emulated device needs. Each takes --json."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from edgeship.cli.common import JsonOption, devices_app, print_json, stderr, stdout
from edgeship.devices.profile import load_profile, shipped_profiles
from edgeship.errors import UserError
from edgeship.targets import TARGETS

NameArgument = Annotated[str, typer.Argument(metavar="DEVICE", help="Profile name or path to a .toml.")]


def _say(line: str) -> None:
    stdout.print(line, highlight=False, markup=False, soft_wrap=True)


@devices_app.command("list")
def devices_list(as_json: JsonOption = False) -> None:
    """The device profiles shipped with edgeship."""
    profiles = {name: load_profile(name) for name in sorted(shipped_profiles())}
    if as_json:
        print_json([{"name": n, "transport": p.transport.kind, "arch": p.arch,
                     "description": p.description} for n, p in profiles.items()])
        return
    for name, profile in profiles.items():
        _say(f"{name:12} {profile.transport.kind:6} {profile.arch:8} {profile.description}")


def flat(data: dict, prefix: str = "") -> list[str]:
    """A profile as `key.path = value` lines, values in JSON (which TOML reads too, but for null).

    >>> flat({"name": "rpi5", "transport": {"kind": "ssh", "port": 22}})
    ['name = "rpi5"', 'transport.kind = "ssh"', 'transport.port = 22']
    """
    lines = []
    for key, value in data.items():
        if isinstance(value, dict):
            lines += flat(value, f"{prefix}{key}.")
        else:
            lines.append(f"{prefix}{key} = {json.dumps(value)}")
    return lines


@devices_app.command("show")
def devices_show(name: NameArgument, as_json: JsonOption = False) -> None:
    """A device profile, validated, with its defaults filled in."""
    data = load_profile(name).model_dump(mode="json")
    if as_json:
        print_json(data)
        return
    for line in flat(data):
        _say(line)


@devices_app.command("check")
def devices_check(name: NameArgument, as_json: JsonOption = False) -> None:
    """Connect to a device: what it has (Python, CPU, memory, runtimes) and what each target lacks."""
    from edgeship.devices.transports import transport_for  # torch, through the format specs

    profile = load_profile(name)
    transport = transport_for(profile)
    try:
        facts = transport.check()  # RunnerFailed (a DeviceError, exit 3) when unreachable
    finally:
        transport.close()
    if as_json:
        print_json({"device": profile.name, **facts,
                    "undeclared": [t for t in facts["targets"] if TARGETS[t].format not in profile.runtimes]})
        return
    _print_facts(profile, facts)


def _print_facts(profile, facts: dict) -> None:
    memory = f"{facts['memory_mb']} MB" if facts["memory_mb"] else "unknown"
    _say(f"{profile.name}: Python {facts['python']} ({facts['executable']}), "
         f"{facts['system']} {facts['machine']}, {facts['cpu_count']} CPUs "
         f"({facts['cpu'] or 'model unknown'}), memory {memory}, int8 ISA "
         f"{' '.join(facts.get('int8_isa') or []) or 'none'}")
    for package, version in facts["packages"].items():
        error = facts["import_errors"].get(package)
        _say(f"  {package:12} {version or 'missing' + (f' ({error})' if error else '')}")
    if facts["torch_quantized_engines"]:
        _say(f"  torch quantized engines: {', '.join(facts['torch_quantized_engines'])}")
    for target, missing in facts["targets"].items():
        declared = TARGETS[target].format in profile.runtimes
        note = "" if declared else " (not in the profile's runtimes)"
        state = "ready" if not missing else "missing " + ", ".join(missing)
        _say(f"  {target:20} {state}{note}")


@devices_app.command("setup")
def devices_setup(name: NameArgument, as_json: JsonOption = False) -> None:
    """Build what a device needs on this host, once: for an emulated device (transport qemu), the
    aarch64 environment (qemu-user, a CPython sysroot, the host's runtime versions as aarch64
    wheels) in a cache folder ($EDGESHIP_CACHE, default ~/.cache/edgeship). About 0.6 GB is
    downloaded and 1.4 GB kept."""
    from edgeship.devices.emulation.environment import setup

    profile = load_profile(name)
    if profile.transport.kind != "qemu":
        raise UserError(f"{profile.name}: a {profile.transport.kind} device needs nothing built here; "
                        f"`edgeship devices check {name}` says what it has")
    env = setup(say=lambda line: stderr.print(f"  {line}", markup=False, highlight=False))
    described = env.description
    if as_json:
        print_json({"device": profile.name, "folder": str(env.folder), **described})
        return
    _say(f"{profile.name}: aarch64 environment ready in {env.folder}: {described['disk_bytes'] / 1e9:.2f} GB "
         f"on disk, {described['download_bytes'] / 1e6:.0f} MB downloaded, built in {described['seconds']:.0f} s; "
         f"torch {described['imports']['torch']} (engines {', '.join(described['imports']['engines'])}), "
         f"onnxruntime {described['imports']['onnxruntime']}; CUDA stubs for {len(described['stubs'])} libraries")
