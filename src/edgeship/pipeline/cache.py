"""Stage cache: what a stage made, stored under a key that hashes everything it was made from.

Keys chain: the float model's key hashes the recipe's model and data sections, the seed, the
library versions, the untrained model's weights and the data itself; every later key hashes its
upstream key and its own settings. So an unchanged recipe finds its work again, and a change
anywhere upstream misses. Entries are written atomically (a temp name, then a rename): a run
killed at any moment leaves whole entries or none, and a resumed run picks up only whole ones.
An entry that cannot be read all the same (a disk error, a file edited or truncated by hand) is a
miss, said in one note on stderr; the stage does its work again and overwrites the entry.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgeship.fileio import write_atomic

CACHE_DIR = ".edgeship-cache"


def digest(*parts: object) -> str:
    """sha256 of the parts as canonical JSON (pydantic models and paths by their JSON/str)."""
    def default(o: object) -> object:
        if hasattr(o, "model_dump"):
            return o.model_dump(mode="json")
        return str(o)

    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=default).encode()).hexdigest()


def tensors_digest(tensors: dict[str, torch.Tensor] | list[np.ndarray]) -> str:
    h = hashlib.sha256()
    items = tensors.items() if isinstance(tensors, dict) else enumerate(tensors)
    for name, t in items:
        a = t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
        h.update(f"{name}:{a.dtype}:{a.shape}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _note_on_stderr(message: str) -> None:
    sys.stderr.write(f"note: {message}\n")


class StageCache:
    def __init__(self, root: Path, *, read: bool,
                 say: Callable[[str], None] = _note_on_stderr) -> None:
        self.root = root / CACHE_DIR
        self.read = read  # False with --no-cache: work is redone, and stored again
        self.say = say  # where a corrupt entry is told about

    def _unreadable(self, path: Path, e: Exception) -> None:
        first = next(iter(str(e).strip().splitlines()), "")
        first = first if len(first) <= 100 else first[:100] + "…"  # torch's run on for a page
        self.say(f"stage cache entry {path} cannot be read ({type(e).__name__}: {first}); "
                 f"doing that work again and replacing the entry")

    def _path(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    # -- model states ---------------------------------------------------------------------
    def load_state(self, kind: str, key: str) -> dict | None:
        """A stored state_dict, or None."""
        path = self._path(kind, key).with_suffix(".pt")
        if not (self.read and path.is_file()):
            return None
        try:
            with warnings.catch_warnings():  # a corrupt entry: our one note says it, not torch's
                warnings.simplefilter("ignore")
                state = torch.load(path, weights_only=True)
            if not isinstance(state, dict):
                raise TypeError(f"holds a {type(state).__name__}, not a state_dict")
            return state
        except Exception as e:  # noqa: BLE001 - pickle, zip and torch errors alike: a miss
            self._unreadable(path, e)
            return None

    def has_state(self, kind: str, key: str) -> bool:
        """Whether a state is stored (without reading it: it may still be unreadable)."""
        return self.read and self._path(kind, key).with_suffix(".pt").is_file()

    def store_state(self, kind: str, key: str, module: nn.Module) -> None:
        buffer = io.BytesIO()
        torch.save(module.state_dict(), buffer)
        write_atomic(self._path(kind, key).with_suffix(".pt"), buffer.getvalue())

    # -- JSON results ---------------------------------------------------------------------
    def load_json(self, kind: str, key: str) -> dict | None:
        path = self._path(kind, key).with_suffix(".json")
        if not (self.read and path.is_file()):
            return None
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(value, dict):
                raise TypeError(f"holds a {type(value).__name__}, not an object")
            return value
        except (OSError, ValueError, TypeError) as e:
            self._unreadable(path, e)
            return None

    def store_json(self, kind: str, key: str, value: dict) -> None:
        write_atomic(self._path(kind, key).with_suffix(".json"), json.dumps(value))

    # -- files (artifacts) ----------------------------------------------------------------
    def load_files(self, kind: str, key: str) -> list[Path] | None:
        folder = self._path(kind, key)
        return sorted(folder.iterdir()) if self.read and folder.is_dir() else None

    def store_files(self, kind: str, key: str, files: list[Path]) -> None:
        """A folder of copies, renamed into place whole."""
        folder = self._path(kind, key)
        folder.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{key[:12]}."))
        for f in files:
            shutil.copy2(f, scratch / f.name)
        # A folder already there is stored again only when its JSON entry was missing or unreadable:
        # it is suspect, so the new copies replace it (renamed aside first: a rename does not
        # replace a folder that has files in it).
        stale = folder.with_name(f".{key[:12]}.stale") if folder.exists() else None
        if stale is not None:
            shutil.rmtree(stale, ignore_errors=True)
            os.replace(folder, stale)
        os.replace(scratch, folder)
        if stale is not None:
            shutil.rmtree(stale, ignore_errors=True)
