"""Round trips of every Memory API call on real SQLite, FAISS and the tiny open_clip embedder."""

from __future__ import annotations

import sqlite3
from datetime import datetime

import numpy as np
import pytest
from PIL import Image

from covip.sdk import (
    BundleError,
    ConflictError,
    IndexConfig,
    InputError,
    Memory,
    MemoryConfig,
    NotFoundError,
    SchemaError,
)
from covip.sdk.memory import SCHEMA_VERSION, migrate, schema_version
from tests.conftest import unit_vector

MODEL = "test/32"


def remember_vec(mem: Memory, user: str, path, seed: int, **kw):
    return mem.remember(user, path, embedding=unit_vector(seed), model_id=MODEL, **kw)


# --------------------------------------------------------------------------- users and concepts
def test_users_and_concepts_round_trip(mem: Memory) -> None:
    mem.add_user("ana")
    mem.add_user("ben")
    assert [u.name for u in mem.users()] == ["ana", "ben"]
    with pytest.raises(ConflictError, match="already exists"):
        mem.add_user("ana")
    assert mem.add_user("ana", exist_ok=True).name == "ana"

    bori = mem.add_concept("ana", "Bori", kind="pet", notes="white jindo")
    assert (bori.name, bori.kind, bori.notes, bori.photo_count) == ("Bori", "pet", "white jindo", 0)
    with pytest.raises(ConflictError):
        mem.add_concept("ana", "bori")  # names are case-insensitive per user
    mem.add_concept("ben", "Bori")  # but per user
    assert mem.update_concept("ana", "Bori", kind="person", notes="n").kind == "person"
    assert mem.rename_concept("ana", "Bori", "Bori-dog").name == "Bori-dog"
    with pytest.raises(NotFoundError, match="no concept named 'Bori'"):
        mem.rename_concept("ana", "Bori", "x")
    mem.add_concept("ana", "Mom", kind="person")
    with pytest.raises(ConflictError, match="merge"):
        mem.rename_concept("ana", "Mom", "bori-dog")
    assert sorted(c.name for c in mem.concepts("ana")) == ["Bori-dog", "Mom"]
    assert [c.name for c in mem.concepts("ben")] == ["Bori"]


def test_merge_concepts_moves_photos_and_episodes(mem: Memory, photo_factory) -> None:
    mem.add_user("ana")
    remember_vec(mem, "ana", photo_factory(1), 1, dialogue="User: Bori at the beach", concepts=["Bori"])
    remember_vec(mem, "ana", photo_factory(2), 2, dialogue="User: my puppy in the park", concepts=["puppy"])
    mem.update_concept("ana", "puppy", notes="likes parks")
    merged = mem.merge_concepts("ana", ["puppy"], into="Bori")
    assert merged.photo_count == 2 and "likes parks" in merged.notes
    assert [c.name for c in mem.concepts("ana")] == ["Bori"]
    assert len(mem.history("ana", concept="Bori")) == 2
    with pytest.raises(ConflictError, match="itself"):
        mem.merge_concepts("ana", ["Bori"], into="Bori")


# --------------------------------------------------------------------------- remember and search
def test_remember_and_search_by_image(mem: Memory, photo_factory) -> None:
    mem.add_user("ana")
    paths = [photo_factory(i) for i in range(4)]
    for i, p in enumerate(paths):
        r = mem.remember("ana", p, f"User: this is memory {i}\nAssistant: noted", concepts=[f"c{i}"],
                         taken_at=f"2024-05-0{i + 1}T10:00:00", place=f"place {i}")
        assert r.new_photo and r.embedding_id is not None
        assert r.photo.path.read_bytes() == p.read_bytes()  # stored copy is the original bytes
    hits = mem.search("ana", image=paths[2], k=3)
    assert len(hits) == 3
    top = hits[0]
    assert top.photo.sha256 == mem.find_photo("ana", paths[2]).sha256
    assert top.score == pytest.approx(1.0, abs=1e-4)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert top.concepts == ("c2",)
    assert top.photo.place == "place 2" and top.photo.taken_at == "2024-05-03T10:00:00"
    assert top.episodes[0].dialogue[0].text == "this is memory 2"
    assert top.episodes[0].dialogue[1].role == "assistant"
    assert not top.shared


