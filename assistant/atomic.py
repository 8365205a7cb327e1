"""Crash-safe files: whole-or-nothing writes and advisory locks (POSIX).

A file written with `atomic_write` is either its old content or its new one, never a part: the data go to a
`.tmp-*` file in the same folder, are fsynced, and os.replace puts them in place (then the folder is fsynced so the
rename survives a power cut). A killed writer can leave `.tmp-*` files behind; readers ignore them.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

TMP_PREFIX = ".tmp-"  # temp files (and folders) of writers in progress or killed


def json_bytes(data: dict) -> bytes:
    """Strict JSON (NaN and infinities as null), indented."""
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in data.items()}
    return (json.dumps(clean, indent=2, allow_nan=False) + "\n").encode()


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` whole or not at all: temp file in the same folder, fsync, os.replace, fsync folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@contextlib.contextmanager
def file_lock(path: Path, shared: bool = False) -> Iterator[None]:
    """flock on `path` (created if missing): exclusive, or shared for readers; released when the block ends."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
