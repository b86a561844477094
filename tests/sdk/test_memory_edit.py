"""Corrections by id (tag, untag, move a photo; update, forget an episode), concepts over HTTP, photos' original
file names, the schema migration that keeps them, and the one vocabulary with its aliases: through the Python
API, the CLI (CliRunner) and HTTP (a real uvicorn server), each edit's cascade checked (cached captions,
recall, history, sharing, raw bytes on disk), and every call tried with another user's ids and bad ids."""

from __future__ import annotations

import io
import json
import sqlite3
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner, Result

from covip.sdk import BundleError, ConflictError, InputError, Memory, NotFoundError
from covip.sdk.cli import cli
from covip.sdk.memory import SCHEMA_VERSION, migrate, schema_version
from tests.conftest import draw_photo, home_fingerprint, unit_vector
from tests.sdk.test_memory_bundle_hostile import tamper
from tests.sdk.test_memory_forget_scrub import files_containing

MODEL = "test/32"
CAPTION = {"model_id": "m", "prompt_version": "v1"}


def remember(mem: Memory, user: str, photo: Any, seed: int, dialogue: str | None = None, concepts=(), **kw):
    return mem.remember(user, photo, dialogue, list(concepts), embedding=unit_vector(seed), model_id=MODEL, **kw)


def cache(mem: Memory, user: str, caption: str, photo_ids: list[int], query: str) -> None:
    mem.cache_caption(user, caption, photo_sha256=query, context_ids=photo_ids, **CAPTION)


def cached(mem: Memory, user: str, photo_ids: list[int], query: str) -> str | None:
    return mem.cached_caption(user, photo_sha256=query, context_ids=photo_ids, **CAPTION)


def hit_for(mem: Memory, user: str, seed: int):
    return mem.recall(user, embedding=unit_vector(seed), model_id=MODEL, k=1)[0]


@pytest.fixture
def plain(home: Path):
    """A home without an embedder (every vector is given with model_id=MODEL): fast, nothing to build."""
    with Memory.open(home) as m:
        yield m


@pytest.fixture
def two(plain: Memory, photo_factory):
    """ana (photo 1 filed under Mina by mistake, photo 2 of Bori) and ben (one photo): returns the records."""
    plain.add_user("ana")
    plain.add_user("ben")
    wrong = remember(plain, "ana", photo_factory(1), 1, "User: Bori asleep on the sofa", ["Mina"],
                     taken_at="2024-05-01T10:00", place="home")
    bori = remember(plain, "ana", photo_factory(2), 2, "User: Bori at the Han river", ["Bori"])
    bens = remember(plain, "ben", photo_factory(3), 3, "User: ben's cat Toto", ["Toto"])
    return SimpleNamespace(mem=plain, wrong=wrong, bori=bori, bens=bens)


# --------------------------------------------------------------------------------------------- tags
def test_move_tag_untag_cascade_to_captions_recall_history(two) -> None:
    mem, wrong, bori = two.mem, two.wrong, two.bori
    cache(mem, "ana", "uses the wrong photo", [wrong.photo.id], "q1")
    cache(mem, "ana", "uses bori", [bori.photo.id], "q2")
    vectors_before = mem.store.scalar("SELECT count(*) FROM embeddings")
    assert hit_for(mem, "ana", 1).concepts == ("Mina",)

    moved = mem.move_photo("ana", wrong.photo.id, "Mina", "bori")  # names are case-insensitive
    assert (moved.concepts, moved.changed, moved.captions) == (("Bori",), True, 1)
    assert cached(mem, "ana", [wrong.photo.id], "q1") is None  # the caption that used it is gone
    assert cached(mem, "ana", [bori.photo.id], "q2") == "uses bori"  # the others stay
    hit = hit_for(mem, "ana", 1)
    assert hit.concepts == ("Bori",) and hit.episodes[0].concepts == ("Bori",)  # the dialogue moved too
    assert {h.episode.id for h in mem.history("ana", "Bori")} == {wrong.episode.id, bori.episode.id}
    assert mem.history("ana", "Mina") == []
    assert next(c for c in mem.concepts("ana") if c.name == "Mina").photo_count == 0  # the concept stays

    again = mem.tag_photo("ana", wrong.photo.id, "Bori")
    assert (again.changed, again.captions) == (False, 0)
    park = mem.tag_photo("ana", wrong.photo.id, "Park")  # created as needed, photo and dialogue tied
    assert park.concepts == ("Bori", "Park") and mem.history("ana", "Park")[0].episode.id == wrong.episode.id
    assert mem.photo_concepts("ana", wrong.photo.id) == ("Bori", "Park")
    assert mem.untag_photo("ana", wrong.photo.id, "PARK").concepts == ("Bori",)
    with pytest.raises(NotFoundError, match=r"not tagged 'Park' \(its concepts: 'Bori'\)"):
        mem.untag_photo("ana", wrong.photo.id, "Park")
    with pytest.raises(NotFoundError, match="not tagged 'Nobody'"):
        mem.move_photo("ana", wrong.photo.id, "Nobody", "Bori")
    with pytest.raises(ConflictError, match="to itself"):
        mem.move_photo("ana", wrong.photo.id, "Bori", "BORI")
    # by content too, like forget_photo
    assert mem.tag_photo("ana", wrong.photo.path.read_bytes(), "Sofa").concepts == ("Bori", "Sofa")
    # vectors never change; audit rows hold ids only
    assert mem.store.scalar("SELECT count(*) FROM embeddings") == vectors_before
    audit = " ".join(r["detail"] for r in mem.store.rows("SELECT detail FROM audit"))
    assert "Bori" not in audit and "Sofa" not in audit
    assert mem.verify().ok


