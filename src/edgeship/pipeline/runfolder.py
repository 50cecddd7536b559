"""The run folder: one run at a time, never mix runs, never touch a file edgeship did not write.

The marker (.edgeship-run.json) lists every file the run wrote with its sha256. A file is
edgeship's when the marker lists it and its content still has that hash (or the marker lists it
without a hash: an older edgeship, or a run killed while writing it). Before any work, a run stops
with exit 2 when a path it writes holds a file that is not edgeship's, or the marker lists a file
that changed since: writing there, or --force deleting it, would destroy it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from edgeship.errors import UserError
from edgeship.fileio import sha256_file, write_atomic
from edgeship.targets import TARGETS

# No torch import here, not even through a constant: the CLI reads MARKER to place a crash log.
MARKER = ".edgeship-run.json"
LOCK = ".edgeship-lock"
CACHE_DIR = ".edgeship-cache"  # pipeline/cache.py's CACHE_DIR
SCRATCH_PREFIX = ".edgeship-tmp-"  # formats/artifact.py's SCRATCH_PREFIX
# The report files publish() writes at the folder's root; recorded last of a run's files.
REPORT_NAMES = ("report.json", "report.md", "junit.xml", "report.html", "report.samples.npz")
ARTIFACTS = "artifacts"
# A process's temporary folder in the run folder: SCRATCH_PREFIX, its pid, a dash.
_TMP_NAME = re.compile(re.escape(SCRATCH_PREFIX) + r"(\d+)-")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def is_output_path(name: str) -> bool:
    """A path (relative to the run folder) that a run writes: a report file, or an artifact
    named after a target (`artifacts/onnx-int8.onnx`, its external data `onnx-int8.onnx.data`)."""
    parts = Path(name).parts
    if len(parts) == 1:
        return parts[0] in REPORT_NAMES
    return len(parts) == 2 and parts[0] == ARTIFACTS and \
        any(parts[1].startswith(f"{target}.") for target in TARGETS)


class RunFolder:
    """Holds the folder's lock for as long as it lives (the whole run: RunContext keeps it), and
    the marker's list of the files this run wrote, so that --force removes exactly those.

    The same recipe run again into its folder resumes there (the stage cache in the folder makes
    that cheap); another recipe's run is replaced only with --force."""

    def __init__(self, root: Path, *, force: bool, recipe_sha256: str) -> None:
        self.root = root
        self.recipe_sha256 = recipe_sha256
        self.files: dict[str, str | None] = {}  # name → sha256; None: written, not yet hashed
        self.writing = True  # until the report is recorded: a killed run's files are edgeship's
        self._refuse_foreign_folder(force)
        made_lock = not (root / LOCK).exists()
        self._lock = self._take_lock()
        try:
            self._remove_leftovers()
            self.resumed = self._claim(force)
        except UserError:
            if made_lock:  # a refused run leaves the folder as it found it
                (root / LOCK).unlink(missing_ok=True)
            self.release()
            raise
        self._save()

    # -- claiming -------------------------------------------------------------------------
    def _refuse_foreign_folder(self, force: bool) -> None:
        """Before anything is created: a folder that holds no run and is not empty is the
        user's; without --force edgeship does not write there."""
        root = self.root
        if root.exists() and not root.is_dir():
            raise UserError(f"{root}: exists and is not a folder")
        if root.is_dir() and not force and not (root / MARKER).exists() and \
                any(p.name != LOCK for p in root.iterdir()):
            raise UserError(f"{root}: exists and is not empty; edgeship writes to a new or empty "
                            f"folder (--force writes beside the files there and replaces only "
                            f"files edgeship wrote)")
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"{root}: cannot create the run folder: {e.strerror}") from None
        if not os.access(root, os.W_OK):
            raise UserError(f"{root}: the run folder is not writable")

    def _take_lock(self):
        """flock on the lock file, held until this object (or the process) ends; the file says
        who holds it, for the message a second run gets."""
        try:  # O_NOFOLLOW: a lock "file" that links elsewhere must not get truncated
            fd = os.open(self.root / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as e:
            raise UserError(f"{self.root / LOCK}: cannot open the run folder's lock file: "
                            f"{e.strerror}") from None
        lock = os.fdopen(fd, "r+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            lock.close()
            raise UserError(f"{self.root}: another edgeship run is writing to this folder "
                            f"({holder}); wait for it to end, or choose another --out") from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()}: {' '.join(sys.argv)}\n")
        lock.flush()
        return lock

    def _claim(self, force: bool) -> bool:
        """True when this run resumes an earlier run of the same recipe."""
        marker = self.root / MARKER
        if not marker.exists() and not marker.is_symlink():
            self._refuse_unrecognised({}, writing=False)
            return False
        previous, files = self._previous(marker)
        writing = previous.get("writing", False)
        if previous.get("recipe_sha256") == self.recipe_sha256 and not force:
            self._refuse_unrecognised(files, writing)
            self.files = files
            return True
        if not force and not files and not any(self._occupied_output_paths()):
            return False  # another recipe's run that wrote nothing (refused as bad input): no loss
        if not force:
            raise UserError(f"{self.root}: holds a run of another recipe; use --force to replace "
                            f"it, or choose another --out")
        for name in self._refuse_unrecognised(files, writing):
            (self.root / name).unlink(missing_ok=True)
        return False

    def _refuse_unrecognised(self, files: dict[str, str | None], writing: bool) -> list[str]:
        """The files of the earlier run (listed, or at a path a run writes), all edgeship's; a
        UserError naming those that are not, before anything is written or deleted."""
        present = {name for name in files if (self.root / name).is_symlink() or (self.root / name).exists()}
        present |= {name for name in self._occupied_output_paths()}
        theirs = sorted(name for name in present if not self._recognised(name, files, writing))
        if theirs:
            raise UserError(f"{self.root}: holds files edgeship did not write or that changed "
                            f"since it wrote them: {', '.join(theirs)}; edgeship would overwrite "
                            f"or delete them. Move them away, or choose another --out")
        return sorted(present)

    def _occupied_output_paths(self) -> Iterator[str]:
        for name in REPORT_NAMES:
            if (self.root / name).is_symlink() or (self.root / name).exists():
                yield name
        artifacts = self.root / ARTIFACTS
        if artifacts.is_dir() and not artifacts.is_symlink():
            for p in artifacts.iterdir():
                if is_output_path(f"{ARTIFACTS}/{p.name}"):
                    yield f"{ARTIFACTS}/{p.name}"

    def _recognised(self, name: str, files: dict[str, str | None], writing: bool) -> bool:
        """edgeship's: a plain file (edgeship writes neither folders nor links), listed with its
        content's hash, or written by a run killed before it could hash it."""
        path = self.root / name
        if path.is_symlink() or not path.is_file():
            return False
        if writing and (name in files or is_output_path(name)):
            return True
        if name not in files:
            return False
        return files[name] is None or files[name] == sha256_file(path)

    def _previous(self, marker: Path) -> tuple[dict, dict[str, str | None]]:
        """The earlier run's marker and its files ({name: sha256 or None}), every file checked
        to lie inside the run folder: a folder from elsewhere (a CI cache, an archive) must not
        make --force delete other files."""
        try:
            previous = json.loads(marker.read_text())
            files = _listed_files(previous)
        except (OSError, ValueError, AttributeError) as e:
            why = "a folder" if marker.is_dir() else e
            raise UserError(f"{marker}: not an edgeship run marker ({why}); remove it, or choose "
                            f"another --out") from None
        inside = self.root.resolve()
        for name in files:
            parent = (self.root / name).parent.resolve()
            if Path(name).is_absolute() or ".." in Path(name).parts or not parent.is_relative_to(inside):
                raise UserError(f"{marker}: lists {name!r}, outside the run folder; edgeship deletes "
                                f"only files inside it. Remove that entry or the marker")
        return previous, files

    # -- leftovers of killed runs ---------------------------------------------------------
    def _remove_leftovers(self) -> None:
        """Temporary folders and files a killed run left. Called with the lock held: no other
        run uses this folder, so every temporary folder not of this process is stale (its pid
        may even be alive again, reused by another process)."""
        for p in self.root.iterdir():
            found = _TMP_NAME.match(p.name)
            if found and int(found.group(1)) != os.getpid() and p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
        for name in (*REPORT_NAMES, MARKER):  # write_atomic's temporary names
            for p in self.root.glob(f".{name}.*.tmp"):
                p.unlink(missing_ok=True)
        artifacts = self.root / ARTIFACTS
        if artifacts.is_dir() and not artifacts.is_symlink():
            for p in artifacts.iterdir():  # earlier edgeship versions exported into artifacts/.<target>.*
                if p.is_dir() and not p.is_symlink() and any(p.name.startswith(f".{t}.") for t in TARGETS):
                    shutil.rmtree(p, ignore_errors=True)
        cache = self.root / CACHE_DIR
        kinds = cache.iterdir() if cache.is_dir() and not cache.is_symlink() else []
        for kind in (k for k in kinds if k.is_dir() and not k.is_symlink()):
            for p in kind.glob(".*"):  # the stage cache's temporary entries (write_atomic, store_files)
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)

    # -- during the run -------------------------------------------------------------------
    @contextlib.contextmanager
    def temporary(self) -> Iterator[Path]:
        """A temporary folder inside the run folder, named after this process: removed on
        leaving, or by the next run into this folder when this process is killed."""
        with tempfile.TemporaryDirectory(dir=self.root, prefix=f"{SCRATCH_PREFIX}{os.getpid()}-") as tmp:
            yield Path(tmp)

    def _save(self) -> None:
        names = list(self.files)
        write_atomic(self.root / MARKER, json.dumps({
            "recipe_sha256": self.recipe_sha256, "files": names,
            "sha256": {n: h for n, h in self.files.items() if h is not None},
            "writing": self.writing}, indent=1))

    def record(self, *paths: Path) -> None:
        """Lists files this run wrote, with their hashes. The report files are written last of
        all (publish): once report.json is recorded, every file of the run is hashed."""
        for p in paths:
            self.files[str(p.relative_to(self.root))] = sha256_file(p)
        if any(p == self.root / REPORT_NAMES[0] for p in paths):
            self.writing = False
        self._save()

    def relative(self, path: Path) -> str:
        return str(path.relative_to(self.root))

    def release(self) -> None:
        """Ends the claim before this object goes (the process's end releases it too)."""
        self._lock.close()


