"""Encryption at rest: an encrypted home works like a plain one, and leaks nothing to a thief with the disk.

Every test here failed before encryption existed (no ``key=``, no ``--encrypt``, plaintext files).
"""

from __future__ import annotations

import json
import secrets
import sys
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from covip.sdk import Memory
from covip.sdk.cli import cli
from covip.sdk.errors import (
    DecryptError,
    EncryptionError,
    MissingExtraError,
    MissingKeyError,
    StoreError,
    WrongKeyError,
)
from covip.sdk.memory import crypto
from tests.sdk.test_memory_forget_scrub import files_containing, image_needles

SECRET = "zebra-umbrella-7731 lives at 42 Secret Lane"
PLACE = "Secret Lane"
CAPTION = "a caption naming quokka-4417"


@pytest.fixture(autouse=True)
def no_env_keys(monkeypatch):
    monkeypatch.delenv(crypto.PASSPHRASE_ENV, raising=False)
    monkeypatch.delenv(crypto.KEY_ENV, raising=False)


@pytest.fixture
def raw_key() -> bytes:
    return secrets.token_bytes(32)


def snapshot(home: Path) -> dict[str, tuple]:
    """Every path under the home with its kind, bytes and mode: equal snapshots mean nothing changed."""
    return {str(p.relative_to(home)): (p.is_dir(), p.read_bytes() if p.is_file() else None, p.stat().st_mode)
            for p in sorted(home.rglob("*"))}


def fill(mem: Memory, photo_factory, secret_photo: Path) -> None:
    mem.add_user("ana")
    for i in range(5):
        mem.remember("ana", photo_factory(300 + i), f"User: ordinary day {i}", concepts=["Mom"])
    mem.remember("ana", secret_photo, f"User: {SECRET}\nAssistant: noted", concepts=["Secret"], place=PLACE)
    mem.cache_caption("ana", CAPTION, model_id="m", prompt_version="v", photo_sha256="ab" * 32,
                      context_ids=[1])


def run(home: Path, *args: str, env: dict | None = None) -> Result:
    return CliRunner().invoke(cli, ["--home", str(home), *args], env=env, catch_exceptions=False)


def ok(result: Result) -> Result:
    assert result.exit_code == 0, f"exit {result.exit_code}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


# ---------------------------------------------------------------------------------------------- the API
def test_encrypted_home_does_everything_a_plain_one_does(home, tiny_embedder, photo_factory, raw_key, tmp_path):
    secret_photo = photo_factory(11)
    with Memory.open(home, embedder=tiny_embedder, key=raw_key) as mem:
        assert mem.encrypted
        fill(mem, photo_factory, secret_photo)
        hits = mem.search("ana", image=secret_photo, k=2)
        assert hits[0].episodes[0].text.startswith(f"User: {SECRET}") and hits[0].photo.place == PLACE
        assert mem.read_photo_bytes(hits[0].photo) == secret_photo.read_bytes()
        assert mem.load_memory_photo(hits[0].photo.id).sha256 == hits[0].photo.sha256
        assert [h.episode.concepts for h in mem.history("ana", "Secret")] == [("Secret",)]
        assert mem.cached_caption("ana", model_id="m", prompt_version="v", photo_sha256="ab" * 32,
                                  context_ids=[1]) == CAPTION
        assert mem.verify().ok
        assert mem.repair().ok
        report = mem.forget_photo("ana", photo_factory(300))
        assert report.photos == 1 and report.files == 1
    assert (home / crypto.KEYFILE).is_file()
    assert not (home / "memory.db").read_bytes().startswith(b"SQLite format 3")
    assert all(p.suffix == ".enc" for p in (home / "photos").rglob("*") if p.is_file())
    with Memory.open(home, embedder=tiny_embedder, key=raw_key) as mem:  # and it opens again
        assert len(mem.photos("ana")) == 5 and mem.verify().ok
        assert mem.search("ana", image=secret_photo, k=1)[0].photo.sha256 == hits[0].photo.sha256


def test_grep_over_the_whole_home_finds_no_text_place_caption_or_photo(home, tiny_embedder, photo_factory,
                                                                        raw_key, tmp_path):
    secret_photo = photo_factory(11)
    needles = [SECRET.encode(), PLACE.encode(), b"quokka-4417", *image_needles(secret_photo)]
    plain_home = tmp_path / "plain"
    with Memory.open(plain_home, embedder=tiny_embedder) as mem:  # the check can fail: a plain home leaks
        fill(mem, photo_factory, secret_photo)
        mem.flush()
        assert all(files_containing(plain_home, n) for n in needles)
    with Memory.open(home, embedder=tiny_embedder, key=raw_key) as mem:
        fill(mem, photo_factory, secret_photo)
        mem.flush()
        assert (home / "memory.db-wal").stat().st_size > 0  # uncheckpointed pages sit in the WAL
        for n in needles:
            assert files_containing(home, n) == [], n[:20]
        assert mem.store.checkpoint_truncate()
        for n in needles:
            assert files_containing(home, n) == [], n[:20]
    for n in needles:
        assert files_containing(home, n) == [], n[:20]