def test_move_is_one_transaction(two, monkeypatch) -> None:
    """A failure after the untag rolls the untag back: the photo keeps its wrong concept, nothing half-done."""
    mem, wrong = two.mem, two.wrong
    mem.flush()
    before = home_fingerprint(mem.home)

    def boom(*_a: Any, **_k: Any) -> Any:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(mem._editor, "_tag", boom)
    with pytest.raises(Exception, match="disk I/O"):
        mem.move_photo("ana", wrong.photo.id, "Mina", "Bori")
    monkeypatch.undo()
    assert mem.photo_concepts("ana", wrong.photo.id) == ("Mina",)
    assert home_fingerprint(mem.home) == before


def test_sharing_follows_the_tags(two) -> None:
    mem, wrong = two.mem, two.wrong
    mem.share_concept("ana", "Bori", "ben")
    seen = {h.photo.id for h in mem.recall("ben", embedding=unit_vector(1), model_id=MODEL, k=10) if h.shared}
    assert wrong.photo.id not in seen  # filed under Mina: not shared
    mem.move_photo("ana", wrong.photo.id, "Mina", "Bori")
    shared = [h for h in mem.recall("ben", embedding=unit_vector(1), model_id=MODEL, k=10) if h.shared]
    assert wrong.photo.id in {h.photo.id for h in shared}
    assert "sofa" in next(h for h in shared if h.photo.id == wrong.photo.id).episodes[0].text
    mem.untag_photo("ana", wrong.photo.id, "Bori")
    assert wrong.photo.id not in {h.photo.id for h in mem.recall("ben", embedding=unit_vector(1), model_id=MODEL,
                                                                  k=10)}


# --------------------------------------------------------------------------------------------- episodes
def test_update_episode_fields_captions_and_the_photos_own_time_and_place(two) -> None:
    mem, wrong, bori = two.mem, two.wrong, two.bori
    cache(mem, "ana", "used it", [wrong.photo.id], "q")
    ep = mem.update_episode("ana", wrong.episode.id, dialogue="User: Bori asleep\nAssistant: So cute!",
                            place="Mapo")
    assert [t.text for t in ep.dialogue] == ["Bori asleep", "So cute!"] and ep.place == "Mapo"
    assert ep.taken_at == "2024-05-01T10:00:00"  # left out: kept
    assert cached(mem, "ana", [wrong.photo.id], "q") is None
    photo = mem.find_photo("ana", wrong.photo.id)
    assert photo.place == "Mapo"  # written with this dialogue, so it follows the correction
    assert hit_for(mem, "ana", 1).episodes[0].text == "User: Bori asleep\nAssistant: So cute!"
    ep = mem.update_episode("ana", wrong.episode.id, taken_at=None, place=None)  # None clears
    assert (ep.taken_at, ep.place) == (None, None)
    assert mem.find_photo("ana", wrong.photo.id).taken_at is None
    # a photo's own place that differs from the episode's stays the photo's
    mem.update_episode("ana", wrong.episode.id, place="home")
    later = remember(mem, "ana", wrong.photo.path.read_bytes(), 1, "User: on the sofa again", ["Mina"],
                     place="Busan")
    mem.update_episode("ana", later.episode.id, place="Daegu")
    assert mem.find_photo("ana", wrong.photo.id).place == "home"
    assert mem.update_episode("ana", bori.episode.id, place="Han river").place == "Han river"
    assert mem.find_photo("ana", bori.photo.id).place == "Han river"  # none before: written together
    with pytest.raises(InputError, match="at least one"):
        mem.update_episode("ana", wrong.episode.id)
    with pytest.raises(InputError, match="forget the episode"):
        mem.update_episode("ana", wrong.episode.id, dialogue=None)
    with pytest.raises(InputError, match="ISO-8601"):
        mem.update_episode("ana", wrong.episode.id, taken_at="last tuesday")
    assert mem.verify().ok


def test_forget_episode_keeps_the_photo(two) -> None:
    mem, bori = two.mem, two.bori
    second = remember(mem, "ana", bori.photo.path.read_bytes(), 2, "User: Bori again", ["Bori"])
    assert not second.new_photo
    cache(mem, "ana", "used it", [bori.photo.id], "q")
    report = mem.forget_episode("ana", bori.episode.id)
    assert (report.episodes, report.photos, report.vectors, report.captions, report.scrubbed) == (1, 0, 0, 1, True)
    assert [e.id for e in hit_for(mem, "ana", 2).episodes] == [second.episode.id]
    assert cached(mem, "ana", [bori.photo.id], "q") is None
    with pytest.raises(NotFoundError, match=f"no episode {bori.episode.id}"):
        mem.forget_episode("ana", bori.episode.id)
    assert Memory.delete_episode.__wrapped__ is Memory.forget_episode.__wrapped__
    mem.delete_episode("ana", second.episode.id)
    assert hit_for(mem, "ana", 2).episodes == () and mem.find_photo("ana", bori.photo.id)
    assert mem.verify().ok