def _listed_files(marker: object) -> dict[str, str | None]:
    """{name: sha256 or None} of a marker; markers of older versions list names only."""
    files = marker.get("files", [])  # AttributeError: not a JSON object
    hashes = marker.get("sha256", {})
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        raise ValueError("'files' is not a list of paths")
    if not isinstance(hashes, dict) or not all(isinstance(h, str) and _SHA256.fullmatch(h)
                                               for h in hashes.values()):
        raise ValueError("'sha256' is not a table of sha256 digests")
    if not isinstance(marker.get("writing", False), bool):
        raise ValueError("'writing' is not true or false")
    return {name: hashes.get(name) for name in files}


def note_rewritten(paths: list[Path]) -> None:
    """Hashes again files a run listed that edgeship rewrote outside a run (`edgeship gate
    --write` rewrites the reports of a run folder), so the next run still recognises them."""
    for folder in {p.parent for p in paths}:
        marker = folder / MARKER
        if not marker.is_file():
            continue
        try:
            previous = json.loads(marker.read_text())
            files = _listed_files(previous)
        except (ValueError, AttributeError):
            continue  # not a marker of ours: the next run says so
        hashes = {n: h for n, h in files.items() if h is not None}
        for p in paths:
            if p.parent == folder and p.name in files:
                hashes[p.name] = sha256_file(p)
        write_atomic(marker, json.dumps({**previous, "sha256": hashes}, indent=1))