def test_search_by_embedding_ranks_by_cosine(mem: Memory, photo_factory) -> None:
    mem.add_user("ana")
    for i in range(10):
        remember_vec(mem, "ana", photo_factory(i), i, dialogue=f"d{i}")
    query = unit_vector(7) + 0.05 * unit_vector(100)
    hits = mem.search("ana", embedding=query, model_id=MODEL, k=10)
    assert hits[0].episodes[0].dialogue[0].text == "d7"
    expected = sorted(range(10), key=lambda i: -float(unit_vector(i) @ (query / np.linalg.norm(query))))
    assert [h.episodes[0].dialogue[0].text for h in hits] == [f"d{i}" for i in expected]
    assert mem.search("ana", embedding=query, model_id=MODEL, k=3)[0].episodes[0].dialogue[0].text == "d7"


def test_same_photo_twice_keeps_one_copy_and_adds_an_episode(mem: Memory, photo_factory) -> None:
    mem.add_user("ana")
    p = photo_factory(5)
    first = mem.remember("ana", p, "User: Bori at the Han river", concepts=["Bori"], taken_at="2024-01-01")
    second = mem.remember("ana", p.read_bytes(), "User: Bori again, now with Mom", concepts=["Bori", "Mom"],
                          taken_at="2024-02-01")
    assert not second.new_photo and second.photo.id == first.photo.id and second.embedding_id is None
    assert len(mem.photos("ana")) == 1
    hit = mem.search("ana", image=p, k=1)[0]
    assert hit.concepts == ("Bori", "Mom")
    assert [e.dialogue[0].text for e in hit.episodes] == ["Bori again, now with Mom", "Bori at the Han river"]


def test_exif_time_and_gps_are_kept(mem: Memory, tmp_path) -> None:
    from tests.conftest import draw_photo

    img = draw_photo(3)
    exif = Image.Exif()
    exif_ifd = {0x9003: "2023:07:14 18:30:00"}  # DateTimeOriginal
    exif[0x8769] = exif_ifd
    exif[0x8825] = {1: "N", 2: (37.0, 31.0, 12.0), 3: "E", 4: (126.0, 59.0, 24.0)}
    path = tmp_path / "exif.jpg"
    img.save(path, "JPEG", exif=exif)
    mem.add_user("ana")
    rec = mem.remember("ana", path, "User: sunset walk").photo
    assert rec.taken_at == datetime(2023, 7, 14, 18, 30).isoformat()
    assert rec.gps == pytest.approx((37.52, 126.99), abs=0.01)
    # an explicit time wins over EXIF
    other = mem.remember("ana", draw_photo(4), "x", taken_at=datetime(2020, 1, 2)).photo
    assert other.taken_at == "2020-01-02T00:00:00"


def test_history_newest_first_with_concept_filter_and_limit(mem: Memory, photo_factory) -> None:
    mem.add_user("ana")
    remember_vec(mem, "ana", photo_factory(1), 1, dialogue="old", concepts=["Bori"], taken_at="2021-01-01")
    remember_vec(mem, "ana", photo_factory(2), 2, dialogue="new", concepts=["Bori"], taken_at="2024-01-01")
    remember_vec(mem, "ana", photo_factory(3), 3, dialogue="mid", concepts=["Mom"], taken_at="2022-01-01")
    assert [h.episode.dialogue[0].text for h in mem.history("ana")] == ["new", "mid", "old"]
    assert [h.episode.dialogue[0].text for h in mem.history("ana", concept="bori")] == ["new", "old"]
    assert [h.episode.dialogue[0].text for h in mem.history("ana", limit=1)] == ["new"]
    item = mem.history("ana", limit=1)[0]
    assert item.photo.id == item.episode.photo_id and item.episode.concepts == ("Bori",)


def test_persists_across_reopen_without_rebuilding(home, tiny_embedder, photo_factory) -> None:
    with Memory.open(home, embedder=tiny_embedder) as mem:
        mem.add_user("ana")
        for i in range(5):
            remember_vec(mem, "ana", photo_factory(i), i, dialogue=f"d{i}")
    index_files = list((home / "index").glob("*.faiss"))
    assert len(index_files) == 1
    stamp = index_files[0].stat().st_mtime_ns
    with Memory.open(home, embedder=tiny_embedder) as mem:
        assert mem.search("ana", embedding=unit_vector(3), model_id=MODEL, k=1)[0].episodes[0].dialogue[0].text == "d3"
        assert mem.verify().ok
    assert index_files[0].stat().st_mtime_ns == stamp  # up to date: not rewritten on open or close


