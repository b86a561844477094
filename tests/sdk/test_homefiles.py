"""A memory home's own files are never opened as photos: not by path, hardlink or symlink, not from the CLI.

Opening and closing memory.db in a process drops that process's SQLite (POSIX) locks on it; these tests
check the locks themselves from another process, so they fail if anything opened the file at all.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from covip.sdk.errors import InputError, NotAnImageError
from covip.sdk.homefiles import is_home_file, open_homes
from covip.sdk.imaging import load_photo

# SQLite's unix VFS takes its SHARED lock as a read lock on these bytes of the database file
_LOCK_CHILD = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
try:
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 510, 0x40000002)
except OSError:
    sys.exit(1)
"""


def _locked_by_this_process(db: Path) -> bool:
    """Whether another process is kept from write-locking SQLite's shared-lock bytes (our lock holds)."""
    return subprocess.run([sys.executable, "-c", _LOCK_CHILD, str(db)], timeout=60).returncode == 1


def test_home_files_are_refused_without_being_opened(mem, tmp_path: Path, photo_factory) -> None:
    home = mem.home
    mem.add_user("ana")
    mem.remember("ana", photo_factory(1), "User: hi", ["Bori"])
    mem.users()  # a read: WAL mode keeps the SHARED lock on memory.db afterwards
    db = home / "memory.db"
    assert _locked_by_this_process(db)
    outside = tmp_path / "outside"
    outside.mkdir()
    os.link(db, outside / "hardlink.jpg")
    (outside / "symlink.jpg").symlink_to(db)
    attempts = [db, home / "memory.db-wal", home / "memory.db-shm", outside / "hardlink.jpg",
                outside / "symlink.jpg", *(home / "index").iterdir(), *(home / "locks").iterdir()]
    assert all(p.exists() for p in attempts)
    for path in attempts:
        with pytest.raises(InputError) as info:
            load_photo(path)
        assert _locked_by_this_process(db), f"loading {path} dropped the database lock"
        assert "own files" in str(info.value) and not isinstance(info.value, NotAnImageError), path
    # the remembered photos themselves are readable
    stored = next(p for p in (home / "photos").rglob("*") if p.is_file())
    assert load_photo(stored).width == 96
    assert home.resolve() in {h.resolve() for h in open_homes()}


def test_closed_home_is_still_recognised_by_its_layout(home: Path, tiny_embedder, tmp_path: Path) -> None:
    from covip.sdk import Memory

    with Memory.open(home, embedder=tiny_embedder) as m:
        m.add_user("ana")
    assert home.resolve() not in {h.resolve() for h in open_homes()}
    assert is_home_file(home / "memory.db")  # a home's layout, open here or not
    os.link(home / "memory.db", tmp_path / "elsewhere.png")
    assert not is_home_file(tmp_path / "elsewhere.png")  # no memory of this process holds it open
    with pytest.raises(InputError, match="own files"):
        load_photo(home / "memory.db")


def test_cli_remember_refuses_the_database(tmp_path: Path, tiny_embedder) -> None:
    from click.testing import CliRunner

    from covip.sdk.cli import cli

    home = tmp_path / "home"
    runner = CliRunner()
    assert runner.invoke(cli, ["--home", str(home), "init", "--embedder", "tiny"]).exit_code == 0
    assert runner.invoke(cli, ["--home", str(home), "user", "add", "ana"]).exit_code == 0
    before = (home / "memory.db").stat().st_mtime_ns
    result = runner.invoke(cli, ["--home", str(home), "remember", str(home / "memory.db"), "--user", "ana",
                                 "-c", "Bori", "-d", "User: hi"])
    assert result.exit_code == 2, result.output
    assert "own files" in result.stderr and "Traceback" not in result.stderr
    assert (home / "memory.db").stat().st_mtime_ns == before