def test_wrong_or_missing_key_fails_clearly_and_changes_nothing(home, tiny_embedder, photo_factory, raw_key):
    with Memory.open(home, embedder=tiny_embedder, key=raw_key) as mem:
        fill(mem, photo_factory, photo_factory(11))
    before = snapshot(home)
    with pytest.raises(WrongKeyError, match="does not unlock"):
        Memory.open(home, embedder=tiny_embedder, key=secrets.token_bytes(32))
    with pytest.raises(WrongKeyError, match="raw 32-byte key, not a passphrase"):
        Memory.open(home, embedder=tiny_embedder, key="a passphrase guess")
    with pytest.raises(MissingKeyError, match="encrypted and no key was given"):
        Memory.open(home, embedder=tiny_embedder)
    with pytest.raises(MissingKeyError):
        Memory.start_fresh(home)
    assert snapshot(home) == before  # no file written, no new database, no temp file left


def test_a_database_from_another_home_is_refused(tmp_path, tiny_embedder, photo_factory, raw_key):
    a, b = tmp_path / "a", tmp_path / "b"
    for h in (a, b):
        with Memory.open(h, embedder=tiny_embedder, key=raw_key) as mem:
            mem.add_user("ana")
    (a / "memory.db").write_bytes((b / "memory.db").read_bytes())  # same key, other home's data key
    with pytest.raises(WrongKeyError, match="does not belong"):
        Memory.open(a, embedder=tiny_embedder, key=raw_key)


def test_a_key_for_a_plain_home_is_refused_not_ignored(home, tiny_embedder, photo_factory, raw_key):
    with Memory.open(home, embedder=tiny_embedder) as mem:
        mem.add_user("ana")
    before = snapshot(home)
    with pytest.raises(EncryptionError, match="not encrypted"):
        Memory.open(home, embedder=tiny_embedder, key=raw_key)
    assert snapshot(home) == before


def test_missing_package_names_the_extra_and_creates_nothing(tmp_path, monkeypatch, raw_key):
    monkeypatch.setitem(sys.modules, "sqlcipher3", None)
    with pytest.raises(MissingExtraError, match=r"covip\[encrypt\]"):
        Memory.open(tmp_path / "new", key=raw_key)
    assert not (tmp_path / "new").exists()


def test_passphrase_from_argument_environment_and_keyring(home, tiny_embedder, monkeypatch, memory_keyring):
    with Memory.open(home, embedder=tiny_embedder, key="correct horse battery") as mem:
        mem.add_user("ana")
        hk = mem.crypto
    assert json.loads((home / crypto.KEYFILE).read_text())["kdf"]["name"] == "argon2id"
    monkeypatch.setenv(crypto.PASSPHRASE_ENV, "correct horse battery")
    with Memory.open(home, embedder=tiny_embedder) as mem:
        assert [u.name for u in mem.users()] == ["ana"]
    monkeypatch.setenv(crypto.PASSPHRASE_ENV, "wrong horse battery")
    with pytest.raises(WrongKeyError, match="COVIP_PASSPHRASE"):
        Memory.open(home, embedder=tiny_embedder)
    monkeypatch.delenv(crypto.PASSPHRASE_ENV)
    crypto.keyring_set(hk)
    with Memory.open(home, embedder=tiny_embedder) as mem:
        assert [u.name for u in mem.users()] == ["ana"]