# --------------------------------------------------------------------------- isolation and sharing
def test_search_never_crosses_users(mem: Memory, photo_factory) -> None:
    mem.add_user("ana")
    mem.add_user("ben")
    for i in range(12):
        remember_vec(mem, "ana", photo_factory(i), i, dialogue=f"ana secret {i}", concepts=["Bori"])
    for i in range(12, 15):
        remember_vec(mem, "ben", photo_factory(i), i, dialogue=f"ben {i}", concepts=["Bori"])
    for q in range(15):  # even querying with ana's exact vectors, ben only sees ben's photos
        hits = mem.search("ben", embedding=unit_vector(q), model_id=MODEL, k=10)
        assert len(hits) == 3
        assert all(h.photo.owner == "ben" and not h.shared for h in hits)
        assert all("ana" not in e.text for h in hits for e in h.episodes)
    assert all(h.photo.owner == "ben" for h in mem.history("ben"))
    assert [c.user for c in mem.concepts("ben")] == ["ben"]
    with pytest.raises(NotFoundError):
        mem.find_photo("ben", photo_factory(0))
    with pytest.raises(NotFoundError):
        mem.forget_photo("ben", photo_factory(0))
    assert len(mem.photos("ana")) == 12


def test_shared_concept_exposes_only_that_concept(mem: Memory, photo_factory) -> None:
    mem.add_user("ana")
    mem.add_user("ben")
    remember_vec(mem, "ana", photo_factory(1), 1, dialogue="Bori at the river", concepts=["Bori"])
    remember_vec(mem, "ana", photo_factory(2), 2, dialogue="ana's diary", concepts=["Diary"])
    # a photo showing both: ben may see it through Bori, but not the Diary dialogue or concept
    mem.remember("ana", photo_factory(3), "Bori sits on the diary", concepts=["Bori"], embedding=unit_vector(3),
                 model_id=MODEL)
    mem.remember("ana", photo_factory(3), "private diary words", concepts=["Diary"])
    assert mem.search("ben", embedding=unit_vector(1), model_id=MODEL, k=5) == []
    mem.share_concept("ana", "Bori", "ben")
    hits = mem.search("ben", embedding=unit_vector(3), model_id=MODEL, k=5)
    assert {h.photo.id for h in hits} == {mem.find_photo("ana", photo_factory(1)).id,
                                          mem.find_photo("ana", photo_factory(3)).id}
    assert all(h.shared and h.photo.owner == "ana" and h.concepts == ("Bori",) for h in hits)
    texts = [e.text for h in hits for e in h.episodes]
    assert "User: Bori sits on the diary" in texts and not any("diary words" in t or "ana's diary" in t for t in texts)
    assert [h.episode.dialogue[0].text for h in mem.history("ben", concept=" bori ")][0] == "Bori sits on the diary"
    assert "Bori" in [c.name for c in mem.concepts("ben")]
    mem.unshare_concept("ana", "Bori", "ben")
    assert mem.search("ben", embedding=unit_vector(3), model_id=MODEL, k=5) == []
    with pytest.raises(NotFoundError):
        mem.history("ben", concept="Bori")


# --------------------------------------------------------------------------- forget cascades
def test_forget_photo_cascades(mem: Memory, photo_factory) -> None:
    mem.add_user("ana")
    a = remember_vec(mem, "ana", photo_factory(1), 1, dialogue="one", concepts=["Bori"])
    remember_vec(mem, "ana", photo_factory(2), 2, dialogue="two", concepts=["Bori"])
    mem.cache_caption("ana", "caption using photo 1", model_id="m", prompt_version="v1", photo_sha256="q",
                      context_ids=[a.photo.id])
    report = mem.forget_photo("ana", photo_factory(1))
    assert (report.photos, report.episodes, report.vectors, report.captions, report.files) == (1, 1, 1, 1, 1)
    assert report.scrubbed
    assert not a.photo.path.exists()
    assert mem.cached_caption("ana", model_id="m", prompt_version="v1", photo_sha256="q",
                              context_ids=[a.photo.id]) is None
    hits = mem.search("ana", embedding=unit_vector(1), model_id=MODEL, k=5)
    assert [h.episodes[0].dialogue[0].text for h in hits] == ["two"]
    assert mem.concepts("ana")[0].photo_count == 1
    assert mem.verify().ok
    with pytest.raises(NotFoundError):
        mem.forget_photo("ana", a.photo.id)


