"""The memory home's own files (database, WAL, index, locks, temp files): only the store may open them.

Why this exists: SQLite locks its database with POSIX advisory locks, and the kernel drops *all* of a
process's locks on a file as soon as the process closes *any* descriptor of that file. A photo reader that
merely opened and closed ``memory.db`` (a chat request naming it, a symlink or hardlink to it, ``covip
remember ~/home/memory.db``) would silently drop the locks of the memory open in that process; another
process could then checkpoint and delete the WAL under it and later writes would be lost.

So every place that opens a file named from outside (photo intake, serving a photo's bytes) first calls
:func:`refuse_home_file`, which compares the file's (device, inode) with the files of every memory home
open in this process (registered by the store while its database is open) and recognises a home's layout
wherever it is. It only calls ``os.stat``; it never opens anything.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from covip.sdk.errors import InputError

log = logging.getLogger(__name__)

__all__ = ["DB_NAMES", "PHOTO_STORE", "PRIVATE_DIRS", "register_home", "unregister_home", "open_homes",
           "is_home_file", "refuse_home_file"]

DB_NAMES = ("memory.db", "memory.db-wal", "memory.db-shm", "memory.db-journal")
"""The database and SQLite's side files next to it."""
PHOTO_STORE = "photos"
"""The home's photo store: remembered photos, which photo readers may open."""
PRIVATE_DIRS = ("index", "locks", "tmp")
"""Folders of a home holding only covip's own files (vector indexes, lock files, temp files)."""

_lock = threading.Lock()
_homes: dict[Path, int] = {}  # home -> how many stores of this process hold its database open


def register_home(home: str | os.PathLike[str]) -> None:
    """Note that this process holds ``home``'s database open (called by the store; counted, so every
    call needs one :func:`unregister_home`)."""
    key = Path(os.path.abspath(home))
    with _lock:
        _homes[key] = _homes.get(key, 0) + 1


def unregister_home(home: str | os.PathLike[str]) -> None:
    """Undo one :func:`register_home` (a store closed its database)."""
    key = Path(os.path.abspath(home))
    with _lock:
        left = _homes.get(key, 0) - 1
        if left > 0:
            _homes[key] = left
        else:
            _homes.pop(key, None)


def open_homes() -> tuple[Path, ...]:
    """The memory homes whose database this process holds open."""
    with _lock:
        return tuple(_homes)


def _home_files(home: Path) -> Iterator[os.stat_result]:
    """stat() of a home's own files: every file directly in it (database, WAL, settings, keys) and every file
    in its private folders (index, locks, tmp). Folders are listed, files never opened."""
    stack = [home, *(home / sub for sub in PRIVATE_DIRS)]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            if folder != home:
                                stack.append(Path(entry.path))
                        elif entry.is_file(follow_symlinks=False):
                            yield entry.stat(follow_symlinks=False)
                    except OSError:
                        continue  # removed while we looked
        except OSError:
            continue


def _in_home_layout(real: Path) -> bool:
    """Whether ``real`` (symlinks resolved) is where a covip home keeps its own files, whether or not that
    home is open here: right next to a ``memory.db``, or inside such a home's index, locks or tmp folder."""
    parents = real.parents
    if (parents[0] / DB_NAMES[0]).is_file():
        return True
    for n, parent in enumerate(parents[:-1]):
        if parent.name in PRIVATE_DIRS and (parents[n + 1] / DB_NAMES[0]).is_file():
            return True
    return False


def is_home_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is (or links to, or is a hardlink of) a file of a memory home outside its photo
    store: a file only covip's store may open. Uses os.stat and directory listings only."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return False  # missing or unusable: the caller's own error handling says so
    try:
        if _in_home_layout(Path(path).resolve()):
            return True
    except (OSError, RuntimeError, ValueError):
        pass
    ident = (st.st_dev, st.st_ino)
    for home in open_homes():
        for other in _home_files(home):
            if (other.st_dev, other.st_ino) == ident:
                return True
    return False


def refuse_home_file(path: str | os.PathLike[str], label: str) -> None:
    """Raise InputError when ``path`` is one of a memory home's own files (see :func:`is_home_file`),
    before anything opens it. ``label`` names the path as the caller gave it."""
    if is_home_file(path):
        log.warning("refused to open a memory home's own file as a photo")
        raise InputError(f"{label} is one of a covip memory's own files (its database, index, lock, temp or "
                         "settings files), not a photo; covip never opens those as photos. Pass the photo "
                         "file itself (remembered photos are in the home's photos folder)")
