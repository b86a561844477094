"""A memory home survives damage it did not cause, and repair never destroys what it cannot prove is garbage.

- Poisoned derived rows (vectors of the wrong dimension or length, NaN) never stop a home from opening;
  verify names them and repair rebuilds them (re-embedded from the stored photo, or dropped).
- A lost or emptied memory.db is refused with the recovery steps instead of silently starting a new
  database whose repair would then delete every photo; orphan photo files go to quarantine, not away.
- A corrupted memory.db gives a clear StoreError with the recovery path, from the CLI and the API.
"""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

from covip.sdk import Memory, MemoryConfig, StoreError
from covip.sdk.cli import cli
from covip.sdk.errors import DatabaseCorruptError, DatabaseMissingError
from tests.conftest import draw_photo, unit_vector

OTHER = "other/8"


def run(home: Path, *args: str) -> Result:
    """``covip --home HOME ARGS`` in-process, exceptions caught so a traceback would show as one."""
    return CliRunner().invoke(cli, ["--home", str(home), *args])


def no_traceback(result: Result) -> None:
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output + result.stderr


def photo_files(home: Path) -> set[str]:
    return {str(p.relative_to(home)) for p in (home / "photos").rglob("*") if p.is_file()}


# ------------------------------------------------------------------------------------------ poisoned rows
@pytest.fixture
def poisoned(tmp_path: Path, tiny_embedder) -> tuple[Path, dict[str, int]]:
    """A home with 3 good photos (tiny embedder) and 3 photos whose vectors under the home's model id are
    poisoned by direct SQL: dimension 3, a byte length that does not match the dimension, NaN values."""
    home = tmp_path / "home"
    model = tiny_embedder.model_id
    with Memory.open(home, embedder=tiny_embedder) as mem:
        mem.add_user("ana")
        for i in range(3):
            mem.remember("ana", draw_photo(i), f"User: good {i}", concepts=["Bori"])
        victims = [mem.remember("ana", draw_photo(10 + i), f"User: victim {i}", concepts=["Mina"],
                                embedding=unit_vector(i, 8), model_id=OTHER).photo.id for i in range(3)]
        uid = mem.users()[0].id
    conn = sqlite3.connect(home / "memory.db")
    with conn:
        rows = [(uid, victims[0], model, 3, unit_vector(1, 3).tobytes()),
                (uid, victims[1], model, 64, b"\x00" * 10),
                (uid, victims[2], model, 64, np.full(64, np.nan, dtype=np.float32).tobytes())]
        ids = [conn.execute("INSERT INTO embeddings (user_id, photo_id, model_id, dim, vector) VALUES (?,?,?,?,?)",
                            r).lastrowid for r in rows]
    conn.close()
    return home, {"dim3": ids[0], "short": ids[1], "nan": ids[2], "victim": victims[0]}


def test_bad_vector_rows_never_stop_the_home_from_opening(poisoned, tiny_embedder, caplog) -> None:
    home, ids = poisoned
    with caplog.at_level(logging.WARNING, logger="covip"), Memory.open(home, embedder=tiny_embedder) as mem:
        hits = mem.search("ana", image=draw_photo(1), k=10)
        assert {h.photo.id for h in hits} <= {p.id for p in mem.photos("ana")}
        assert len(hits) == 3  # the three good vectors; the poisoned ones are left out
        assert hits[0].episodes[0].dialogue[0].text == "good 1"
        mem.remember("ana", draw_photo(20), "User: new one", concepts=["Bori"])  # writes still work
        assert len(mem.search("ana", image=draw_photo(20), k=10)) == 4
    assert "unusable" in caplog.text


def test_verify_names_bad_vectors_and_repair_re_embeds_them(poisoned, tiny_embedder) -> None:
    home, ids = poisoned
    with Memory.open(home, embedder=tiny_embedder) as mem:
        report = mem.verify()
        assert not report.ok
        text = "\n".join(report.errors)
        for key in ("dim3", "short", "nan"):
            assert f"vector {ids[key]} " in text, text
        assert "dimension 3" in text and "NaN" in text and "bytes long" in text
        repaired = mem.repair()
        assert repaired.ok, repaired.errors
        assert any("re-embedded 3" in line for line in repaired.repaired), repaired.repaired
        hits = mem.search("ana", image=draw_photo(10), k=1)  # the victim photo is searchable again
        assert hits[0].photo.id == ids["victim"] and hits[0].score > 0.99
        assert len(mem.history("ana")) == 6  # every dialogue stays
    with Memory.open(home, embedder=tiny_embedder) as mem:
        assert mem.verify().ok


