"""The run folder: refuse to mix runs, never delete a file edgeship did not write."""

from __future__ import annotations

import json
import os
from pathlib import Path

from edgeship.errors import UserError
from edgeship.fileio import write_atomic

MARKER = ".edgeship-run.json"


class RunFolder:
    """Keeps a list of the files this run wrote, so that --force removes exactly those.

    The same recipe run again into its folder resumes there (the stage cache in the folder makes
    that cheap); another recipe's run is replaced only with --force."""

    def __init__(self, root: Path, *, force: bool, recipe_sha256: str) -> None:
        self.root = root
        self.recipe_sha256 = recipe_sha256
        self.files: list[str] = []
        self.resumed = self._claim(force)
        self._save()

    def _claim(self, force: bool) -> bool:
        """True when this run resumes an earlier run of the same recipe."""
        root = self.root
        if root.exists() and not root.is_dir():
            raise UserError(f"{root}: exists and is not a folder")
        marker = root / MARKER
        resumed = False
        if marker.exists():
            previous = self._previous(marker)
            if previous.get("recipe_sha256") == self.recipe_sha256 and not force:
                self.files, resumed = previous.get("files", []), True
            elif not force:
                raise UserError(f"{root}: holds a run of another recipe; use --force to replace "
                                f"it, or choose another --out")
            else:
                for name in previous.get("files", []):
                    (root / name).unlink(missing_ok=True)
        elif root.exists() and any(root.iterdir()) and not force:
            raise UserError(f"{root}: exists and is not empty; edgeship writes to a new or empty "
                            f"folder (--force writes beside the files there and deletes none)")
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"{root}: cannot create the run folder: {e.strerror}") from None
        if not os.access(root, os.W_OK):
            raise UserError(f"{root}: the run folder is not writable")
        return resumed

    def _previous(self, marker: Path) -> dict:
        """The earlier run's marker, every file it lists checked to lie inside the run folder: a
        folder from elsewhere (a CI cache, an archive) must not make --force delete other files."""
        try:
            previous = json.loads(marker.read_text())
            files = previous.get("files", [])
            if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
                raise ValueError("'files' is not a list of paths")
        except (ValueError, AttributeError) as e:
            raise UserError(f"{marker}: not an edgeship run marker ({e}); remove it, or choose "
                            f"another --out") from None
        inside = self.root.resolve()
        for name in files:
            parent = (self.root / name).parent.resolve()
            if Path(name).is_absolute() or ".." in Path(name).parts or not parent.is_relative_to(inside):
                raise UserError(f"{marker}: lists {name!r}, outside the run folder; edgeship deletes "
                                f"only files inside it. Remove that entry or the marker")
        return previous

    def _save(self) -> None:
        write_atomic(self.root / MARKER, json.dumps({"recipe_sha256": self.recipe_sha256,
                                                     "files": self.files}, indent=1))

    def record(self, *paths: Path) -> None:
        for p in paths:
            name = str(p.relative_to(self.root))
            if name not in self.files:
                self.files.append(name)
        self._save()

    def relative(self, path: Path) -> str:
        return str(path.relative_to(self.root))
