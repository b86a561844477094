"""Private by default: another OS user cannot read anyone's memory, whatever the umask.

The home and its folders are 0700 and every file covip writes is 0600 (the database and SQLite's -wal/-shm,
photos, index files and sidecars, locks, temp files, config.json, exported bundles); verify warns about
looser modes and repair tightens them.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from covip.sdk import Memory, MemoryConfig
from covip.sdk.cli import cli
from covip.sdk.config import write_settings
from tests.conftest import draw_photo, unit_vector


@pytest.fixture(params=[0o022, 0o000], ids=["umask022", "umask000"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def modes(root: Path) -> dict[str, int]:
    """Mode of the root and of everything under it (symlinks not followed)."""
    out = {".": stat.S_IMODE(root.lstat().st_mode)}
    for path in root.rglob("*"):
        out[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return out


def assert_private(root: Path) -> None:
    loose = {rel: f"{mode:04o}" for rel, mode in modes(root).items()
             if mode != (0o700 if (root / rel).is_dir() else 0o600)}
    assert not loose, loose


def test_everything_in_a_new_home_is_private(tmp_path: Path, umask: int) -> None:
    home = tmp_path / "deep" / "home"
    with Memory(MemoryConfig(home=home)) as mem:
        write_settings(home, {"embedder": {"model": "tiny", "pretrained": None}})
        mem.add_user("ana")
        recs = [mem.remember("ana", draw_photo(i), "User: hello", concepts=["Bori"], embedding=unit_vector(i),
                             model_id="test/32") for i in range(3)]
        mem.cache_caption("ana", "a dog", model_id="m", prompt_version="1", photo_sha256=recs[0].photo.sha256,
                          context_ids=[recs[1].photo.id])
        mem.flush()
        names = {p.name for p in home.iterdir()}
        assert {"memory.db", "memory.db-wal", "memory.db-shm", "config.json"} <= names
        assert list((home / "index").glob("*.faiss")) and list((home / "index").glob("*.json"))
        assert list((home / "locks").iterdir())
        assert_private(home)  # while open: the WAL and shared-memory files too
        bundle = mem.export_user("ana", tmp_path / "out" / "ana.zip")
        assert stat.S_IMODE(bundle.stat().st_mode) == 0o600
    assert_private(home)


def test_cli_init_makes_a_private_home(tmp_path: Path, umask: int) -> None:
    home = tmp_path / "home"
    result = CliRunner().invoke(cli, ["--home", str(home), "init", "--embedder", "tiny"])
    assert result.exit_code == 0, result.output
    assert_private(home)


def test_verify_warns_about_loose_modes_and_repair_tightens_them(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with Memory(MemoryConfig(home=home)) as mem:
        mem.add_user("ana")
        rec = mem.remember("ana", draw_photo(1), "User: hi", concepts=["Bori"], embedding=unit_vector(1),
                           model_id="test/32")
        assert not any("other users" in w for w in mem.verify().warnings)
        os.chmod(home, 0o755)
        os.chmod(home / "memory.db", 0o644)
        os.chmod(rec.photo.path, 0o644)
        os.chmod(home / "photos", 0o755)
        report = mem.verify()
        assert report.ok  # a warning, not damage
        warning = next(w for w in report.warnings if "other users" in w)
        assert "4 files or folders" in warning and "memory.db 0644" in warning and ". 0755" in warning
        repaired = mem.repair()
        assert any("made 4 files and folders private" in r for r in repaired.repaired), repaired.repaired
        assert not any("other users" in w for w in repaired.warnings)
    assert_private(home)


def test_repair_never_touches_files_covip_does_not_own(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    notes = home / "my-notes.txt"  # a person's own file in the same folder
    notes.write_text("mine")
    os.chmod(notes, 0o644)
    with Memory(MemoryConfig(home=home)) as mem:
        mem.repair()
    assert stat.S_IMODE(notes.stat().st_mode) == 0o644