# ---------------------------------------------------------------------------------------------- tampering
def test_tampered_or_swapped_photo_file_is_reported_not_decrypted(home, tiny_embedder, photo_factory, raw_key):
    with Memory.open(home, embedder=tiny_embedder, key=raw_key) as mem:
        mem.add_user("ana")
        a = mem.remember("ana", photo_factory(1), "User: one", concepts=["A"]).photo
        b = mem.remember("ana", photo_factory(2), "User: two", concepts=["B"]).photo
        data = bytearray(a.path.read_bytes())
        data[len(data) // 2] ^= 0x01
        a.path.write_bytes(bytes(data))
        report = mem.verify()
        assert not report.ok
        assert any(f"photo {a.id}" in e and "fails authentication" in e for e in report.errors), report.errors
        with pytest.raises(DecryptError, match=f"photo {a.id}'s stored file fails authentication"):
            mem.read_photo_bytes(a)
        a.path.write_bytes(b.path.read_bytes())  # a valid sealed file, but another photo's
        with pytest.raises(DecryptError):
            mem.read_photo_bytes(a.id)
        assert mem.read_photo_bytes(b) == photo_factory(2).read_bytes()
        assert any(f"photo {a.id}" in e for e in mem.verify().errors)


def test_tampered_index_file_is_reported_and_rebuilt(home, tiny_embedder, photo_factory, raw_key):
    with Memory.open(home, embedder=tiny_embedder, key=raw_key) as mem:
        mem.add_user("ana")
        for i in range(3):
            mem.remember("ana", photo_factory(i), f"User: {i}", concepts=["A"])
        mem.flush()
    index_file = next((home / "index").glob("*.faiss"))
    data = bytearray(index_file.read_bytes())
    data[-5] ^= 0x01
    index_file.write_bytes(bytes(data))
    with Memory.open(home, embedder=tiny_embedder, key=raw_key) as mem:
        report = mem.verify()
        assert any("fails authentication" in e for e in report.errors), report.errors
        assert mem.repair().ok
        assert len(mem.search("ana", image=photo_factory(0), k=3)) == 3


# ---------------------------------------------------------------------------------------------- bundles
def test_bundles_are_encrypted_unless_plain(tmp_path, tiny_embedder, photo_factory):
    home, other = tmp_path / "home", tmp_path / "other"
    secret_photo = photo_factory(11)
    with Memory.open(home, embedder=tiny_embedder, key="bundle passphrase") as mem:
        fill(mem, photo_factory, secret_photo)
        sealed = mem.export_user("ana", tmp_path / "ana.covip.zip")
        plain = mem.export_user("ana", tmp_path / "ana-plain.covip.zip", plain=True)
    data = sealed.read_bytes()
    assert crypto.is_sealed(data) and not zipfile.is_zipfile(sealed)
    for needle in [SECRET.encode(), b"manifest.json", b'"ana"', *image_needles(secret_photo)]:
        assert needle not in data
    assert zipfile.is_zipfile(plain) and b"manifest.json" in plain.read_bytes()

    with Memory.open(other, embedder=tiny_embedder) as mem:  # a plain home on another device
        mem.add_user("bob")
    before = snapshot(other)
    with Memory.open(other, embedder=tiny_embedder) as mem:
        with pytest.raises(MissingKeyError, match="encrypted bundle"):
            mem.import_bundle(sealed)
        with pytest.raises(WrongKeyError):
            mem.import_bundle(sealed, key="not the passphrase")
    assert snapshot(other) == before
    with Memory.open(other, embedder=tiny_embedder) as mem:
        counts = mem.import_bundle(sealed, key="bundle passphrase")
        assert counts["photos"] == 6 and counts["episodes"] == 6
        assert mem.search("ana", image=secret_photo, k=1)[0].episodes[0].text.startswith(f"User: {SECRET}")
        assert mem.import_bundle(plain, user="ana2")["photos"] == 6  # a plain bundle needs no key
        assert mem.verify().ok


def test_encrypted_home_imports_its_own_bundles_with_its_passphrase(tmp_path, tiny_embedder, photo_factory,
                                                                     monkeypatch):
    from covip.sdk.memory import bundle as bundle_mod

    a, b = tmp_path / "a", tmp_path / "b"
    secret_photo = photo_factory(11)
    with Memory.open(a, embedder=tiny_embedder, key="shared passphrase") as mem:
        fill(mem, photo_factory, secret_photo)
        bundle = mem.export_user("ana", tmp_path / "ana.covip.zip")
    staged: list[bytes] = []
    real_replace = bundle_mod.atomic_replace

    def spy(tmp, dest, **kw):  # the photos staged in the home's temp folder while the import runs
        staged.append(Path(tmp).read_bytes())
        return real_replace(tmp, dest, **kw)

    monkeypatch.setattr(bundle_mod, "atomic_replace", spy)
    with Memory.open(b, embedder=tiny_embedder, key="shared passphrase") as mem:  # another home, same phrase
        assert mem.import_bundle(bundle)["photos"] == 6
        assert len(staged) == 6 and all(crypto.is_sealed(d) for d in staged)
        assert not any(n in d for d in staged for n in image_needles(secret_photo))
        mem.flush()
        assert mem.verify().ok
        assert all(p.suffix == ".enc" for p in (b / "photos").rglob("*") if p.is_file())
    for n in [SECRET.encode(), *image_needles(secret_photo)]:
        assert files_containing(b, n) == []


# ---------------------------------------------------------------------------------------------- the CLI
def test_cli_init_encrypt_and_every_command_needs_the_passphrase(tmp_path, photo_factory, memory_keyring):
    home = tmp_path / "home"
    env = {crypto.PASSPHRASE_ENV: "cli passphrase 1"}
    ok(run(home, "init", "--encrypt", "--embedder", "tiny", env=env))
    assert crypto.is_encrypted_home(home)
    ok(run(home, "user", "add", "ana", env=env))
    ok(run(home, "remember", str(photo_factory(11)), "--user", "ana", "-c", "Secret", "--place", PLACE,
           "-d", f"User: {SECRET}", env=env))
    assert SECRET in ok(run(home, "history", "--user", "ana", env=env)).stdout
    assert "Secret" in ok(run(home, "recall", str(photo_factory(11)), "--user", "ana", env=env)).stdout
    ok(run(home, "verify", env=env))
    ok(run(home, "export-memory", "--user", "ana", str(tmp_path / "b.zip"), env=env))
    assert crypto.is_sealed(tmp_path / "b.zip")
    ok(run(home, "export-memory", "--user", "ana", "--plain", str(tmp_path / "p.zip"), env=env))
    assert zipfile.is_zipfile(tmp_path / "p.zip")

    before = snapshot(home)
    for args in (["history", "--user", "ana"], ["verify"], ["user", "add", "eve"],
                 ["remember", str(photo_factory(12)), "--user", "ana", "-c", "X", "-d", "x"],
                 ["init", "--force", "--model", "tiny"], ["verify", "--start-fresh"], ["verify", "--repair"],
                 ["export-memory", "--user", "ana", str(tmp_path / "never.zip")],
                 ["import-memory", str(tmp_path / "p.zip"), "--user", "ana2"],
                 ["forget", "--user", "ana", "--all", "-y"]):
        missing = run(home, *args, env={crypto.PASSPHRASE_ENV: ""})
        assert missing.exit_code == 5 and "encrypted and no key was given" in missing.stderr, missing.stderr
        wrong = run(home, *args, env={crypto.PASSPHRASE_ENV: "not the passphrase"})
        assert wrong.exit_code == 5 and "does not unlock" in wrong.stderr, wrong.stderr
        assert "Traceback" not in missing.stderr + wrong.stderr
    assert snapshot(home) == before and not (tmp_path / "never.zip").exists()

    ok(run(home, "key", "store", env=env))  # now the keyring unlocks it
    assert SECRET in ok(run(home, "history", "--user", "ana", env={crypto.PASSPHRASE_ENV: ""})).stdout
    ok(run(home, "key", "change", env={**env, "COVIP_NEW_PASSPHRASE": "cli passphrase 2"}))
    assert run(home, "verify", env={crypto.PASSPHRASE_ENV: "cli passphrase 1"}).exit_code == 5
    ok(run(home, "verify", env={crypto.PASSPHRASE_ENV: "cli passphrase 2"}))
    ok(run(home, "verify", env={crypto.PASSPHRASE_ENV: ""}))  # the keyring entry was updated too
    ok(run(home, "key", "forget", env=env | {crypto.PASSPHRASE_ENV: "cli passphrase 2"}))


def test_cli_init_encrypt_refuses_weak_or_missing_passphrase_and_plain_homes(tmp_path):
    home = tmp_path / "home"
    missing = run(home, "init", "--encrypt", "--embedder", "tiny", env={crypto.PASSPHRASE_ENV: ""})
    assert missing.exit_code == 2 and "needs a passphrase" in missing.stderr
    weak = run(home, "init", "--encrypt", "--embedder", "tiny", env={crypto.PASSPHRASE_ENV: "short"})
    assert weak.exit_code == 2 and "shorter than 8" in weak.stderr
    assert not home.exists() or not any(home.iterdir())
    ok(run(home, "init", "--embedder", "tiny"))
    ok(run(home, "user", "add", "ana"))
    plain = run(home, "init", "--force", "--encrypt", env={crypto.PASSPHRASE_ENV: "long enough passphrase"})
    assert plain.exit_code == 5 and "already holds an unencrypted memory" in plain.stderr
    assert not crypto.is_encrypted_home(home)


def test_assistant_reads_context_photos_through_the_seam(tmp_path, tiny_engine, tiny_embedder, photo_factory,
                                                         raw_key):
    """CAG shows remembered photos to the engine: in an encrypted home they are decrypted, never opened raw."""
    from covip.sdk import Assistant, AssistantConfig, CagConfig, GenerationConfig

    home = tmp_path / "home"
    memory = Memory.open(home, embedder=tiny_embedder, key=raw_key)
    cag = CagConfig(caption=GenerationConfig(max_new_tokens=2), answer=GenerationConfig(max_new_tokens=2))
    with Assistant(AssistantConfig(home=home, model="tiny", cag=cag), memory=memory, engine=tiny_engine) as bot:
        bot.memory.add_user("ana")
        bot.memory.remember("ana", photo_factory(1), "User: Bori at the river", concepts=["Bori"])
        reply = bot.ask("ana", photo_factory(1), "Who is this?")
        assert reply.memories and reply.memories[0].concepts == ("Bori",)
    memory.close()
    with pytest.raises(StoreError):
        Memory.open(home, embedder=tiny_embedder)  # still locked without the key
