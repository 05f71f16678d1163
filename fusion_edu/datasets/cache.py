"""The on-disk cache every generated dataset (and trained model) goes through.

A cached item is a ``torch.save`` file plus a JSON sidecar holding its SHA-256 and the
description it was made from (generator version and configuration).  Reading checks both: a
file whose bytes do not match the checksum is *corrupt*, one whose description differs from the
one asked for is *stale*; either way it is rebuilt.  Writes are atomic (a temporary file in the
same folder, then ``os.replace``), so an interrupted run never leaves a half-written cache that
looks valid.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__all__ = ["cache_dir", "cached", "read_if_valid", "write_atomic"]

CACHE_ENV = "FUSION_EDU_DATA"  # set it to put the cache somewhere else
_REPO_DATA = Path(__file__).resolve().parents[2] / "data"
_USER_CACHE = Path.home() / ".cache" / "fusion_edu"
_HASH_CHUNK = 1 << 20


def cache_dir() -> Path:
    """``$FUSION_EDU_DATA`` if set; the repo's ``data/`` in a checkout; else ``~/.cache/fusion_edu``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    if (_REPO_DATA / "README.md").exists():
        return _REPO_DATA
    return _USER_CACHE


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _replace_atomically(path: Path, write: Callable[[Path], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: Path, payload: Any, description: dict) -> None:
    """Save ``payload`` to ``path`` and its checksum + description to ``path.json``, atomically."""
    _replace_atomically(path, lambda tmp: torch.save(payload, tmp))
    sidecar = {"sha256": _sha256(path), "description": description}
    _replace_atomically(path.with_suffix(".json"),
                        lambda tmp: tmp.write_text(json.dumps(sidecar, indent=1, sort_keys=True)))


def read_if_valid(path: Path, description: dict) -> Any | None:
    """The cached payload, or None when it is missing, corrupt (checksum) or stale (description).

    A corrupt or stale entry is reported with a warning that names what was expected and what
    was found, so a reader knows why the data is being generated again.
    """
    sidecar_path = path.with_suffix(".json")
    if not (path.exists() and sidecar_path.exists()):
        return None
    try:
        sidecar = json.loads(sidecar_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        warnings.warn(f"cache {sidecar_path} is unreadable ({error}); not using it", stacklevel=3)
        return None
    expected = _normalise(description)
    if sidecar.get("description") != expected:
        warnings.warn(f"cache {path} is stale: expected {expected}, found "
                      f"{sidecar.get('description')}; not using it", stacklevel=3)
        return None
    found = _sha256(path)
    if sidecar.get("sha256") != found:
        warnings.warn(f"cache {path} is corrupt: expected sha256 {sidecar.get('sha256')}, "
                      f"found {found}; not using it", stacklevel=3)
        return None
    return torch.load(path, weights_only=True, map_location="cpu")


def _normalise(description: dict) -> dict:
    """The description as it reads back from JSON (tuples become lists), for comparison."""
    return json.loads(json.dumps(description, sort_keys=True))


def cached(name: str, description: dict, build: Callable[[], Any]) -> Any:
    """Return the valid cache entry ``name`` for ``description``, building and saving it if needed."""
    path = cache_dir() / f"{name}.pt"
    payload = read_if_valid(path, description)
    if payload is None:
        payload = build()
        write_atomic(path, payload, _normalise(description))
    return payload
