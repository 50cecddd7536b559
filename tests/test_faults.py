"""What a killed, concurrent or careless run leaves, with real processes: --force touches only
files edgeship wrote and still recognises, one run at a time per folder, the runner dies with its
parent, and temporary folders of a killed run are removed by the next one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from torch import nn

from edgeship.errors import UserError
from edgeship.formats import ExportedArtifact, export_atomically
from edgeship.formats import artifact as formats_artifact
from edgeship.pipeline import cache, runfolder
from edgeship.pipeline.runfolder import LOCK, MARKER, RunFolder, note_rewritten
from edgeship.targets import get_target

from support import demo_recipe, run_cli, write_recipe


def _run_of(run: Path, files: dict[str, str], recipe: str = "one") -> None:
    """A finished run of `recipe` in `run` that wrote `files` ({name: content})."""
    folder = RunFolder(run, force=False, recipe_sha256=recipe)
    for name, content in files.items():
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text(content)
    folder.record(*(run / name for name in files))
    folder.record(run / "report.json") if "report.json" in files else None
    folder.release()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _gone(pid: int, within_seconds: float = 20.0) -> bool:
    """True once `pid` has ended (a zombie nobody reaps yet counts as ended)."""
    deadline = time.monotonic() + within_seconds
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False


# -- --force and resume: only files edgeship wrote and still recognises ------------------------
def test_force_refuses_a_users_file_at_a_path_it_writes(tmp_path):
    run = tmp_path / "run"
    (run / "artifacts").mkdir(parents=True)
    (run / "report.md").write_text("my notes")
    (run / "artifacts" / "onnx-int8.onnx").write_text("my model")
    result = run_cli("run", str(write_recipe(tmp_path, demo_recipe())), "--force", out=run)
    assert result.code == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "artifacts/onnx-int8.onnx, report.md" in result.stderr
    assert (run / "report.md").read_text() == "my notes"
    assert (run / "artifacts" / "onnx-int8.onnx").read_text() == "my model"
    assert sorted(p.name for p in run.iterdir()) == ["artifacts", "report.md"]  # nothing added


def test_force_writes_beside_a_users_other_files(tmp_path):
    run = tmp_path / "run"
    (run / "artifacts").mkdir(parents=True)
    (run / "notes.txt").write_text("mine")
    (run / "artifacts" / "mine.onnx").write_text("mine")
    RunFolder(run, force=True, recipe_sha256="one").release()
    assert (run / "notes.txt").read_text() == (run / "artifacts" / "mine.onnx").read_text() == "mine"


def test_force_deletes_what_it_wrote_and_keeps_nothing_changed(tmp_path):
    run = tmp_path / "run"
    _run_of(run, {"report.json": "{}", "report.md": "edgeship's", "artifacts/onnx-int8.onnx": "model"})
    (run / "report.md").write_text("edited by the user")
    with pytest.raises(UserError, match=r"changed since it wrote them: report\.md; "):
        RunFolder(run, force=True, recipe_sha256="two")
    assert (run / "report.md").read_text() == "edited by the user"
    assert (run / "artifacts" / "onnx-int8.onnx").exists()  # refused before deleting anything
    (run / "report.md").unlink()
    RunFolder(run, force=True, recipe_sha256="two").release()
    assert not (run / "artifacts" / "onnx-int8.onnx").exists() and not (run / "report.json").exists()
    assert json.loads((run / MARKER).read_text())["files"] == []


def test_a_resumed_run_does_not_overwrite_a_changed_file(tmp_path):
    run = tmp_path / "run"
    _run_of(run, {"report.json": "{}", "artifacts/onnx-int8.onnx": "model"})
    (run / "artifacts" / "onnx-int8.onnx").write_text("replaced by the user")
    with pytest.raises(UserError, match=r"artifacts/onnx-int8\.onnx"):
        RunFolder(run, force=False, recipe_sha256="one")
    (run / "artifacts" / "onnx-int8.onnx").write_text("model")
    assert RunFolder(run, force=False, recipe_sha256="one").resumed


def test_a_run_killed_while_writing_resumes_over_its_own_files(tmp_path):
    """Killed after a file was renamed into place, before the marker hashed it: the marker says
    the run was writing, so the next run knows the file is its own; a finished run's is not."""
    run = tmp_path / "run"
    folder = RunFolder(run, force=False, recipe_sha256="one")
    (run / "artifacts").mkdir()
    (run / "artifacts" / "onnx-int8.onnx").write_text("written, not recorded")
    folder.release()
    assert RunFolder(run, force=False, recipe_sha256="one").resumed
    _run_of(tmp_path / "finished", {"report.json": "{}"})
    (tmp_path / "finished" / "artifacts").mkdir()
    (tmp_path / "finished" / "artifacts" / "onnx-int8.onnx").write_text("the user's")
    with pytest.raises(UserError, match="did not write"):
        RunFolder(tmp_path / "finished", force=True, recipe_sha256="two")


def test_a_marker_of_an_older_version_without_hashes_loads(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "report.md").write_text("x")
    (run / MARKER).write_text(json.dumps({"recipe_sha256": "one", "files": ["report.md"]}))
    assert RunFolder(run, force=False, recipe_sha256="one").resumed


