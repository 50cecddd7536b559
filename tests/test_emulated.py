"""The emulated aarch64 device (issue 15), for real: `edgeship devices setup` builds qemu-user, an
aarch64 CPython and the host's runtime versions as aarch64 wheels into a cache (EDGESHIP_CACHE);
a run with two emulated CPUs in `devices` answers on ARM kernels and compares value by value
with x86. Building it downloads about 0.6 GB: the tests skip where it cannot be built, unless
EDGESHIP_REQUIRE_EMULATION=1 (CI) makes that a failure."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from support import demo_recipe, run_cli, write_recipe


@pytest.fixture(scope="module")
def emulated_cache() -> Path:
    """The cache the environment is built in, once per machine (kept between CI steps)."""
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        reason = "no apt-get/dpkg-deb: the emulated device is built from Debian packages"
        if os.environ.get("EDGESHIP_REQUIRE_EMULATION") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    result = run_cli("devices", "setup", "arm64-emulated")
    if result.code != 0:
        if os.environ.get("EDGESHIP_REQUIRE_EMULATION") == "1":
            pytest.fail(f"devices setup failed: {result.stderr[-2000:]}")
        pytest.skip(f"the emulated environment could not be built here: {result.stderr[-300:]}")
    assert "aarch64 environment ready in " in result.stdout
    return Path(result.stdout.split("ready in ")[1].split(":")[0])


def test_setup_says_what_it_built_and_check_reads_the_emulated_cpu(emulated_cache, tmp_path):
    described = json.loads((emulated_cache / "environment.json").read_text())
    assert described["imports"]["torch"].startswith(described["versions"]["torch"])
    assert "qnnpack" in described["imports"]["engines"] and described["stubs"]  # read from the wheel
    assert described["download_bytes"] > 100e6 and described["disk_bytes"] > described["download_bytes"]
    a53 = tmp_path / "a53.toml"
    a53.write_text(EMULATED.format(name="a53-emulated", cpu="cortex-a53"))
    facts = {}
    for profile in ("arm64-emulated", str(a53)):
        result = run_cli("devices", "check", profile, "--json")
        assert result.code == 0, result.stderr
        facts[profile] = json.loads(result.stdout)
        assert facts[profile]["machine"] == "aarch64" and facts[profile]["targets"]["onnx-int8"] == []
    # the kernels see the CPU qemu emulates: the A76 has the dot-product instructions, the A53 not
    assert "asimddp" in facts["arm64-emulated"]["int8_isa"] and "asimddp" not in facts[str(a53)]["int8_isa"]


EMULATED = """name = "{name}"
arch = "aarch64"
int8_engines = ["qnnpack", "xnnpack", "onnxruntime"]
runtimes = ["torchscript", "onnx", "executorch"]
[benchmark]
warmup_iterations = 1
min_iterations = 2
min_seconds = 0.0
timeout_seconds = 10
[transport]
kind = "qemu"
cpu = "{cpu}"
"""


def _crash_when_seen(pattern: str, seconds: float) -> threading.Thread:
    """SIGSEGV to the first process whose command line matches `pattern`, as a crashing kernel
    would get; polled until `seconds` have passed."""

    def watch() -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
            if found:
                os.kill(int(found[0]), signal.SIGSEGV)
                return
            time.sleep(0.1)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_artifacts_answer_on_two_emulated_cpus_as_on_x86(emulated_cache, tmp_path):
    """The demo's int8 artifacts (fbgemm is x86-only: skipped with the reason) on a Cortex-A76 and
    a Cortex-A53: every answer compared with x86's; latency from the emulator is never a
    benchmark (not valid, no budget reads it, nothing recommended for it). The qnnpack runner is
    crashed on the A53 (SIGSEGV): that check fails with the signal, the budget that requires ARM
    agreement fails it (exit 1), and the other checks on that device go on."""
    (tmp_path / "a53.toml").write_text(EMULATED.format(name="a53-emulated", cpu="cortex-a53"))
    recipe = demo_recipe(targets=["torchscript-fbgemm", "torchscript-qnnpack", "onnx-int8", "executorch-xnnpack"],
                         fp32_twins=False, devices=["local", "arm64-emulated", "a53.toml"],
                         budgets=[{"max_latency_p90_ms": 50, "max_accuracy_drop": 5,
                                   "min_emulated_agreement": 0.99}])
    recipe["model"]["train"] = {"epochs": 2, "lr": 0.01}
    recipe["data"]["kwargs"] = {"limit": 400}
    recipe["quantization"]["qat"]["enabled"] = False
    crasher = _crash_when_seen("qemu-aarch64 -cpu cortex-a53 .*runner.py predict .*torchscript-qnnpack.pt", 900)
    # --setup-devices: consent to build the environment; built by the fixture, so nothing to do
    result = run_cli("run", str(write_recipe(tmp_path, recipe)), "--setup-devices", out=tmp_path / "out")
    crasher.join(timeout=1)
    assert result.code == 1, result.stdout[-3000:] + result.stderr[-3000:]
    report = result.report()
    checks = {(a["target"], c["device"]): c for a in report["artifacts"] for c in a["emulated"]}
    assert checks["torchscript-fbgemm", "arm64-emulated"]["status"] == "skipped"
    crashed = checks["torchscript-qnnpack", "a53-emulated"]
    assert crashed["status"] == "crashed" and "SIGSEGV" in crashed["error"], crashed
    for target in ("torchscript-qnnpack", "onnx-int8", "executorch-xnnpack"):
        for device, cpu in (("arm64-emulated", "cortex-a76"), ("a53-emulated", "cortex-a53")):
            check = checks[target, device]
            if check is crashed:
                continue
            assert check["status"] == "ok" and check["cpu"] == cpu, check
            assert check["samples"] > 0 and check["outputs"] == check["samples"] * 10
            assert check["top1_agreement"] >= 0.99 and check["step"] > 0, check
            assert check["one_step_outputs"] <= check["differing_outputs"]
    failed = [(v["limit_name"], v["target"]) for v in report["gate"]["violations"]]
    assert failed == [("min_emulated_agreement", "torchscript-qnnpack")], failed
    emulated = [b for a in report["artifacts"] for b in a["benchmarks"] if b["device"].endswith("emulated")
                and b["status"] == "ok"]
    assert emulated and all(b["valid"] is False and b["invalid_reasons"][0].startswith("emulated by qemu")
                            for b in emulated)
    assert [r["device"] for r in report["recommendations"]] == ["local"]
    junit = (tmp_path / "out" / "junit.xml").read_text()
    assert 'name="min_emulated_agreement"' in junit and "not run on an emulated device" in junit  # fbgemm
    assert "on ARM (emulated): onnx-int8 on arm64-emulated (cortex-a76): top-1 agreement with x86" in result.stdout
    assert "On ARM, emulated (answers, not speed)" in (tmp_path / "out" / "report.html").read_text()


def test_a_missing_environment_names_the_repair_command(tmp_path):
    env = {"EDGESHIP_CACHE": str(tmp_path / "empty-cache")}
    (tmp_path / "empty-cache" / "aarch64-half").mkdir(parents=True)
    result = run_cli("devices", "check", "arm64-emulated", env=env)
    assert result.code == 2
    (line,) = result.stderr.strip().splitlines()
    assert "the emulated aarch64 environment for torch " in line and "is not built" in line
    assert line.endswith("build it with: edgeship devices setup arm64-emulated")
    recipe = write_recipe(tmp_path, demo_recipe(devices=["local", "arm64-emulated"]))
    result = run_cli("run", str(recipe), out=tmp_path / "out", env=env)
    assert result.code == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.endswith("build it with: edgeship devices setup arm64-emulated (or run with --setup-devices)")
    assert not (tmp_path / "out").exists()  # checked before any work
    result = run_cli("devices", "setup", "local")
    assert result.code == 2 and "local device needs nothing built here" in result.stderr


def test_outputs_one_step_apart_are_counted_from_the_x86_grid():
    """The comparison itself, on made-up dequantized int8 outputs: a grid of 0.25, two values one
    step off, one two steps off (no environment needed)."""
    import doctest

    import numpy as np

    from edgeship.pipeline import emulated

    assert doctest.testmod(emulated).failed == 0
    x86 = np.array([[0.0, 0.25, 1.0, 2.0], [0.5, 0.75, 0.0, 1.5]], dtype=np.float32)
    arm = x86.copy()
    arm[0, 1] += 0.25
    arm[1, 0] -= 0.25
    arm[1, 3] += 0.5
    figures = emulated.compare(arm, x86, x86, int8=True, classes=True)
    assert figures["step"] == 0.25 and figures["differing_outputs"] == 3 and figures["one_step_outputs"] == 2
    assert figures["max_abs_error"] == 0.5 and figures["top1_agreement"] == 1.0
    assert emulated.compare(arm, x86, x86, int8=False, classes=False)["one_step_outputs"] is None


def test_an_arm_agreement_budget_reads_every_emulated_device():
    """min_emulated_agreement on made-up checks: the lowest agreement of the devices that ran the
    artifact; a crash there fails it; an artifact every emulated device skipped is skipped."""
    import json

    from edgeship.gate.budgets import Outcome, checks
    from edgeship.recipe import Budget
    from edgeship.report.schema import EmulatedCheck, Report

    report = Report.model_validate(json.loads((Path(__file__).parent / "data" / "report-digits.json").read_text()))
    ok = dict(status="ok", samples=8, outputs=80, differing_outputs=0, max_abs_error=0.0)
    report.artifact("onnx-int8").emulated = [EmulatedCheck(device="a", cpu="cortex-a76", top1_agreement=1.0, **ok),
                                             EmulatedCheck(device="b", cpu="cortex-a53", top1_agreement=0.95, **ok)]
    report.artifact("executorch-xnnpack").emulated = [
        EmulatedCheck(device="a", cpu="cortex-a76", status="crashed", error="runner killed by SIGSEGV")]
    report.artifact("torchscript-fbgemm").emulated = [
        EmulatedCheck(device="a", cpu="cortex-a76", status="skipped", error="device has no fbgemm int8 engine")]
    report.artifact("torchscript-qnnpack").emulated = [EmulatedCheck(device="a", cpu="cortex-a76", top1_agreement=1.0, **ok)]
    found = {c.target: c for c in checks([Budget(min_emulated_agreement=0.99)], report)}
    assert found["onnx-int8"].outcome is Outcome.FAILED and found["onnx-int8"].measured == 0.95
    assert found["executorch-xnnpack"].outcome is Outcome.FAILED and found["executorch-xnnpack"].measured is None
    assert found["torchscript-fbgemm"].outcome is Outcome.SKIPPED
    assert found["torchscript-qnnpack"].outcome is Outcome.PASSED


def _host_readelf(folder: Path) -> Path:
    """A binutils folder whose aarch64 readelf is the host's: GNU readelf reads any ELF, so the
    stubs' input (what the wheel's libraries need) is read here without the cross binutils,
    which the setup deletes once the stubs are built."""
    tools = folder / "usr" / "bin"
    tools.mkdir(parents=True)
    (tools / "aarch64-linux-gnu-readelf").symlink_to(shutil.which("readelf"))
    return folder


def test_stubs_come_from_what_the_wheel_needs_and_a_cpu_build_gets_none(emulated_cache, tmp_path):
    """The stub list is read from the installed wheel: the libraries torch's aarch64 libraries
    name as NEEDED that neither the wheels nor the sysroot provide are exactly the ones the setup
    built. A torch whose libraries need nothing missing (a CPU build; 2.13 publishes none for
    aarch64, so its own CPU library libc10.so stands in for one) gets no stubs and no stub folder."""
    from edgeship.devices.emulation import stubs

    if shutil.which("readelf") is None:
        pytest.fail("no readelf on this host: install binutils (.ci/run does)")
    cross = _host_readelf(tmp_path / "cross")
    site, sysroot = emulated_cache / "site", emulated_cache / "sysroot"
    _, available = stubs.provided(site, sysroot)
    needs = stubs.find_needs(stubs.Binutils(cross), stubs._shared_objects(site / "torch"), available)
    built = json.loads((emulated_cache / "environment.json").read_text())["stubs"]
    assert sorted(needs.by) == built and "libcudart.so.13" in built, (sorted(needs.by), built)
    assert needs.versions["libcudart.so.13"] and needs.symbols["libcudart.so.13"]  # what the stub must define

    cpu_build = tmp_path / "cpu-site" / "torch" / "lib"
    cpu_build.mkdir(parents=True)
    shutil.copy(site / "torch" / "lib" / "libc10.so", cpu_build)
    assert stubs.build_stubs(cross, tmp_path / "cpu-site", sysroot, tmp_path / "stubs") == []
    assert not (tmp_path / "stubs").exists()
