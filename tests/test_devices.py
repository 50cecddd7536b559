"""Device profiles (schema, shipped files), the adb transport without a device, and the pure
parts the ssh and adb transports share."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from edgeship.devices import remote
from edgeship.devices.adb import (Adb, adb_argv, choose_serial, parse_devices, pull_argv,
                                  push_argv, shell_argv)
from edgeship.devices.profile import AdbTransport, SshTransport, load_profile, shipped_profiles
from edgeship.devices.ssh import ssh_argv
from edgeship.devices.transports import RunnerCall, RunnerFailed
from edgeship.errors import UserError
from support import run_cli

VALID = """
name = "board"
arch = "aarch64"
int8_engines = ["qnnpack"]
runtimes = ["onnx"]
"""


def write_profile(folder: Path, text: str) -> Path:
    path = folder / "board.toml"
    path.write_text(VALID + text)
    return path


# --- profile schema ---------------------------------------------------------------------------

@pytest.mark.parametrize("extra, problem", [
    ('colour = "red"\n[transport]\nkind = "local"', "colour: unknown key"),
    ('[transport]\nkind = "ssh"\nhost = "h"\nhots = "typo"', "transport.hots: unknown key"),
    ('[transport]\nkind = "ssh"\nhost = "h"\nport = "twenty-two"',
     "transport.port: Input should be a valid integer"),
    ('[transport]\nkind = "ssh"', "transport.host: required key is missing"),
    ('[transport]\nkind = "adb"\nworkdir = "tmp"', "transport.workdir: must be an absolute path"),
    ('[transport]\nkind = "tcp"', "transport: unknown kind 'tcp'; known: local, ssh, adb"),
    ('[benchmark]\nthreads = "four"\n[transport]\nkind = "local"',
     "benchmark.threads: Input should be a valid integer"),
])
def test_bad_profile_names_the_key(tmp_path, extra, problem):
    path = write_profile(tmp_path, extra)
    with pytest.raises(UserError) as error:
        load_profile(str(path))
    assert error.value.exit_code == 2
    assert f"{path}: {problem}" in str(error.value)
    assert len(str(error.value).splitlines()) == 1


def test_ssh_profile_fills_defaults_and_expands_the_identity_file(tmp_path):
    path = write_profile(tmp_path, '[transport]\nkind = "ssh"\nhost = "pi5"\n'
                                   'identity_file = "~/.ssh/id_ed25519"')
    transport = load_profile(str(path)).transport
    assert isinstance(transport, SshTransport)
    assert (transport.port, transport.python, transport.workdir) == (22, "python3", "/tmp/edgeship")
    assert transport.identity_file == Path.home() / ".ssh" / "id_ed25519"


def test_unknown_profile_name_lists_the_shipped_ones():
    known = "android-arm64, arm64-emulated, local, rpi5, x86-server"
    with pytest.raises(UserError, match=f"unknown device 'pixel'; known: {known}"):
        load_profile("pixel")


@pytest.mark.parametrize("name", ["local", "x86-server", "rpi5", "android-arm64", "arm64-emulated"])
def test_shipped_profile_loads(name):
    assert name in shipped_profiles()
    profile = load_profile(name)
    assert profile.name == name and profile.description
    if profile.arch == "aarch64":  # fbgemm is x86-only
        assert "fbgemm" not in profile.int8_engines and "qnnpack" in profile.int8_engines
    if profile.big_cores and profile.cores:
        assert all(0 <= c < profile.cores for c in profile.big_cores)
    if profile.benchmark.cpus and profile.big_cores:
        assert set(profile.benchmark.cpus) <= set(profile.big_cores)


def test_shipped_profiles_carry_the_hardware_facts():
    rpi5, phone = load_profile("rpi5"), load_profile("android-arm64")
    assert (rpi5.arch, rpi5.cores, rpi5.memory_mb, rpi5.transport.kind) == ("aarch64", 4, 8589, "ssh")
    assert (phone.os, phone.cores, phone.big_cores, phone.transport.kind) == \
        ("android", 9, [4, 5, 6, 7, 8], "adb")
    assert load_profile("x86-server").transport.kind == "ssh"


# --- argument building --------------------------------------------------------------------------

def test_ssh_argv_puts_profile_options_first_and_reuses_one_connection(tmp_path):
    config = SshTransport(kind="ssh", host="pi5", port=2222, user="pi",
                          identity_file=tmp_path / "key", options=["StrictHostKeyChecking=no"])
    argv = ssh_argv(config, tmp_path, "exit 0")
    assert argv[:3] == ["ssh", "-o", "StrictHostKeyChecking=no"]  # ssh keeps the first value
    for option in ("BatchMode=yes", "ConnectTimeout=10", "ControlMaster=auto",
                   f"ControlPath={tmp_path}/%C", "ControlPersist=60"):
        assert argv[argv.index(option) - 1] == "-o"
    assert argv[argv.index("-p") + 1] == "2222" and argv[argv.index("-l") + 1] == "pi"
    assert argv[argv.index("-i") + 1] == str(tmp_path / "key")
    assert argv[-3:] == ["--", "pi5", "exit 0"]
    assert ssh_argv(config, tmp_path, None)[-4:] == ["-O", "exit", "--", "pi5"]


def test_adb_argv():
    assert adb_argv("adb", None, "devices") == ["adb", "devices"]
    assert push_argv("adb", "R58M", Path("/h/a.pt"), "/data/local/tmp/x/a.pt") == \
        ["adb", "-s", "R58M", "push", "/h/a.pt", "/data/local/tmp/x/a.pt"]
    assert pull_argv("/opt/adb", "R58M", "/d/o.npz", Path("/h/o.npz")) == \
        ["/opt/adb", "-s", "R58M", "pull", "/d/o.npz", "/h/o.npz"]
    assert shell_argv("adb", "emulator-5554", "echo 'a b'") == \
        ["adb", "-s", "emulator-5554", "shell", "echo 'a b'"]


ADB_DEVICES = """* daemon not running; starting now at tcp:5037
* daemon started successfully
List of devices attached
R58M123ABC\tdevice
emulator-5554\tunauthorized
192.168.1.7:5555\toffline