def test_forget_concept_with_and_without_keeping_shared_photos(mem: Memory, photo_factory) -> None:
    mem.add_user("ana")
    remember_vec(mem, "ana", photo_factory(1), 1, dialogue="only Bori", concepts=["Bori"])
    remember_vec(mem, "ana", photo_factory(2), 2, dialogue="Bori and Mom", concepts=["Bori", "Mom"])
    remember_vec(mem, "ana", photo_factory(3), 3, dialogue="only Mom", concepts=["Mom"])
    mem.remember("ana", photo_factory(2), "Mom alone talking", concepts=["Mom"])
    report = mem.forget_concept("ana", "Bori", keep_shared_photos=True)
    assert (report.photos, report.concepts) == (1, 1)
    left = {h.episode.dialogue[0].text for h in mem.history("ana")}
    assert left == {"only Mom", "Mom alone talking"}  # the dialogue tied to Bori went with it
    assert [c.name for c in mem.concepts("ana")] == ["Mom"]
    report = mem.forget_concept("ana", "Mom")
    assert report.photos == 2 and mem.photos("ana") == [] and mem.history("ana") == []
    assert list((mem.home / "index").glob("*.faiss")) == []
    assert mem.verify().ok


def test_forget_user_removes_everything_of_theirs_only(mem: Memory, photo_factory) -> None:
    mem.add_user("ana")
    mem.add_user("ben")
    remember_vec(mem, "ana", photo_factory(1), 1, dialogue="ana", concepts=["Bori"])
    remember_vec(mem, "ben", photo_factory(2), 2, dialogue="ben", concepts=["Toto"])
    mem.share_concept("ana", "Bori", "ben")
    report = mem.forget_user("ana")
    assert (report.users, report.photos, report.concepts) == (1, 1, 1)
    assert [u.name for u in mem.users()] == ["ben"]
    assert not (mem.home / "photos" / "u1").exists()
    assert [h.photo.owner for h in mem.search("ben", embedding=unit_vector(1), model_id=MODEL, k=5)] == ["ben"]
    with pytest.raises(NotFoundError, match="no user named 'ana'"):
        mem.history("ana")
    audit = mem.store.rows("SELECT detail FROM audit")
    assert all("Bori" not in r["detail"] and "ana" not in r["detail"] for r in audit)  # ids only
    assert mem.verify().ok


# --------------------------------------------------------------------------- caption cache
def test_caption_cache_dies_when_a_used_memory_is_edited(mem: Memory, photo_factory) -> None:
    mem.add_user("ana")
    a = remember_vec(mem, "ana", photo_factory(1), 1, dialogue="one", concepts=["Bori"])
    b = remember_vec(mem, "ana", photo_factory(2), 2, dialogue="two", concepts=["Mom"])
    key = dict(model_id="m", prompt_version="v1", photo_sha256="q")
    mem.cache_caption("ana", "uses a", context_ids=[a.photo.id], **key)
    mem.cache_caption("ana", "uses b", context_ids=[b.photo.id], **{**key, "photo_sha256": "q2"})
    assert mem.cached_caption("ana", context_ids=[a.photo.id], **key) == "uses a"
    assert mem.cached_caption("ana", context_ids=[a.photo.id], **{**key, "prompt_version": "v2"}) is None
    mem.rename_concept("ana", "Bori", "Bori2")
    assert mem.cached_caption("ana", context_ids=[a.photo.id], **key) is None
    assert mem.cached_caption("ana", context_ids=[b.photo.id], **{**key, "photo_sha256": "q2"}) == "uses b"
    mem.remember("ana", photo_factory(2), "a new dialogue about b")
    assert mem.cached_caption("ana", context_ids=[b.photo.id], **{**key, "photo_sha256": "q2"}) is None


