"""--force deletes only files inside the run folder that edgeship's marker lists: a run folder
received from elsewhere (a CI cache, an archive) whose marker lists other paths is bad input,
and nothing is deleted."""

from __future__ import annotations

import json

import pytest

from edgeship.errors import UserError
from edgeship.pipeline.runfolder import MARKER, RunFolder

from support import demo_recipe, run_cli, write_recipe


def _folder(tmp_path, files):
    run = tmp_path / "run"
    run.mkdir()
    (run / MARKER).write_text(json.dumps({"recipe_sha256": "another", "files": files}))
    return run


@pytest.mark.parametrize("entry", ["../victim.txt", "{victim}", "link/victim.txt", "a/../../victim.txt"])
def test_a_marker_listing_a_path_outside_the_folder_deletes_nothing(tmp_path, entry):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    victims = [tmp_path / "victim.txt", outside / "victim.txt"]
    for v in victims:
        v.write_text("keep me")
    run = _folder(tmp_path, ["report.md", entry.format(victim=tmp_path / "victim.txt")])
    (run / "link").symlink_to(outside)
    (run / "report.md").write_text("edgeship's")
    with pytest.raises(UserError, match="outside the run folder"):
        RunFolder(run, force=True, recipe_sha256="new")
    assert all(v.read_text() == "keep me" for v in victims)
    assert (run / "report.md").exists()  # refused before deleting anything


def test_force_deletes_the_listed_files_inside_and_keeps_the_users(tmp_path):
    run = _folder(tmp_path, ["report.md", "artifacts/a.onnx"])
    (run / "artifacts").mkdir()
    for name in ("report.md", "artifacts/a.onnx", "notes.txt"):
        (run / name).write_text("x")
    RunFolder(run, force=True, recipe_sha256="new")
    assert not (run / "report.md").exists() and not (run / "artifacts/a.onnx").exists()
    assert (run / "notes.txt").read_text() == "x"


def test_another_recipes_run_that_wrote_nothing_does_not_block_the_folder(tmp_path):
    """A recipe refused as bad input after the folder was claimed (a float_layers typo) leaves a
    marker listing no files: the corrected recipe runs there without --force."""
    run = _folder(tmp_path, [])
    (run / "artifacts").mkdir()
    assert RunFolder(run, force=False, recipe_sha256="new").resumed is False
    assert json.loads((run / MARKER).read_text())["recipe_sha256"] == "new"


def test_another_recipes_run_with_files_is_still_refused_without_force(tmp_path):
    run = _folder(tmp_path, [])
    (run / "report.md").write_text("a report the marker lost")
    with pytest.raises(UserError, match="holds a run of another recipe"):
        RunFolder(run, force=False, recipe_sha256="new")
    assert (run / "report.md").exists()


@pytest.mark.parametrize("marker", ["{not json", '{"files": "report.md"}', "[1, 2]"])
def test_a_marker_that_is_not_edgeships_is_bad_input(tmp_path, marker):
    run = tmp_path / "run"
    run.mkdir()
    (run / MARKER).write_text(marker)
    with pytest.raises(UserError, match="not an edgeship run marker"):
        RunFolder(run, force=True, recipe_sha256="new")


def test_the_command_line_exits_2_naming_the_entry(tmp_path):
    (tmp_path / "victim.txt").write_text("keep me")
    run = _folder(tmp_path, ["../victim.txt"])
    result = run_cli("run", str(write_recipe(tmp_path, demo_recipe())), "--force", out=run)
    assert result.code == 2, result.stderr
    assert "'../victim.txt', outside the run folder" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert (tmp_path / "victim.txt").read_text() == "keep me"
