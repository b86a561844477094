"""Atomic file writes and cross-process locks for the memory home."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = ["atomic_write_bytes", "atomic_replace", "file_lock", "fsync_dir", "tmp_path", "sweep_dead_tmp"]


def fsync_dir(path: Path) -> None:
    """fsync a directory so a rename inside it survives power loss."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def tmp_path(tmp_dir: Path, suffix: str = ".part") -> Path:
    """A unique temp file name that records the writing process (so dead writers' files can be swept)."""
    tmp_dir.mkdir(parents=True, exist_ok=True)
    return tmp_dir / f"{os.getpid()}-{secrets.token_hex(8)}{suffix}"


def atomic_replace(tmp: Path, dest: Path, *, durable: bool = True) -> None:
    """Rename ``tmp`` over ``dest`` (readers see old or new, never half); ``durable`` fsyncs the file before
    and the directory after, so the rename also survives power loss, not only a process crash."""
    if durable:
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, dest)
    if durable:
        fsync_dir(dest.parent)


def atomic_write_bytes(dest: Path, data: bytes, tmp_dir: Path, *, durable: bool = True) -> None:
    """Write ``data`` to ``dest`` atomically (temp file in ``tmp_dir`` on the same filesystem, rename)."""
    tmp = tmp_path(tmp_dir)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        atomic_replace(tmp, dest, durable=durable)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (fcntl) held for the block; serializes index writers across processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_dead_tmp(tmp_dir: Path) -> int:
    """Remove temp files whose writing process is gone (left by a crash); returns how many."""
    if not tmp_dir.is_dir():
        return 0
    removed = 0
    for entry in tmp_dir.iterdir():
        pid_text = entry.name.split("-", 1)[0]
        if not pid_text.isdigit():
            continue
        pid = int(pid_text)
        if pid != os.getpid() and _pid_alive(pid):
            continue
        if pid == os.getpid():
            continue  # our own in-flight writes
        with contextlib.suppress(FileNotFoundError):
            entry.unlink()
            removed += 1
    if removed:
        log.info("removed %d temp files left by crashed writers in %s", removed, tmp_dir)
    return removed