@pytest.mark.parametrize("how", ["update", "forget"])
def test_old_dialogue_text_leaves_no_bytes_behind(home, photo_factory, how) -> None:
    secret = "zebra-umbrella-7731 lives at 42 Secret Lane"
    with Memory.open(home) as mem:
        mem.add_user("ana")
        for i in range(30):  # enough unrelated rows that the edited one shares its pages
            remember(mem, "ana", photo_factory(100 + i), 100 + i, f"User: ordinary day {i} " + "filler " * 20,
                     ["Mom"])
        done = remember(mem, "ana", photo_factory(7), 7, f"User: {secret}\nAssistant: noted, {secret}", ["Mom"],
                        place="Secret Lane")
        cache(mem, "ana", f"a caption repeating {secret}", [done.photo.id], "q")
        mem.flush()
        assert files_containing(home, secret.encode())  # the test can fail: the secret is on disk now
        if how == "update":
            mem.update_episode("ana", done.episode.id, dialogue="User: an ordinary walk", place="the park")
        else:
            assert mem.forget_episode("ana", done.episode.id).scrubbed
        assert files_containing(home, secret.encode()) == []
        assert files_containing(home, b"ordinary day 3")  # the rest is still there
        if how == "update":
            assert files_containing(home, b"an ordinary walk")
            assert files_containing(home, b"Secret Lane") == []  # the photo's place followed the episode's
        else:
            assert mem.find_photo("ana", done.photo.id).place == "Secret Lane"  # the photo keeps its own
        assert mem.find_photo("ana", done.photo.id)  # the photo stays either way
        assert mem.verify().ok
    assert files_containing(home, secret.encode()) == []


# --------------------------------------------------------------------------------------------- ids
def _edits(photo: Any, episode: Any) -> dict[str, Any]:
    return {
        "tag_photo": lambda m: m.tag_photo("ana", photo, "Bori"),
        "untag_photo": lambda m: m.untag_photo("ana", photo, "Toto"),
        "move_photo": lambda m: m.move_photo("ana", photo, "Toto", "Bori"),
        "photo_concepts": lambda m: m.photo_concepts("ana", photo),
        "update_episode": lambda m: m.update_episode("ana", episode, dialogue="User: mine now", place="x"),
        "forget_episode": lambda m: m.forget_episode("ana", episode),
    }


def test_another_users_ids_are_not_found_and_change_nothing(two) -> None:
    mem, bens = two.mem, two.bens
    mem.flush()
    before = home_fingerprint(mem.home)
    missing = 10**9
    for name, call in _edits(bens.photo.id, bens.episode.id).items():
        with pytest.raises(NotFoundError) as theirs:
            call(mem)
        with pytest.raises(NotFoundError) as nobody:  # the same message as an id that does not exist
            _edits(missing, missing)[name](mem)
        assert str(theirs.value).replace(str(bens.photo.id), "N").replace(str(bens.episode.id), "N") == \
            str(nobody.value).replace(str(missing), "N"), name
        assert "Toto" not in str(theirs.value) and "cat" not in str(theirs.value)
    # ben's photo by content is not ana's either
    with pytest.raises(NotFoundError):
        mem.tag_photo("ana", bens.photo.path.read_bytes(), "Bori")
    assert home_fingerprint(mem.home) == before
    assert hit_for(mem, "ben", 3).concepts == ("Toto",)


@pytest.mark.parametrize("bad", [True, False, -1, 0, 2**63, 2**70, "1", 1.5, None, [1], b"1"])
def test_bad_ids_are_input_errors_and_change_nothing(two, bad) -> None:
    mem = two.mem
    mem.flush()
    before = home_fingerprint(mem.home)
    for name in ("update_episode", "forget_episode"):
        with pytest.raises(InputError, match="episode id"):
            _edits(bad, bad)[name](mem)
    for name in ("tag_photo", "untag_photo", "move_photo", "photo_concepts"):
        with pytest.raises((InputError, NotFoundError)):  # find_photo: an id, else a photo's path or bytes
            _edits(bad, bad)[name](mem)
    assert home_fingerprint(mem.home) == before


def test_hostile_names_and_users(two) -> None:
    mem, wrong = two.mem, two.wrong
    for bad in ("", " ", "x" * 201, "a\nb", None, 5):
        with pytest.raises(InputError):
            mem.tag_photo("ana", wrong.photo.id, bad)
        with pytest.raises(InputError):
            mem.move_photo("ana", wrong.photo.id, "Mina", bad)
    with pytest.raises(NotFoundError, match="no user named 'zed'"):
        mem.tag_photo("zed", wrong.photo.id, "Bori")
    with pytest.raises(NotFoundError):
        mem.update_episode("zed", wrong.episode.id, place="x")
    with pytest.raises(InputError, match="dialogue turn 1"):
        mem.update_episode("ana", wrong.episode.id, dialogue=[{"role": "system", "text": "x"}])
    with pytest.raises(InputError, match="limit"):
        mem.update_episode("ana", wrong.episode.id, dialogue="x" * 100_001)
    assert mem.photo_concepts("ana", wrong.photo.id) == ("Mina",)


