"""Atomic file writes, reads and cross-process locks; every file of a memory home is private.

Every file covip writes goes through here: files of a memory home are created 0600 and folders 0700 whatever
the umask (another OS user must not read anyone's dialogues or photos), and everything is written atomically
(temp file, fsync, rename). Training and export outputs (configs, results, datasets) use the same
:func:`atomic_write_bytes` with ``private=False``: the usual file mode (0666 minus the umask).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_replace", "file_lock", "fsync_dir", "tmp_path", "sweep_dead_tmp", "pid_alive",
           "private_dir", "create_private_file", "read_bytes", "path_inside", "PRIVATE_FILE_MODE", "PRIVATE_DIR_MODE"]

PRIVATE_FILE_MODE = 0o600
"""Mode of every file in a memory home (and of exported bundles): readable by its owner only."""
PRIVATE_DIR_MODE = 0o700
"""Mode of every folder in a memory home."""


def private_dir(path: Path) -> Path:
    """Create ``path`` and its missing parents as 0700 folders (exactly, whatever the umask); existing
    folders are left as they are (verify reports loose ones, repair tightens them)."""
    path = Path(path)
    if path.is_dir():
        return path
    if not path.parent.is_dir() and path.parent != path:
        private_dir(path.parent)
    try:
        path.mkdir(mode=PRIVATE_DIR_MODE)
    except FileExistsError:
        if not path.is_dir():
            raise
        return path
    os.chmod(path, PRIVATE_DIR_MODE)  # mkdir's mode is masked by the umask; chmod is not
    return path


def create_private_file(path: Path, *, exclusive: bool = True) -> int:
    """Create ``path`` as an empty 0600 file (exactly, whatever the umask) and return a write descriptor;
    ``exclusive`` fails with FileExistsError when it already exists."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags, PRIVATE_FILE_MODE)
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def path_inside(folder: Path, relative: object) -> Path | None:
    """``folder / relative`` resolved, when ``relative`` is a non-empty relative path that stays inside
    ``folder`` after links and ``..`` are resolved; None otherwise (an absolute path, ``../``, a link out, not
    a string). Records that name their files relative to themselves (an installed model, a synthetic world)
    check every name with this before reading or copying it; callers raise their own error."""
    if not isinstance(relative, str) or not relative or Path(relative).is_absolute():
        return None
    root = Path(folder).resolve()
    path = (root / relative).resolve()
    return path if path != root and path.is_relative_to(root) else None


def read_bytes(path: Path) -> bytes:
    """The whole content of one of the home's files (photos, index files): the one place they are read."""
    with open(path, "rb") as fh:
        return fh.read()


def fsync_dir(path: Path) -> None:
    """fsync a directory so a rename inside it survives power loss."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def tmp_path(tmp_dir: Path, suffix: str = ".part") -> Path:
    """A unique temp file, created empty and private (0600) so whatever writes it next (a zip or FAISS
    writer) cannot make it readable by others; its name records the writing process (so dead writers'
    files can be swept)."""
    private_dir(tmp_dir)
    while True:
        path = tmp_dir / f"{os.getpid()}-{secrets.token_hex(8)}{suffix}"
        try:
            os.close(create_private_file(path))
        except FileExistsError:
            continue
        return path


def _umask() -> int:
    current = os.umask(0o022)
    os.umask(current)
    return current


def atomic_replace(tmp: Path, dest: Path, *, durable: bool = True, private: bool = True) -> None:
    """Rename ``tmp`` over ``dest`` (readers see old or new, never half); ``durable`` fsyncs the file before
    and the directory after, so the rename also survives power loss, not only a process crash. The file
    becomes 0600 first, whoever created it (e.g. a zip writer that honours the umask); with
    ``private=False`` it gets the usual mode (0666 minus the umask) instead."""
    os.chmod(tmp, PRIVATE_FILE_MODE if private else 0o666 & ~_umask())
    if durable:
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    if private:
        private_dir(dest.parent)
    else:
        dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, dest)
    if durable:
        fsync_dir(dest.parent)


def atomic_write_bytes(dest: Path, data: bytes | memoryview, tmp_dir: Path | None = None, *, durable: bool = True,
                       private: bool = True) -> Path:
    """Write ``data`` to ``dest`` atomically: a temp file in ``tmp_dir`` (same filesystem; None = beside
    ``dest``), fsync, rename. ``private`` (the default, for a memory home): 0600 file, 0700 folders;
    ``private=False`` (training and export outputs): the usual modes."""
    dest = Path(dest)
    if tmp_dir is None:
        (private_dir if private else lambda p: p.mkdir(parents=True, exist_ok=True))(dest.parent)
        tmp = dest.parent / f".{dest.name}.{os.getpid()}-{secrets.token_hex(6)}.tmp"
        os.close(create_private_file(tmp))
    else:
        tmp = tmp_path(tmp_dir)
    try:
        with os.fdopen(create_private_file(tmp, exclusive=False), "wb") as fh:
            fh.write(data)
        atomic_replace(tmp, dest, durable=durable, private=private)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return dest


def atomic_write_text(dest: Path, text: str, tmp_dir: Path | None = None, *, durable: bool = True,
                      private: bool = True) -> Path:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    return atomic_write_bytes(dest, text.encode("utf-8"), tmp_dir, durable=durable, private=private)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (fcntl) held for the block; serializes index writers across processes."""
    private_dir(path.parent)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs (one we may not signal counts as running)."""
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
        if pid != os.getpid() and pid_alive(pid):
            continue
        if pid == os.getpid():
            continue  # our own in-flight writes
        with contextlib.suppress(FileNotFoundError):
            entry.unlink()
            removed += 1
    if removed:
        log.info("removed %d temp files left by crashed writers in %s", removed, tmp_dir)
    return removed