def test_repair_drops_bad_vectors_of_another_model_and_keeps_the_photos(tmp_path: Path, tiny_embedder) -> None:
    home = tmp_path / "home"
    with Memory.open(home, embedder=tiny_embedder) as mem:
        mem.add_user("ana")
        for i in range(3):
            mem.remember("ana", draw_photo(i), f"User: {i}", concepts=["Bori"], embedding=unit_vector(i, 8),
                         model_id=OTHER)
        pid = mem.remember("ana", draw_photo(9), "User: victim", concepts=["Bori"],
                           embedding=unit_vector(9, 16), model_id="third/16").photo.id
        uid = mem.users()[0].id
    conn = sqlite3.connect(home / "memory.db")
    with conn:
        bad = conn.execute("INSERT INTO embeddings (user_id, photo_id, model_id, dim, vector) VALUES (?,?,?,?,?)",
                           (uid, pid, OTHER, 5, unit_vector(1, 5).tobytes())).lastrowid
    conn.close()
    with Memory.open(home, embedder=tiny_embedder) as mem:
        assert f"vector {bad} " in "\n".join(mem.verify().errors)
        repaired = mem.repair()
        assert repaired.ok, repaired.errors
        assert any("dropped 1" in line and f"vector {bad} " in line for line in repaired.repaired)
        assert [p.id for p in mem.photos("ana")][-1] == pid and len(mem.history("ana")) == 4
        assert len(mem.search("ana", embedding=unit_vector(0, 8), model_id=OTHER, k=10)) == 3


def test_cli_survives_poisoned_rows_and_repairs_them(poisoned, tmp_path: Path) -> None:
    home, ids = poisoned
    (home / "config.json").write_text(json.dumps({"embedder": {"model": "tiny", "pretrained": None}}))
    shown = tmp_path / "q.png"
    draw_photo(2).save(shown)
    result = run(home, "recall", str(shown), "--user", "ana", "--json")
    no_traceback(result)
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)["hits"]) == 3
    result = run(home, "verify")
    no_traceback(result)
    assert result.exit_code == 1 and f"vector {ids['dim3']} " in result.stdout
    result = run(home, "verify", "--repair", "--json")
    no_traceback(result)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["ok"] is True


# ------------------------------------------------------------------------------------------ lost database
@pytest.fixture
def remembered(tmp_path: Path) -> Path:
    """A home with 4 remembered photos and an index file; closed."""
    home = tmp_path / "home"
    with Memory(MemoryConfig(home=home)) as mem:
        mem.add_user("ana")
        for i in range(4):
            mem.remember("ana", draw_photo(i), f"User: photo {i}", concepts=["Bori"], embedding=unit_vector(i),
                         model_id="test/32")
        mem.export_user("ana", tmp_path / "ana.zip")
    (home / "config.json").write_text(json.dumps({"embedder": {"model": "tiny", "pretrained": None}}))
    return home


def _lose(home: Path, how: str) -> None:
    for name in ("memory.db", "memory.db-wal", "memory.db-shm"):
        (home / name).unlink(missing_ok=True)
    if how == "empty":
        (home / "memory.db").write_bytes(b"")
    elif how == "no tables":
        conn = sqlite3.connect(home / "memory.db")
        conn.execute("CREATE TABLE t (x)")
        conn.execute("DROP TABLE t")
        conn.close()


@pytest.mark.parametrize("how", ["deleted", "empty", "no tables"])
def test_lost_database_is_refused_with_recovery_steps(remembered: Path, how: str) -> None:
    home = remembered
    before = photo_files(home)
    assert len(before) == 4
    _lose(home, how)
    with pytest.raises(DatabaseMissingError) as info:
        Memory.open(home)
    assert isinstance(info.value, StoreError)
    message = str(info.value)
    for needle in ("4 photo files", "backup", "import-memory", "--start-fresh", "quarantine"):
        assert needle in message, message
    assert photo_files(home) == before
    for args in (("verify",), ("verify", "--repair"), ("recall", "x.png", "--user", "ana")):
        result = run(home, *args)
        no_traceback(result)
        assert result.exit_code != 0
        assert "--start-fresh" in result.output + result.stderr
        assert photo_files(home) == before  # nothing deleted, whatever was asked
    assert (home / "memory.db").exists() == (how != "deleted")  # no new database was created