@pytest.mark.parametrize("listed", ["folder", "marker"])
def test_a_marker_that_is_or_lists_a_folder_is_bad_input(tmp_path, listed):
    run = tmp_path / "run"
    (run / "artifacts").mkdir(parents=True)
    if listed == "marker":
        (run / MARKER).mkdir()
        expected = "not an edgeship run marker (a folder)"
    else:
        (run / MARKER).write_text(json.dumps({"recipe_sha256": "one", "files": ["artifacts"]}))
        expected = "did not write or that changed since it wrote them: artifacts;"
    with pytest.raises(UserError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        RunFolder(run, force=True, recipe_sha256="two")
    assert (run / "artifacts").is_dir()


def test_gate_write_rehashes_the_reports_it_rewrites(tmp_path):
    run = tmp_path / "run"
    _run_of(run, {"report.json": "{}", "report.md": "first"})
    (run / "report.md").write_text("rewritten by edgeship gate --write")
    note_rewritten([run / "report.md"])
    assert RunFolder(run, force=False, recipe_sha256="one").resumed


# -- one run at a time -------------------------------------------------------------------------
def test_a_second_run_into_a_locked_folder_names_the_first(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from edgeship.pipeline.runfolder import RunFolder
        folder = RunFolder(Path({str(run)!r}), force=False, recipe_sha256="one")
        print("claimed", flush=True)
        time.sleep(600)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "claimed"
        with pytest.raises(UserError, match=rf"another edgeship run is writing to this folder "
                                            rf"\(pid {holder.pid}: -c\)"):
            RunFolder(run, force=False, recipe_sha256="one")
    finally:
        holder.kill()
        holder.wait()
    assert RunFolder(run, force=False, recipe_sha256="one").resumed  # the kill released the lock


def test_the_lock_file_is_not_followed_out_of_the_folder(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (tmp_path / "victim.txt").write_text("keep me")
    (run / LOCK).symlink_to(tmp_path / "victim.txt")
    with pytest.raises(UserError, match="cannot open the run folder's lock file"):
        RunFolder(run, force=True, recipe_sha256="one")
    assert (tmp_path / "victim.txt").read_text() == "keep me"


# -- processes and temporary folders a killed run leaves ---------------------------------------
@pytest.mark.parametrize("in_thread", [False, True])
def test_the_runner_dies_with_its_parent(tmp_path, in_thread):
    """A parent that starts a long child through run_process (as the benchmark's device threads
    do) is SIGKILLed: the child, in its own session, must not run on alone."""
    pid_file = tmp_path / "child.pid"
    child = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(600)"
    call = f"run_process([sys.executable, '-c', {child!r}], 600)"
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, threading
        from edgeship.devices.runner_call import run_process
        if {in_thread}:
            thread = threading.Thread(target=lambda: {call})
            thread.start()
            thread.join()
        else:
            {call}
    """)])
    deadline = time.monotonic() + 60
    while not pid_file.exists() or not pid_file.read_text():
        assert parent.poll() is None and time.monotonic() < deadline, "the child did not start"
        time.sleep(0.05)
    child_pid = int(pid_file.read_text())
    assert psutil.Process(child_pid).ppid() == parent.pid
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    assert _gone(child_pid), "the runner outlived its killed parent"


def test_temporary_folders_of_a_killed_run_are_removed_by_the_next(tmp_path):
    run = tmp_path / "run"
    RunFolder(run, force=False, recipe_sha256="one").release()
    dead = run / f".edgeship-tmp-{_dead_pid()}-abc"
    (dead / "sub").mkdir(parents=True)
    (dead / "sub" / "bench-inputs.npz").write_bytes(b"x")
    legacy = run / "artifacts" / ".onnx-int8.k2j3h4"  # export's scratch folder before this version
    legacy.mkdir(parents=True)
    entry = run / ".edgeship-cache" / "export-files" / ".0123456789ab.xyz"  # store_files' scratch
    entry.mkdir(parents=True)
    users = run / ".edgeship-tmp-notes"  # not a pid's: not ours to remove
    users.mkdir()
    folder = RunFolder(run, force=False, recipe_sha256="one")
    assert not dead.exists() and not legacy.exists() and not entry.exists()
    assert users.is_dir()
    with folder.temporary() as tmp:
        assert tmp.parent == run and tmp.name.startswith(f".edgeship-tmp-{os.getpid()}-")
    assert not tmp.exists()


def test_export_scratch_lies_beside_the_artifacts_named_after_the_process(tmp_path):
    dest = tmp_path / "run" / "artifacts"
    seen = []

    def exporter(module, examples, target, workdir: Path) -> ExportedArtifact:
        seen.append(workdir)
        (workdir / "onnx-int8.onnx").write_bytes(b"model")
        return ExportedArtifact(workdir / "onnx-int8.onnx", (workdir / "onnx-int8.onnx",))

    made = export_atomically(exporter, nn.Identity(), (), get_target("onnx-int8"), dest)
    assert seen[0].parent == dest.parent
    assert seen[0].name.startswith(f".edgeship-tmp-{os.getpid()}-onnx-int8-")
    assert not seen[0].exists() and made.path.read_bytes() == b"model"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["artifacts"]


def test_the_run_folders_names_are_those_its_writers_use():
    assert runfolder.SCRATCH_PREFIX == formats_artifact.SCRATCH_PREFIX
    assert runfolder.CACHE_DIR == cache.CACHE_DIR


def test_the_run_folder_module_does_not_load_torch():
    """The CLI imports it to place a crash log, which must not depend on torch loading."""
    probe = "import sys, edgeship.pipeline.runfolder; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"