"""


def test_parse_devices_and_choose_serial():
    listed = parse_devices(ADB_DEVICES)
    assert listed == {"R58M123ABC": "device", "emulator-5554": "unauthorized",
                      "192.168.1.7:5555": "offline"}
    assert choose_serial(None, listed) == "R58M123ABC"  # the one device ready
    assert choose_serial("R58M123ABC", listed) == "R58M123ABC"
    with pytest.raises(RunnerFailed, match="'emulator-5554' is unauthorized: accept the USB"):
        choose_serial("emulator-5554", listed)
    with pytest.raises(RunnerFailed, match=r"'XYZ' is not attached \(adb devices: R58M123ABC \(device\)"):
        choose_serial("XYZ", listed)
    with pytest.raises(RunnerFailed, match="no Android device ready over adb"):
        choose_serial(None, parse_devices("List of devices attached\n\n"))
    with pytest.raises(RunnerFailed, match="several Android devices attached"):
        choose_serial(None, {"a": "device", "b": "device"})


def test_files_go_under_their_content_hash(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"graph")
    (tmp_path / "m.onnx.data").write_bytes(b"weights")
    (tmp_path / "in.npz").write_bytes(b"inputs")
    runner = tmp_path / "runner.py"
    runner.write_text("print('{}')")
    call = RunnerCall("bench", tmp_path / "m.onnx", (tmp_path / "m.onnx", tmp_path / "m.onnx.data"),
                      tmp_path / "in.npz")
    files = remote.remote_call(call, runner, "/w")
    runner_hash = remote.sha256_file(runner)[:16]
    assert files.runner == f"/w/{runner_hash}/runner.py"
    assert files.inputs == f"/w/{remote.sha256_file(tmp_path / 'in.npz')[:16]}/in.npz"
    # the model and its external data side by side, as the runtime looks for them
    model, data = (u.remote for u in files.uploads[:2])
    assert files.artifact == model and Path(model).parent == Path(data).parent
    (tmp_path / "m.onnx.data").write_bytes(b"other weights")
    assert remote.remote_call(call, runner, "/w").artifact != model


def test_runner_command_runs_in_a_posix_shell(tmp_path):
    """The command the devices run, run by this host's sh: pid and exit status recorded."""
    script = tmp_path / "runner.py"
    script.write_text("import sys; print('{\"argv\": \"%s\"}' % ' '.join(sys.argv[1:])); sys.exit(3)")
    files = remote.RemoteCall((), str(script), str(tmp_path / "a b.pt"), str(tmp_path / "in.npz"))
    call = RunnerCall("bench", Path("x"), (), Path("y"), ("--threads", "2"))
    run_dir = f"{tmp_path}/runs/1"
    proc = subprocess.run(["sh", "-c", remote.runner_command(shutil.which("python3"), files, call, run_dir)],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 3
    assert f"bench {tmp_path}/a b.pt --inputs {tmp_path}/in.npz --threads 2" in proc.stdout
    assert (Path(run_dir) / "pid").read_text().strip().isdigit()
    assert subprocess.run(["sh", "-c", remote.finish_command(run_dir)], capture_output=True,
                          text=True).stdout.strip() == "3"
    assert not Path(run_dir).exists()


# --- adb without a device ---------------------------------------------------------------------------

def test_missing_adb_is_a_clear_error_at_once(tmp_path):
    adb = Adb(AdbTransport(kind="adb", adb=str(tmp_path / "no-such-adb"), python="/data/local/tmp/py"))
    start = time.monotonic()
    with pytest.raises(RunnerFailed) as failed:
        adb.run(RunnerCall("bench", tmp_path / "m.pt", (), tmp_path / "in.npz"))
    assert time.monotonic() - start < 2
    assert failed.value.status == "unreachable" and failed.value.exit_code == 3
    assert "adb not found on PATH" in str(failed.value) and "platform-tools" in str(failed.value)


def test_adb_with_a_serial_that_is_not_attached_fails_clearly(tmp_path):
    """With adb installed: the serial is not in `adb devices`; without: adb is missing."""
    adb = Adb(AdbTransport(kind="adb", serial="EDGESHIP-NO-SUCH-DEVICE", python="/x/python3",
                           command_timeout_seconds=20))
    start = time.monotonic()
    with pytest.raises(RunnerFailed) as failed:
        adb.check()
    assert time.monotonic() - start < 25
    assert failed.value.status == "unreachable"
    expected = "'EDGESHIP-NO-SUCH-DEVICE' is not attached" if shutil.which("adb") else "adb not found"
    assert expected in str(failed.value)


def test_devices_check_cli_exit_3_on_an_unreachable_device(tmp_path):
    path = write_profile(tmp_path, f'[transport]\nkind = "adb"\nadb = "{tmp_path}/no-such-adb"\n')
    result = run_cli("devices", "check", str(path))
    assert result.code == 3
    assert result.stderr.strip().startswith("error: adb not found on PATH")
    assert len(result.stderr.strip().splitlines()) == 1