# --------------------------------------------------------------------------- export / import
def test_export_import_round_trip(mem: Memory, photo_factory, tmp_path) -> None:
    mem.add_user("ana")
    mem.add_concept("ana", "Bori", kind="pet", notes="white jindo")
    for i in range(3):
        remember_vec(mem, "ana", photo_factory(i), i, dialogue=f"User: day {i}\nAssistant: ok",
                     concepts=["Bori"] if i else ["Mom"], taken_at=f"2024-0{i + 1}-01", place=f"p{i}")
    mem.remember("ana", photo_factory(0), "a second talk", concepts=["Bori"])
    bundle = mem.export_user("ana", tmp_path / "ana.zip")
    before = [(h.photo.sha256, h.concepts, tuple(e.text for e in h.episodes))
              for h in mem.search("ana", embedding=unit_vector(1), model_id=MODEL, k=5)]

    with pytest.raises(ConflictError, match="already exists"):
        mem.import_bundle(bundle)
    counts = mem.import_bundle(bundle, user="ana-copy")
    assert counts == {"user": "ana-copy", "concepts": 2, "photos": 3, "episodes": 4, "vectors": 4}  # 3 test vectors + 1 tiny-model one
    after = [(h.photo.sha256, h.concepts, tuple(e.text for e in h.episodes))
             for h in mem.search("ana-copy", embedding=unit_vector(1), model_id=MODEL, k=5)]
    assert after == before
    bori = next(c for c in mem.concepts("ana-copy") if c.name == "Bori")
    assert (bori.kind, bori.notes, bori.photo_count) == ("pet", "white jindo", 3)
    assert [h.photo.place for h in mem.history("ana-copy")] == [h.photo.place for h in mem.history("ana")]
    # merging the same bundle again is idempotent: no duplicate photos, vectors or episodes (how devices sync)
    history = [(h.photo.sha256, h.episode.text) for h in mem.history("ana-copy")]
    again = mem.import_bundle(bundle, user="ana-copy", merge=True)
    assert (again["photos"], again["vectors"], again["concepts"], again["episodes"]) == (0, 0, 0, 0)
    assert [(h.photo.sha256, h.episode.text) for h in mem.history("ana-copy")] == history
    assert len(mem.photos("ana-copy")) == 3
    # a bundle made after one more talk brings exactly that episode
    mem.remember("ana", photo_factory(1), "User: a third talk about day 1", concepts=["Bori"])
    newer = mem.export_user("ana", tmp_path / "ana-newer.zip")
    assert mem.import_bundle(newer, user="ana-copy", merge=True)["episodes"] == 1
    assert len(mem.history("ana-copy")) == len(mem.history("ana")) == len(history) + 1
    assert mem.verify().ok

    # a fresh home, as on another device
    with Memory.open(tmp_path / "other-home", embedder=mem.embedder) as other:
        other.import_bundle(bundle)
        assert [h.photo.sha256 for h in other.search("ana", embedding=unit_vector(1), model_id=MODEL, k=5)] == \
            [b[0] for b in before]
        assert other.verify().ok


def test_damaged_bundles_are_refused_and_change_nothing(mem: Memory, photo_factory, tmp_path) -> None:
    import zipfile

    from tests.conftest import home_fingerprint

    mem.add_user("ana")
    remember_vec(mem, "ana", photo_factory(1), 1, dialogue="x")
    good = mem.export_user("ana", tmp_path / "good.zip")
    mem.flush()
    before = home_fingerprint(mem.home)
    not_zip = tmp_path / "not.zip"
    not_zip.write_text("hello")
    tampered = tmp_path / "tampered.zip"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(tampered, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "rows.json":
                data = data.replace(b'"x"', b'"y"')
            dst.writestr(item, data)
    for bad in (not_zip, tampered):
        with pytest.raises(BundleError):
            mem.import_bundle(bad, user="z")
    assert home_fingerprint(mem.home) == before


# --------------------------------------------------------------------------- verify / repair
def test_verify_finds_damage_and_repair_fixes_it(mem: Memory, photo_factory) -> None:
    mem.add_user("ana")
    recs = [remember_vec(mem, "ana", photo_factory(i), i, dialogue=f"d{i}") for i in range(4)]
    mem.flush()
    assert mem.verify().ok
    index_file = next((mem.home / "index").glob("*.faiss"))
    index_file.write_bytes(b"garbage" * 10)
    report = mem.verify()
    assert not report.ok and any("cannot be read" in e for e in report.errors)
    repaired = mem.repair()
    assert repaired.ok and any("rebuilt index" in r for r in repaired.repaired)
    assert mem.search("ana", embedding=unit_vector(2), model_id=MODEL, k=1)[0].photo.id == recs[2].photo.id

    recs[0].photo.path.write_bytes(b"tampered")
    assert any("altered" in e for e in mem.verify().errors)
    orphan = mem.home / "photos" / "u1" / "zz" / "orphan.png"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"left by a crash")
    assert any("belong to no memory" in w for w in mem.verify().warnings)
    mem.repair()
    assert not orphan.exists()