# --------------------------------------------------------------------------------------------- original names
def test_original_names_kept_from_paths_not_bytes(plain: Memory, tmp_path: Path) -> None:
    plain.add_user("ana")
    folder = tmp_path / "in"
    folder.mkdir()
    draw_photo(1).save(folder / "Bori at the river.png")
    draw_photo(2).save(folder / "two.png")
    named = remember(plain, "ana", folder / "Bori at the river.png", 1, "hi")
    assert named.photo.original_name == "Bori at the river.png"
    buf = io.BytesIO()
    draw_photo(3).save(buf, "PNG")
    assert remember(plain, "ana", buf.getvalue(), 3, "bytes").photo.original_name is None
    assert remember(plain, "ana", draw_photo(4), 4, "an image").photo.original_name is None
    # bytes first, the file later: the name is filled in; never replaced once known
    assert remember(plain, "ana", (folder / "two.png").read_bytes(), 2, "b").photo.original_name is None
    assert remember(plain, "ana", folder / "two.png", 2, "again").photo.original_name == "two.png"
    (folder / "renamed.png").write_bytes((folder / "two.png").read_bytes())
    assert remember(plain, "ana", folder / "renamed.png", 2, "c").photo.original_name == "two.png"
    explicit = remember(plain, "ana", draw_photo(5), 5, "x", original_name="upload.jpg")
    assert explicit.photo.original_name == "upload.jpg"
    for bad in ("../x.png", "a/b.png", "a\\b.png", "", ".", "..", " x.png", "x" * 256, "a\x00b", "a\nb", 5, b"x"):
        with pytest.raises(InputError):
            remember(plain, "ana", draw_photo(6), 6, "x", original_name=bad)
    # a file whose name is no printable name is still remembered, without a name
    odd = folder / "tab\there.png"
    draw_photo(7).save(odd, "PNG")
    assert remember(plain, "ana", odd, 7, "odd").photo.original_name is None
    # shown everywhere a photo is
    assert hit_for(plain, "ana", 1).photo.original_name == "Bori at the river.png"
    assert {h.photo.original_name for h in plain.history("ana")} >= {"Bori at the river.png", "two.png", None}
    assert "upload.jpg" in {p.original_name for p in plain.photos("ana")}
    assert plain.verify().ok


def test_original_names_travel_in_bundles_and_old_bundles_still_import(plain: Memory, tmp_path: Path,
                                                                       photo_factory) -> None:
    plain.add_user("ana")
    remember(plain, "ana", photo_factory(1), 1, "User: one", ["Bori"])
    remember(plain, "ana", draw_photo(2), 2, "User: two", ["Bori"])
    bundle = plain.export_memory("ana", tmp_path / "ana.zip")
    with Memory.open(tmp_path / "other") as other:
        other.import_memory(bundle)
        assert sorted(str(p.original_name) for p in other.photos("ana")) == ["None", "p1.png"]
        # a bundle older than names (no original_name, schema 4) imports, with no names
        old = tamper(bundle, tmp_path / "old.zip",
                     rows=lambda d: [p.pop("original_name") for p in d["photos"]],
                     manifest=lambda m: m.update(schema_version=4))
        other.import_memory(old, user="ana-old")
        assert [p.original_name for p in other.photos("ana-old")] == [None, None]
        # merging the newer bundle into it fills the names in
        other.import_memory(bundle, user="ana-old", merge=True)
        assert sorted(str(p.original_name) for p in other.photos("ana-old")) == ["None", "p1.png"]
        before = home_fingerprint(other.home)
        for bad in ("../../etc/passwd", "a/b", "", 7, "x" * 300, "\x00"):
            hostile = tamper(bundle, tmp_path / "hostile.zip",
                             rows=lambda d, bad=bad: d["photos"][0].update(original_name=bad))
            with pytest.raises(BundleError, match="photo 1"):
                other.import_memory(hostile, user="eve")
        assert home_fingerprint(other.home) == before


def test_migrates_a_version_4_database_and_keeps_its_rows(home: Path, photo_factory) -> None:
    import sqlite_utils

    assert SCHEMA_VERSION == 5
    home.mkdir(parents=True)
    db = sqlite_utils.Database(sqlite3.connect(home / "memory.db", isolation_level=None))
    assert migrate(db, target=4) == [1, 2, 3, 4]
    assert "original_name" not in {c.name for c in db["photos"].columns}
    now = "2024-01-01T00:00:00+00:00"
    db.execute("INSERT INTO users (name, created_at) VALUES ('ana', ?)", [now])
    db.execute("INSERT INTO photos (user_id, sha256, format, width, height, bytes, place, created_at) "
               "VALUES (1, 'abc', 'PNG', 4, 4, 10, 'Seoul', ?)", [now])
    db.execute("INSERT INTO episodes (user_id, photo_id, dialogue, created_at) VALUES (1, 1, ?, ?)",
               ['[{"role": "user", "text": "from v4"}]', now])
    db.execute("INSERT INTO embeddings (user_id, photo_id, model_id, dim, vector) VALUES (1, 1, ?, 32, ?)",
               [MODEL, unit_vector(0).tobytes()])
    db.close()
    with Memory.open(home) as mem:
        assert schema_version(mem.store.db) == 5
        assert [s["version"] for s in mem.store.rows("SELECT version FROM schema_migrations")] == [1, 2, 3, 4, 5]
        old = mem.history("ana")[0]
        assert (old.episode.dialogue[0].text, old.photo.place, old.photo.original_name) == ("from v4", "Seoul", None)
        assert mem.tag_photo("ana", old.photo.id, "Bori").concepts == ("Bori",)
        assert remember(mem, "ana", photo_factory(1), 1, "new").photo.original_name == "p1.png"


