"""The home folder itself: its private layout, what a lost database leaves behind, quarantine, file modes.

A home holds ``memory.db`` (the truth), ``photos/`` (stored copies), ``index/`` (derived FAISS files),
``tmp/``, ``locks/``, ``config.json`` and, after a repair or a fresh start, ``quarantine/<time>/`` with the
files covip could not prove to be garbage. covip never deletes those: the person decides.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path

from covip.sdk.config import SETTINGS_FILE
from covip.sdk.errors import DatabaseMissingError
from covip.sdk.files import PRIVATE_DIR_MODE, PRIVATE_FILE_MODE, fsync_dir, private_dir

log = logging.getLogger(__name__)

__all__ = ["DB_FILE", "DB_SIDE_FILES", "SUBDIRS", "QUARANTINE", "make_home", "leftovers", "refuse_over_leftovers",
           "new_quarantine", "move_to_quarantine", "quarantine_summary", "loose_modes", "tighten_modes"]

DB_FILE = "memory.db"
DB_SIDE_FILES = ("memory.db-wal", "memory.db-shm", "memory.db-journal")
SUBDIRS = ("photos", "index", "tmp", "locks")
QUARANTINE = "quarantine"


def make_home(home: Path) -> None:
    """Create the home and its folders, private (0700) whatever the umask."""
    private_dir(home)
    for sub in SUBDIRS:
        private_dir(home / sub)


def _files(folder: Path) -> Iterable[Path]:
    if not folder.is_dir():
        return []
    return (p for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def leftovers(home: Path) -> dict[str, int]:
    """What the home holds of a memory besides its database: photo files, index files, a database log."""
    found = {"photo files": sum(1 for _ in _files(home / "photos")),
             "index files": sum(1 for _ in _files(home / "index"))}
    wal = home / DB_SIDE_FILES[0]
    found["database log (memory.db-wal)"] = int(wal.is_file() and wal.stat().st_size > 0)
    return {k: v for k, v in found.items() if v}


def recovery_steps(home: Path, lead: str = "Recover in one of these ways") -> str:
    """What to do when memory.db is lost or damaged (shared by the missing- and corrupt-database errors)."""
    return (f"{lead}: (1) restore memory.db from a backup into {home} (stop covip "
            f"first); (2) start a new memory and load your last export: `covip --home {home} verify "
            f"--start-fresh`, then `covip --home {home} import-memory BUNDLE.zip`; (3) start a new, empty "
            f"memory: `covip --home {home} verify --start-fresh` (Memory.start_fresh() in Python). "
            f"--start-fresh deletes nothing: it moves the old files to {home / QUARANTINE}/<time>/")


def refuse_over_leftovers(home: Path, why: str) -> None:
    """Raise DatabaseMissingError when the home still holds files of a memory whose database is gone:
    a new, empty database would make every photo look like garbage to ``repair``."""
    found = leftovers(home)
    if not found:
        return
    what = ", ".join(f"{n} {k}" for k, n in found.items())
    raise DatabaseMissingError(
        f"the memory database {home / DB_FILE} is {why}, but the home still holds {what} of a memory; "
        f"covip will not start a new database over them (your photos are still there). "
        + recovery_steps(home))


def new_quarantine(home: Path) -> Path:
    """A new, private ``quarantine/<UTC time>/`` folder in the home."""
    base = private_dir(home / QUARANTINE)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    for n in range(1000):
        folder = base / (stamp if n == 0 else f"{stamp}-{n}")
        try:
            folder.mkdir(mode=PRIVATE_DIR_MODE)
        except FileExistsError:
            continue
        os.chmod(folder, PRIVATE_DIR_MODE)
        return folder
    raise FileExistsError(f"cannot make a new quarantine folder in {base}")


def move_to_quarantine(home: Path, paths: Iterable[Path], folder: Path) -> list[str]:
    """Move files of the home into ``folder`` at the same relative path (a rename: nothing is copied or
    deleted); returns their paths relative to the home."""
    moved = []
    for path in paths:
        rel = path.relative_to(home)
        dest = folder / rel
        private_dir(dest.parent)
        os.replace(path, dest)
        if not dest.is_symlink():
            os.chmod(dest, PRIVATE_FILE_MODE)
        moved.append(str(rel))
    if moved:
        fsync_dir(folder)
    return moved


def quarantine_summary(home: Path) -> tuple[int, list[str]]:
    """(number of files, names of the folders) held in the home's quarantine."""
    base = home / QUARANTINE
    if not base.is_dir():
        return 0, []
    folders = sorted(p.name for p in base.iterdir() if p.is_dir())
    return sum(1 for _ in _files(base)), folders


def _walk(home: Path) -> Iterable[Path]:
    """The home and covip's own files and folders in it (never anything else a person keeps there), without
    following symlinks."""
    yield home
    for name in (DB_FILE, *DB_SIDE_FILES, SETTINGS_FILE):
        if (home / name).exists():
            yield home / name
    for sub in (*SUBDIRS, QUARANTINE):
        top = home / sub
        if not top.is_dir() or top.is_symlink():
            continue
        yield top
        for root, dirs, files in os.walk(top, followlinks=False):
            for name in dirs + files:
                yield Path(root) / name


def loose_modes(home: Path) -> list[tuple[str, int]]:
    """(path relative to the home, mode) of each file or folder other users could read or change."""
    out = []
    for path in _walk(home):
        try:
            st = path.lstat()
        except OSError:
            continue  # removed while we looked
        if stat.S_ISLNK(st.st_mode):
            continue
        if st.st_mode & 0o077:
            out.append((str(path.relative_to(home)) if path != home else ".", stat.S_IMODE(st.st_mode)))
    return out


def tighten_modes(home: Path) -> tuple[int, list[str]]:
    """Make every folder 0700 and every file 0600; returns (how many changed, those that could not be)."""
    changed, failed = 0, []
    for rel, _mode in loose_modes(home):
        path = home if rel == "." else home / rel
        try:
            os.chmod(path, PRIVATE_DIR_MODE if path.is_dir() else PRIVATE_FILE_MODE)
            changed += 1
        except OSError as exc:
            failed.append(f"{rel} ({exc.strerror or exc})")
    return changed, failed