def test_index_switches_to_hnsw_and_back(home, photo_factory) -> None:
    cfg = MemoryConfig(home=home, index=IndexConfig(kind="auto", hnsw_threshold=20, flush_every=5))
    with Memory(cfg) as mem:
        mem.add_user("ana")
        for i in range(25):
            mem.remember("ana", photo_factory(i, size=24), f"d{i}", embedding=unit_vector(i), model_id=MODEL)
        entry = mem.indexes.entries[(1, MODEL)]
        assert entry.index.kind == "hnsw"
        for i in range(25):
            assert mem.search("ana", embedding=unit_vector(i), model_id=MODEL, k=1)[0].episodes[0].dialogue[0].text == f"d{i}"
        for i in range(16):  # HNSW cannot delete in place: forget rebuilds, below half the threshold -> flat
            mem.forget_photo("ana", photo_factory(i, size=24))
        assert mem.indexes.entries[(1, MODEL)].index.kind == "flat"
        assert mem.search("ana", embedding=unit_vector(20), model_id=MODEL, k=1)[0].episodes[0].dialogue[0].text == "d20"
        assert mem.verify().ok


# --------------------------------------------------------------------------- schema migrations
def test_migrates_an_older_schema_and_keeps_data(home, photo_factory) -> None:
    import sqlite_utils

    home.mkdir(parents=True)
    db = sqlite_utils.Database(sqlite3.connect(home / "memory.db", isolation_level=None))
    assert migrate(db, target=1) == [1]
    assert schema_version(db) == 1
    assert "caption_cache" not in db.table_names()
    now = "2024-01-01T00:00:00+00:00"
    db.execute("INSERT INTO users (name, created_at) VALUES ('ana', ?)", [now])
    db.execute("INSERT INTO concepts (user_id, name, kind, created_at, updated_at) VALUES (1, 'Bori', 'pet', ?, ?)",
               [now, now])
    db.execute("INSERT INTO photos (user_id, sha256, format, width, height, bytes, created_at) "
               "VALUES (1, 'abc', 'PNG', 4, 4, 10, ?)", [now])
    db.execute("INSERT INTO photo_concepts VALUES (1, 1)")
    db.execute("INSERT INTO episodes (user_id, photo_id, dialogue, created_at) VALUES (1, 1, ?, ?)",
               ['[{"role": "user", "text": "from v1"}]', now])
    db.execute("INSERT INTO episode_concepts VALUES (1, 1)")
    db.execute("INSERT INTO embeddings (user_id, photo_id, model_id, dim, vector) VALUES (1, 1, ?, 32, ?)",
               [MODEL, unit_vector(0).tobytes()])
    db.close()

    with Memory.open(home) as mem:
        assert schema_version(mem.store.db) == SCHEMA_VERSION
        steps = mem.store.rows("SELECT version FROM schema_migrations ORDER BY version")
        assert [s["version"] for s in steps] == list(range(1, SCHEMA_VERSION + 1))
        assert mem.history("ana")[0].episode.dialogue[0].text == "from v1"
        assert mem.search("ana", embedding=unit_vector(0), model_id=MODEL, k=1)[0].concepts == ("Bori",)
        mem.share_concept("ana", "Bori", mem.add_user("ben").name)  # v3 table works
        mem.cache_caption("ana", "c", model_id="m", prompt_version="1", photo_sha256="s", context_ids=[1])  # v2


def test_newer_schema_is_refused(home) -> None:
    home.mkdir(parents=True)
    conn = sqlite3.connect(home / "memory.db")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    conn.close()
    with pytest.raises(SchemaError, match="newer than this covip"):
        Memory.open(home)


def test_closed_memory_refuses_calls(home) -> None:
    mem = Memory.open(home)
    mem.close()
    mem.close()  # idempotent
    with pytest.raises(InputError, match="closed"):
        mem.users()