def test_start_fresh_quarantines_leftovers_and_a_bundle_restores_the_memory(remembered: Path) -> None:
    home = remembered
    before = photo_files(home)
    _lose(home, "deleted")
    result = run(home, "verify", "--start-fresh")
    assert result.exit_code == 0, result.output
    folders = list((home / "quarantine").iterdir())
    assert len(folders) == 1 and str(folders[0]) in result.stdout
    assert {str(p.relative_to(folders[0])) for p in (folders[0] / "photos").rglob("*") if p.is_file()} == before
    assert photo_files(home) == set()
    result = run(home, "verify")
    assert result.exit_code == 0, result.output
    assert "quarantine" in result.stdout and "4" in result.stdout  # verify lists what waits there
    result = run(home, "import-memory", str(home.parent / "ana.zip"))
    assert result.exit_code == 0, result.output
    with Memory.open(home) as mem:
        assert len(mem.photos("ana")) == 4
        assert mem.verify().ok


def test_start_fresh_refuses_a_readable_memory(remembered: Path) -> None:
    from covip.sdk import ConflictError

    before = photo_files(remembered)
    with pytest.raises(ConflictError):
        Memory.start_fresh(remembered)
    assert photo_files(remembered) == before
    assert not (remembered / "quarantine").exists()


def test_repair_moves_orphan_photos_to_quarantine_instead_of_deleting(remembered: Path) -> None:
    orphan = remembered / "photos" / "u1" / "zz" / "lost-row.png"
    orphan.parent.mkdir(parents=True)
    draw_photo(42).save(orphan)
    data = orphan.read_bytes()
    with Memory.open(remembered) as mem:
        assert any("1 photo files belong to no memory" in w and "lost-row.png" in w for w in mem.verify().warnings)
        report = mem.repair()
        assert report.ok
        line = next(r for r in report.repaired if "belong to no memory" in r)
        assert "photos/u1/zz/lost-row.png" in line and "nothing was deleted" in line
        kept = list((remembered / "quarantine").rglob("lost-row.png"))
        assert len(kept) == 1 and kept[0].read_bytes() == data
        assert not orphan.exists()
        assert any("quarantine" in w for w in mem.verify().warnings)
        assert len(mem.photos("ana")) == 4


def test_foreign_sqlite_file_is_not_taken_over(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    conn = sqlite3.connect(home / "memory.db")
    conn.execute("CREATE TABLE recipes (name TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="not a covip memory"):
        Memory.open(home)
    conn = sqlite3.connect(home / "memory.db")
    assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master")] == ["recipes"]
    conn.close()


# ------------------------------------------------------------------------------------------ corruption
@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A closed home whose memory.db spans many pages (40 photos with dialogues)."""
    home = tmp_path_factory.mktemp("pristine") / "home"
    with Memory(MemoryConfig(home=home)) as mem:
        mem.add_user("ana")
        for i in range(40):
            mem.remember("ana", draw_photo(100 + i, size=32), f"User: dialogue number {i} " + "words " * 200,
                         concepts=[f"C{i % 7}"], embedding=unit_vector(i), model_id="test/32")
    (home / "config.json").write_text(json.dumps({"embedder": {"model": "tiny", "pretrained": None}}))
    return home


@pytest.mark.parametrize("where", ["header page", "middle page", "last page"])
def test_corrupted_database_gives_the_recovery_path_not_a_traceback(pristine: Path, tmp_path: Path,
                                                                    where: str) -> None:
    home = tmp_path / "home"
    shutil.copytree(pristine, home)
    db = home / "memory.db"
    pages = db.stat().st_size // 4096
    assert pages >= 20
    page = {"header page": 0, "middle page": pages // 2, "last page": pages - 1}[where]
    with open(db, "r+b") as fh:
        fh.seek(page * 4096)
        fh.write(np.random.default_rng(page).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    for args in (("verify",), ("verify", "--repair"), ("verify", "--json")):
        result = run(home, *args)
        no_traceback(result)
        assert result.exit_code != 0, result.output
        out = result.output + result.stderr
        assert "damaged" in out and ".recover" in out and "import-memory" in out, out
    try:  # the Python API: a StoreError naming the recovery path, never sqlite3.DatabaseError
        with Memory.open(home) as mem:
            report = mem.verify()
            assert not report.ok and ".recover" in report.errors[0]
            for call in (lambda: mem.history("ana"), lambda: mem.photos("ana"), mem.repair,
                         lambda: mem.search("ana", embedding=unit_vector(1), model_id="test/32")):
                try:
                    out = call()
                except StoreError as exc:
                    assert not isinstance(exc, sqlite3.Error)
                    if isinstance(exc, DatabaseCorruptError):
                        assert ".recover" in str(exc)
                else:
                    if hasattr(out, "ok"):
                        assert not out.ok and any("changed nothing" in e for e in out.errors)
    except DatabaseCorruptError as exc:
        assert ".recover" in str(exc) and "import-memory" in str(exc)
