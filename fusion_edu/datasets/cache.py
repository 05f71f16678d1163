"""The on-disk cache every generated dataset (and trained model) goes through.

A cached item is a ``torch.save`` file plus a JSON sidecar holding its SHA-256 and the
description it was made from (generator version and configuration).  Reading checks both: a
file whose bytes do not match the checksum is *corrupt*, one whose description differs from the
one asked for is *stale*; either way it is rebuilt.  Writes are atomic (a temporary file in the
same folder, then ``os.replace``), so an interrupted run never leaves a half-written cache that
looks valid.  Reading or making an entry holds a lock on it (``made_once``, on POSIX systems): a second
process that asks for the same entry meanwhile (notebook 08 running notebook 05's experiment while the other
test worker is still in notebook 05, say) waits and then reads it, instead of making it a second time.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any

import torch

try:
    import fcntl  # POSIX (Linux, macOS, Colab)
except ImportError:  # Windows: no lock, so two processes may make the same entry twice
    fcntl = None

__all__ = ["SPLIT_STREAMS", "cache_dir", "cached", "cached_split", "made_once", "read_if_valid",
           "write_atomic"]

SPLIT_STREAMS = {"train": 0, "val": 1, "test": 2, "unseen": 3}  # each split draws from its own random stream

CACHE_ENV = "FUSION_EDU_DATA"  # set it to put the cache somewhere else
CONFIG_DIGEST_CHARS = 8  # of the sha256 of a non-default generator config, in its cache entry's name
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


def _locked(path: Path) -> IO[str] | None:
    """The lock file of the entry ``path`` (a hidden ``.NAME.lock`` beside it), open and exclusively
    ``flock``-ed; None where no lock can be taken."""
    if fcntl is None:
        return None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = (path.parent / f".{path.name}.lock").open("w")
    except OSError:  # a cache the user may read but not write
        return None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)  # waits while another process holds it
    except OSError:  # a file system without flock
        handle.close()
        return None
    return handle


@contextmanager
def made_once(path: Path) -> Iterator[None]:
    """Hold the lock on the cache entry ``path`` while it is read, or made and written: another process
    asking for the same entry meanwhile waits until the holder is done, then reads what it wrote.  The lock
    file is left in place (removing it could let two processes lock two files); closing it, or the holder's
    exit, even by a crash, releases the lock.  Not re-entrant: a process never asks for an entry inside its
    own ``made_once`` of it.  Where no lock can be taken (Windows, which has no ``fcntl``; a read-only
    cache; a file system without ``flock``) it goes on without one, as before there were locks."""
    handle = _locked(path)
    try:
        yield
    finally:
        if handle is not None:
            handle.close()


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
    with made_once(path):
        payload = read_if_valid(path, description)
        if payload is None:
            payload = build()
            write_atomic(path, payload, _normalise(description))
    return payload


def cached_split(generator: str, version: int, split: str, sizes: Mapping[str, int], seed: int,
                 count: int | None, config: Any, generate: Callable[[int, list[int], Any], Any],
                 count_key: str) -> Any:
    """The ``split`` of a generated dataset, from the cache: ``count`` items (``sizes[split]`` by
    default) generated by ``generate(count, [seed, stream], config)`` from the split's own random
    stream, so splits never share an item.  The cache entry is keyed by everything that shapes it, and a
    config other than the generator's default is saved under its own name (a digest of the config), so
    that a variant never overwrites the course's own data."""
    if split not in sizes:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(sizes)}")
    count = sizes[split] if count is None else count
    description = {"generator": generator, "version": version, "split": split, "seed": seed,
                   count_key: count, "config": asdict(config)}
    name = f"{generator}-{split}-seed{seed}-n{count}"
    if config != type(config)():
        settings = json.dumps(_normalise(asdict(config)), sort_keys=True).encode()
        name += f"-config{hashlib.sha256(settings).hexdigest()[:CONFIG_DIGEST_CHARS]}"
    return cached(name, description, lambda: generate(count, [seed, SPLIT_STREAMS[split]], config))