# --------------------------------------------------------------------------------------------- vocabulary
def test_python_aliases_are_the_canonical_calls(two, tmp_path: Path) -> None:
    mem = two.mem
    for alias, canonical in (("search", "recall"), ("export_user", "export_memory"),
                             ("import_bundle", "import_memory"), ("retag_photo", "move_photo"),
                             ("delete_episode", "forget_episode")):
        assert getattr(Memory, alias).__wrapped__ is getattr(Memory, canonical).__wrapped__, alias
    by_search = mem.search("ana", embedding=unit_vector(1), model_id=MODEL, k=2)
    assert by_search == mem.recall("ana", embedding=unit_vector(1), model_id=MODEL, k=2)
    path = mem.export_user("ana", tmp_path / "a.zip")
    assert mem.import_bundle(path, user="ana2")["photos"] == 2
    assert mem.retag_photo("ana", two.wrong.photo.id, "Mina", "Bori").concepts == ("Bori",)


# --------------------------------------------------------------------------------------------- CLI
def run(home: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--home", str(home), *args], catch_exceptions=False)


def ok(result: Result) -> Result:
    assert result.exit_code == 0, f"exit {result.exit_code}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


def fail(result: Result, code: int, *needles: str) -> Result:
    assert result.exit_code == code, f"exit {result.exit_code}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr
    return result


@pytest.fixture
def cli_home(tmp_path: Path, photo_factory) -> SimpleNamespace:
    """An initialized home (tiny embedder) where ana and ben each remembered photos through the CLI."""
    h = tmp_path / "cli-home"
    ok(run(h, "init", "--embedder", "tiny"))
    for user in ("ana", "ben"):
        ok(run(h, "user", "add", user))
    ok(run(h, "remember", str(photo_factory(1)), "-u", "ana", "-c", "Mina", "-d", "User: Bori on the sofa",
           "--place", "home"))
    ok(run(h, "remember", str(photo_factory(2)), "-u", "ana", "-c", "Bori", "-d", "User: Bori at the river"))
    ok(run(h, "remember", str(photo_factory(3)), "-u", "ben", "-c", "Toto", "-d", "User: ben's cat"))
    items = {u: json.loads(ok(run(h, "history", "-u", u, "--json")).stdout)["items"] for u in ("ana", "ben")}
    return SimpleNamespace(home=h, ana=items["ana"], ben=items["ben"][0], photo=photo_factory(1))


def test_cli_corrections_by_id(cli_home) -> None:
    h = cli_home.home
    sofa = next(i for i in cli_home.ana if "sofa" in i["episode"]["dialogue"][0]["text"])
    pid, eid = str(sofa["photo"]["id"]), str(sofa["episode"]["id"])
    assert sofa["photo"]["original_name"] == "p1.png"
    history_text = ok(run(h, "history", "-u", "ana")).stdout
    assert f'photo {pid} "p1.png"' in history_text and f"episode {eid}" in history_text
    listed = json.loads(ok(run(h, "photo", "list", "-u", "ana", "--json")).stdout)["photos"]
    assert {p["original_name"]: p["concepts"] for p in listed} == {"p1.png": ["Mina"], "p2.png": ["Bori"]}

    doc = json.loads(ok(run(h, "photo", "move", pid, "--from", "Mina", "--to", "Bori", "-u", "ana",
                            "--json")).stdout)
    assert doc["concepts"] == ["Bori"] and doc["changed"] and doc["photo"]["original_name"] == "p1.png"
    assert "already" in ok(run(h, "photo", "tag", pid, "Bori", "-u", "ana")).stdout
    assert "Bori, Park" in ok(run(h, "photo", "tag", str(cli_home.photo), "Park", "-u", "ana")).stdout  # by file
    assert "concepts now: Bori" in ok(run(h, "photo", "untag", pid, "Park", "-u", "ana")).stdout
    fail(run(h, "photo", "untag", pid, "Park", "-u", "ana"), 3, "not tagged 'Park'")
    fail(run(h, "photo", "move", pid, "--from", "Bori", "--to", "bori", "-u", "ana"), 4, "itself")

    out = ok(run(h, "episode", "update", eid, "-u", "ana", "--place", "Mapo", "-d", "User: Bori asleep")).stdout
    assert "updated episode" in out and "at Mapo" in out and "Bori asleep" in out
    doc = json.loads(ok(run(h, "episode", "edit", eid, "-u", "ana", "--no-place", "--json")).stdout)  # alias
    assert doc["episode"]["place"] is None and doc["episode"]["dialogue"] == [{"role": "user", "text": "Bori asleep"}]
    assert run(h, "episode", "update", eid, "-u", "ana").exit_code == 2  # nothing to change
    assert run(h, "episode", "update", eid, "-u", "ana", "--place", "x", "--no-place").exit_code == 2
    assert "edit" not in ok(run(h, "episode", "--help")).stdout.split("Commands:")[1]

    recall = ok(run(h, "recall", str(cli_home.photo), "-u", "ana", "-k", "1")).stdout
    assert f'photo {pid} "p1.png"' in recall and "Bori asleep" in recall
    fail(run(h, "forget", "-u", "ana", "--episode", eid), 2, "--yes")
    doc = json.loads(ok(run(h, "forget", "-u", "ana", "--episode", eid, "--yes", "--json")).stdout)
    assert doc["forgot"]["episodes"] == 1 and doc["forgot"]["photos"] == 0
    fail(run(h, "forget", "-u", "ana", "--episode", eid, "--yes"), 3, f"no episode {eid}")
    assert run(h, "forget", "-u", "ana", "--episode", eid, "--photo", pid, "--yes").exit_code == 2
    assert ok(run(h, "verify")).stdout.strip().endswith("0 warnings")


def test_cli_refuses_other_users_and_bad_ids(cli_home) -> None:
    h, ben = cli_home.home, cli_home.ben
    bpid, beid = str(ben["photo"]["id"]), str(ben["episode"]["id"])
    before = ok(run(h, "history", "-u", "ben", "--json")).stdout
    fail(run(h, "photo", "tag", bpid, "Bori", "-u", "ana"), 3, "no remembered photo")
    fail(run(h, "photo", "untag", bpid, "Toto", "-u", "ana"), 3)
    fail(run(h, "photo", "move", bpid, "--from", "Toto", "--to", "Bori", "-u", "ana"), 3)
    fail(run(h, "episode", "update", beid, "-u", "ana", "--place", "x"), 3, "no episode")
    fail(run(h, "forget", "-u", "ana", "--episode", beid, "--yes"), 3, "no episode")
    for bad in ("-1", "0", "99999999999999999999999", "abc", "1.5"):
        assert run(h, "episode", "update", bad, "-u", "ana", "--place", "x").exit_code == 2, bad
        assert run(h, "forget", "-u", "ana", "--episode", bad, "--yes").exit_code == 2, bad
    fail(run(h, "photo", "tag", "1000000000", "Bori", "-u", "ana"), 3)
    fail(run(h, "photo", "tag", "99999999999999999999999", "Bori", "-u", "ana"), 2, "out of range")
    fail(run(h, "photo", "tag", "../../etc/passwd", "Bori", "-u", "ana"), 2)
    fail(run(h, "photo", "tag", "1", "Bori", "-u", "nobody"), 3, "no user named 'nobody'")
    assert ok(run(h, "history", "-u", "ben", "--json")).stdout == before


def test_cli_aliases_work_and_are_hidden(cli_home, tmp_path: Path) -> None:
    h = cli_home.home
    main_help = ok(CliRunner().invoke(cli, ["--help"])).stdout.split("Commands:")[1]
    for name in ("search", "export-user", "import-bundle"):
        assert f"  {name} " not in main_help
    for name in ("recall", "export-memory", "import-memory", "photo", "episode"):
        assert f"  {name} " in main_help
    canonical = json.loads(ok(run(h, "recall", str(cli_home.photo), "-u", "ana", "--json")).stdout)["hits"]
    alias = json.loads(ok(run(h, "search", str(cli_home.photo), "-u", "ana", "--json")).stdout)["hits"]
    assert alias == canonical
    assert "Alias of `covip recall`" in ok(run(h, "search", "--help")).stdout
    ok(run(h, "export-user", "-u", "ana", str(tmp_path / "a.zip")))
    ok(run(h, "import-bundle", str(tmp_path / "a.zip"), "--user", "ana2"))
    names = {p["original_name"] for p in json.loads(ok(run(h, "photo", "list", "-u", "ana2", "--json")).stdout)["photos"]}
    assert names == {"p1.png", "p2.png"}


# --------------------------------------------------------------------------------------------- HTTP
class StubAssistant:
    """What the server needs of an Assistant for the memory routes: the memory, a lock, a model name."""

    def __init__(self, memory: Memory) -> None:
        self.memory = memory
        self._lock = threading.RLock()
        self.engine = SimpleNamespace(model_id="stub")
        self.cag = SimpleNamespace(config=SimpleNamespace(answer=SimpleNamespace(max_new_tokens=4),
                                                          photo_max_side=None))
        self.meaningless = True


@pytest.fixture
def api(home: Path, tiny_embedder):
    """A real uvicorn server on the memory routes, with httpx; ana has two photos (one filed wrongly), ben one."""
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("fastapi")
    from covip.sdk.server import BackgroundServer, ServeConfig
    from tests.sdk.serve_util import png

    with Memory.open(home, embedder=tiny_embedder) as mem, \
            BackgroundServer(StubAssistant(mem), ServeConfig(port=0)) as srv, \
            httpx.Client(base_url=srv.url, timeout=60) as client:
        made = {}
        for key, (user, name, variant, filename, concept, dialogue) in {
            "wrong": ("ana", "Bori", 0, "../../sofa.png", "Mina", "User: Bori on the sofa"),
            "bori": ("ana", "Bori", 1, "C:\\Users\\ana\\river.png", "Bori", "User: Bori at the river"),
            "bens": ("ben", "Mom", 0, "toto.png", "Toto", "User: ben's cat"),
        }.items():
            r = client.post(f"/v1/users/{user}/memories", data={"dialogue": dialogue, "concepts": [concept],
                                                                 "place": "Seoul"},
                            files={"photo": (filename, png(name, variant), "image/png")})
            assert r.status_code == 201, r.text
            made[key] = r.json()
        yield SimpleNamespace(client=client, mem=mem, png=png, **made)


def err(r: Any, status: int, *needles: str) -> None:
    assert r.status_code == status, (r.status_code, r.text)
    message = r.json()["error"]["message"]
    for needle in needles:
        assert needle in message, message


def test_http_original_names_history_and_tag_routes(api) -> None:
    c, wrong = api.client, api.wrong
    pid, eid = wrong["photo"]["id"], wrong["episode"]["id"]
    assert wrong["photo"]["original_name"] == "sofa.png"  # only the base name of what the client sent
    assert api.bori["photo"]["original_name"] == "river.png"
    items = c.get("/v1/users/ana/history").json()["data"]
    assert {i["episode"]["id"]: i["photo"]["original_name"] for i in items} == {
        eid: "sofa.png", api.bori["episode"]["id"]: "river.png"}
    assert len(c.get("/v1/users/ana/history", params={"concept": "mina", "limit": 5}).json()["data"]) == 1
    err(c.get("/v1/users/ana/history", params={"concept": "Nobody"}), 404, "Nobody")
    err(c.get("/v1/users/ana/history", params={"limit": 0}), 400)

    api.mem.cache_caption("ana", "uses it", photo_sha256="q", context_ids=[pid], **CAPTION)
    moved = c.post(f"/v1/users/ana/photos/{pid}/move", json={"from_concept": "Mina", "to_concept": "Bori"}).json()
    assert (moved["concepts"], moved["changed"], moved["captions_dropped"]) == (["Bori"], True, 1)
    assert cached(api.mem, "ana", [pid], "q") is None
    tagged = c.post(f"/v1/users/ana/photos/{pid}/concepts", json={"concept": "Park"})
    assert tagged.status_code == 200 and tagged.json()["concepts"] == ["Bori", "Park"]
    assert c.post(f"/v1/users/ana/photos/{pid}/concepts", json={"concept": "Park"}).json()["changed"] is False
    assert c.delete(f"/v1/users/ana/photos/{pid}/concepts/park").json()["concepts"] == ["Bori"]
    err(c.delete(f"/v1/users/ana/photos/{pid}/concepts/Park"), 404, "not tagged")
    err(c.post(f"/v1/users/ana/photos/{pid}/move", json={"from_concept": "Bori", "to_concept": "BORI"}), 409)
    err(c.post(f"/v1/users/ana/photos/{pid}/concepts", json={"concept": ""}), 400)
    err(c.post(f"/v1/users/ana/photos/{pid}/concepts", json={}), 400)
    hits = c.post("/v1/users/ana/recall", files={"photo": ("q.png", api.png("Bori", 0), "image/png")},
                  data={"k": "1"}).json()["data"]
    assert hits[0]["photo"]["id"] == pid and hits[0]["concepts"] == ["Bori"]
    assert hits[0]["photo"]["original_name"] == "sofa.png"


def test_http_episode_update_and_forget(api) -> None:
    c, eid, pid = api.client, api.wrong["episode"]["id"], api.wrong["photo"]["id"]
    r = c.patch(f"/v1/users/ana/episodes/{eid}", json={"dialogue": "User: Bori asleep", "place": "Mapo"})
    assert r.status_code == 200, r.text
    assert r.json()["episode"]["dialogue"] == "User: Bori asleep" and r.json()["episode"]["place"] == "Mapo"
    turns = [{"role": "user", "text": "Bori asleep"}, {"role": "assistant", "text": "Cute!"}]
    assert c.patch(f"/v1/users/ana/episodes/{eid}", json={"dialogue": turns}).json()["episode"]["turns"] == turns
    cleared = c.patch(f"/v1/users/ana/episodes/{eid}", json={"place": None}).json()["episode"]
    assert cleared["place"] is None and cleared["turns"] == turns  # left out: kept
    err(c.patch(f"/v1/users/ana/episodes/{eid}", json={}), 400, "at least one")
    err(c.patch(f"/v1/users/ana/episodes/{eid}", json={"dialogue": None}), 400, "forget the episode")
    err(c.patch(f"/v1/users/ana/episodes/{eid}", json={"taken_at": "soon"}), 400, "ISO")
    err(c.patch(f"/v1/users/ana/episodes/{eid}", json={"dialogue": [{"role": "system", "text": "x"}]}), 400)
    gone = c.delete(f"/v1/users/ana/episodes/{eid}").json()
    assert gone["forgot"]["episodes"] == 1 and gone["forgot"]["photos"] == 0 and gone["forgot"]["scrubbed"]
    err(c.delete(f"/v1/users/ana/episodes/{eid}"), 404, f"no episode {eid}")
    assert c.get(f"/v1/users/ana/photos/{pid}").status_code == 200  # the photo stays


def test_http_other_users_ids_and_bad_ids(api) -> None:
    c, bens = api.client, api.bens
    bpid, beid = bens["photo"]["id"], bens["episode"]["id"]
    before = c.get("/v1/users/ben/history").json()
    for method, path, body in (
        ("POST", f"/v1/users/ana/photos/{bpid}/concepts", {"concept": "Bori"}),
        ("DELETE", f"/v1/users/ana/photos/{bpid}/concepts/Toto", None),
        ("POST", f"/v1/users/ana/photos/{bpid}/move", {"from_concept": "Toto", "to_concept": "Bori"}),
        ("PATCH", f"/v1/users/ana/episodes/{beid}", {"place": "mine"}),
        ("DELETE", f"/v1/users/ana/episodes/{beid}", None),
    ):
        r = c.request(method, path, json=body)
        err(r, 404)
        assert "Toto" not in r.text and "cat" not in r.text
    assert c.get("/v1/users/ben/history").json() == before
    for bad in ("-1", "0", str(2**63), "abc", "1.5"):
        err(c.patch(f"/v1/users/ana/episodes/{bad}", json={"place": "x"}), 400)
        err(c.delete(f"/v1/users/ana/episodes/{bad}"), 400)
        err(c.post(f"/v1/users/ana/photos/{bad}/concepts", json={"concept": "x"}), 400)
    err(c.delete(f"/v1/users/ana/episodes/{10**9}"), 404)
    err(c.patch(f"/v1/users/nobody/episodes/{beid}", json={"place": "x"}), 404, "nobody")
    err(c.post(f"/v1/users/ana/photos/{api.wrong['photo']['id']}/concepts", json={"concept": "x" * 201}), 400)
    assert c.get("/v1/users/ben/history").json() == before


def test_http_concept_routes(api) -> None:
    c = api.client
    r = c.post("/v1/users/ana/concepts", json={"name": "Rex", "kind": "pet", "notes": "a dog"})
    assert r.status_code == 201 and r.json() == {"name": "Rex", "kind": "pet", "notes": "a dog", "owner": "ana",
                                                 "photo_count": 0}
    err(c.post("/v1/users/ana/concepts", json={"name": "rex"}), 409, "already has")
    err(c.post("/v1/users/ana/concepts", json={"name": "Cat", "kind": "alien"}), 400)
    assert c.patch("/v1/users/ana/concepts/Rex", json={"name": "Rexy"}).json()["name"] == "Rexy"
    changed = c.patch("/v1/users/ana/concepts/rexy", json={"name": "Rex", "kind": "object", "notes": ""}).json()
    assert (changed["name"], changed["kind"], changed["notes"]) == ("Rex", "object", "")
    err(c.patch("/v1/users/ana/concepts/Rex", json={}), 400, "at least one")
    err(c.patch("/v1/users/ana/concepts/Rex", json={"name": "Bori"}), 409, "merge")
    err(c.patch("/v1/users/ana/concepts/Nobody", json={"kind": "pet"}), 404)
    merged = c.post("/v1/users/ana/concepts/Bori/merge", json={"sources": ["Mina", "Rex"]}).json()
    assert merged["name"] == "Bori" and merged["photo_count"] == 2
    assert {x["name"] for x in c.get("/v1/users/ana/concepts").json()["data"]} == {"Bori"}
    err(c.post("/v1/users/ana/concepts/Bori/merge", json={"sources": ["Bori"]}), 409, "itself")
    err(c.post("/v1/users/ana/concepts/Bori/merge", json={"sources": []}), 400)
    err(c.post("/v1/users/ana/concepts/Toto/merge", json={"sources": ["Bori"]}), 404)  # ben's concept
    # sharing: ben sees ana's Bori photos only while shared
    query = {"files": {"photo": ("q.png", api.png("Bori", 1), "image/png")}, "data": {"k": "5"}}
    assert not any(h["shared"] for h in c.post("/v1/users/ben/recall", **query).json()["data"])
    assert c.post("/v1/users/ana/concepts/Bori/shares/ben").json()["shared"] is True
    shared = [h for h in c.post("/v1/users/ben/recall", **query).json()["data"] if h["shared"]]
    assert shared and all(h["photo"]["url"] is None for h in shared)
    ben_history = c.get("/v1/users/ben/history", params={"concept": "Bori"}).json()["data"]
    assert ben_history and all(i["photo"]["url"] is None for i in ben_history)
    err(c.post("/v1/users/ana/concepts/Bori/shares/nobody"), 404, "nobody")
    err(c.post("/v1/users/ana/concepts/Bori/shares/ana"), 409, "themselves")
    assert c.delete("/v1/users/ana/concepts/Bori/shares/ben").json()["shared"] is False
    assert not any(h["shared"] for h in c.post("/v1/users/ben/recall", **query).json()["data"])


def test_http_aliases_work_and_stay_out_of_the_schema(api) -> None:
    c = api.client
    paths = set(c.get("/openapi.json").json()["paths"])
    assert {"/v1/users/{user}/recall", "/v1/users/{user}/export-memory", "/v1/import-memory",
            "/v1/users/{user}/history", "/v1/users/{user}/episodes/{episode_id}",
            "/v1/users/{user}/photos/{photo_id}/move"} <= paths
    assert not {"/v1/users/{user}/search", "/v1/users/{user}/export", "/v1/import"} & paths
    query = {"files": {"photo": ("q.png", api.png("Bori", 0), "image/png")}, "data": {"k": "2"}}
    assert c.post("/v1/users/ana/search", **query).json() == c.post("/v1/users/ana/recall", **query).json()
    new, old = c.get("/v1/users/ana/export-memory"), c.get("/v1/users/ana/export")
    assert new.status_code == old.status_code == 200 and new.headers["content-type"] == "application/zip"
    files = {"bundle": ("ana.covip.zip", new.content, "application/zip")}
    assert c.post("/v1/import-memory", files=files, data={"user": "ana2"}).json()["imported"]["photos"] == 2
    assert c.post("/v1/import", files=files, data={"user": "ana3"}).json()["imported"]["photos"] == 2
    names = {p["original_name"] for p in c.get("/v1/users/ana3/photos").json()["data"]}
    assert names == {"sofa.png", "river.png"}

