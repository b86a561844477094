"""covip.sdk.memory.crypto and .sealed: keyfile, KDF, key wrapping and sealed files, attacked as a thief would."""

from __future__ import annotations

import io
import json
import os
import secrets
import zipfile
from pathlib import Path

import pytest

from covip.sdk.errors import DecryptError, EncryptionError, InputError, MissingKeyError, WrongKeyError
from covip.sdk.memory import crypto, sealed

FAST_KDF = {"name": "argon2id", "iterations": 1, "lanes": 1, "memory_cost": 64}


def fast_kdf() -> dict:
    return dict(FAST_KDF, salt=crypto._b64(secrets.token_bytes(16)))


@pytest.fixture
def small_segments(monkeypatch):
    monkeypatch.setattr(sealed, "SEGMENT", 64)
    return 64


@pytest.fixture(autouse=True)
def no_env_keys(monkeypatch):
    monkeypatch.delenv(crypto.PASSPHRASE_ENV, raising=False)
    monkeypatch.delenv(crypto.KEY_ENV, raising=False)


@pytest.mark.parametrize("size", [0, 1, 63, 64, 65, 128, 129, 1000])
def test_seal_roundtrip_every_segment_boundary(small_segments, size) -> None:
    key, data = secrets.token_bytes(32), os.urandom(size)
    blob = crypto.seal(data, key, b"info")
    assert crypto.is_sealed(blob)
    assert crypto.unseal(blob, key, b"info") == data
    assert crypto.seal(data, key, b"info") != blob  # fresh salt and nonce prefix each time


def test_sealed_bytes_hide_the_plaintext() -> None:
    data = b"zebra-umbrella-7731 lives at 42 Secret Lane " * 50
    blob = crypto.seal(data, secrets.token_bytes(32), b"x")
    assert b"zebra" not in blob and b"Secret Lane" not in blob


def test_any_altered_byte_fails_authentication(small_segments) -> None:
    key, data = secrets.token_bytes(32), os.urandom(200)
    blob = crypto.seal(data, key, b"info")
    for pos in [0, 8, 9, 13, 20, 35, 36, 60, 100, len(blob) - 1]:
        bad = bytearray(blob)
        bad[pos] ^= 0x01
        with pytest.raises((DecryptError, EncryptionError)):
            crypto.unseal(bytes(bad), key, b"info")


def test_truncation_reordering_and_appending_are_caught(small_segments) -> None:
    key, data = secrets.token_bytes(32), os.urandom(64 * 3 + 10)
    blob = crypto.seal(data, key, b"info")
    start, seg = 8 + 1 + 4 + 16 + 7, 64 + 16
    body = blob[start:]
    segments = [body[i:i + seg] for i in range(0, len(body), seg)]
    cases = {
        "drop last segment": blob[:start] + b"".join(segments[:-1]),  # ends on a segment boundary
        "drop a middle segment": blob[:start] + b"".join(segments[:1] + segments[2:]),
        "swap two segments": blob[:start] + b"".join([segments[1], segments[0], *segments[2:]]),
        "append a segment": blob + segments[0],
        "cut inside the tag": blob[:-3],
    }
    for what, bad in cases.items():
        with pytest.raises(DecryptError):
            crypto.unseal(bad, key, b"info")
            pytest.fail(what)


def test_wrong_key_or_name_fails() -> None:
    key = secrets.token_bytes(32)
    blob = crypto.seal(b"photo bytes", key, b"photo|a")
    with pytest.raises(DecryptError):
        crypto.unseal(blob, secrets.token_bytes(32), b"photo|a")
    with pytest.raises(DecryptError):
        crypto.unseal(blob, key, b"photo|b")  # a file swapped in under another name
    with pytest.raises(DecryptError, match="not encrypted by covip"):
        crypto.unseal(b"\x89PNG\r\n\x1a\n" + b"\0" * 100, key, b"photo|a")


def test_reader_is_seekable_and_zipfile_streams_through_it(small_segments) -> None:
    key = secrets.token_bytes(32)
    out = io.BytesIO()
    with crypto.SealedWriter(out, key, b"bundle", close_fh=False) as w:
        with zipfile.ZipFile(w, "w") as zf:  # the writer is not seekable: zipfile streams
            zf.writestr("a.txt", b"alpha" * 100)
            zf.writestr("b.bin", os.urandom(300))
    assert b"alpha" not in out.getvalue()
    reader = crypto.SealedReader(io.BytesIO(out.getvalue()), lambda _h: key, b"bundle", what="t")
    with zipfile.ZipFile(reader) as zf:
        assert zf.read("a.txt") == b"alpha" * 100
        assert len(zf.read("b.bin")) == 300
    data = crypto.unseal(out.getvalue(), key, b"bundle")
    reader.seek(150)
    assert reader.read(70) == data[150:220]
    reader.seek(-5, os.SEEK_END)
    assert reader.read() == data[-5:]


# ---------------------------------------------------------------------------------------------- keyfile
def test_passphrase_keyfile_unlocks_only_with_its_passphrase(tmp_path: Path) -> None:
    home = tmp_path / "h"
    made = crypto.create_home_key(home, "correct horse battery", kdf=fast_kdf())
    slot = json.loads((home / crypto.KEYFILE).read_text())
    assert slot["kdf"]["name"] == "argon2id" and "correct horse" not in json.dumps(slot)
    again = crypto.unlock_home(home, "correct horse battery")
    blob = made.seal(b"hello", "photo", "x")
    assert again.unseal(blob, "photo", "x") == b"hello"
    assert made.photo_name("ab" * 32) == again.photo_name("ab" * 32) != "ab" * 32
    with pytest.raises(WrongKeyError, match="does not unlock"):
        crypto.unlock_home(home, "correct horse batterY")
    with pytest.raises(WrongKeyError, match="passphrase, not a raw key"):
        crypto.unlock_home(home, secrets.token_bytes(32))
    with pytest.raises(MissingKeyError, match="COVIP_PASSPHRASE"):
        crypto.unlock_home(home)
    assert "correct" not in repr(again) and "wrapped" not in repr(again)


def test_default_kdf_is_argon2id_rfc9106() -> None:
    kdf = crypto.default_kdf()
    assert kdf["name"] == "argon2id" and (kdf["iterations"], kdf["lanes"], kdf["memory_cost"]) == (3, 4, 65536)
    assert len(crypto._unb64(kdf["salt"], "salt")) == 16


def test_scrypt_keyfiles_still_open(tmp_path: Path) -> None:
    kdf = {"name": "scrypt", "salt": crypto._b64(os.urandom(16)), "n": 2**10, "r": 8, "p": 1}
    crypto.create_home_key(tmp_path, "a long passphrase", kdf=kdf)
    assert crypto.unlock_home(tmp_path, "a long passphrase") is not None
    with pytest.raises(WrongKeyError):
        crypto.unlock_home(tmp_path, "another passphrase")


def test_raw_key_and_its_environment_variable(tmp_path: Path, monkeypatch) -> None:
    raw = secrets.token_bytes(32)
    crypto.create_home_key(tmp_path, raw)
    assert json.loads((tmp_path / crypto.KEYFILE).read_text())["kdf"] == {"name": "raw"}
    assert crypto.unlock_home(tmp_path, raw) is not None
    with pytest.raises(WrongKeyError):
        crypto.unlock_home(tmp_path, secrets.token_bytes(32))
    with pytest.raises(WrongKeyError, match="raw 32-byte key, not a passphrase"):
        crypto.unlock_home(tmp_path, "a passphrase instead")
    monkeypatch.setenv(crypto.KEY_ENV, raw.hex())
    assert crypto.unlock_home(tmp_path) is not None
    monkeypatch.setenv(crypto.KEY_ENV, "zz")
    with pytest.raises(WrongKeyError, match="64 hex digits"):
        crypto.unlock_home(tmp_path)


def test_tampered_kdf_parameters_do_not_unlock(tmp_path: Path) -> None:
    crypto.create_home_key(tmp_path, "passphrase one", kdf=fast_kdf())
    path = tmp_path / crypto.KEYFILE
    slot = json.loads(path.read_text())
    slot["kdf"]["iterations"] = 2  # a weakened/changed parameter is part of the wrap's associated data
    path.write_text(json.dumps(slot))
    with pytest.raises(WrongKeyError):
        crypto.unlock_home(tmp_path, "passphrase one")


@pytest.mark.parametrize("content", [b"", b"{}", b"not json", b'{"format": "covip-keyfile"}', b"[1]"])
def test_damaged_keyfile_is_a_clear_error(tmp_path: Path, content: bytes) -> None:
    (tmp_path / crypto.KEYFILE).write_bytes(content)
    with pytest.raises(EncryptionError, match="not a covip keyfile"):
        crypto.unlock_home(tmp_path, "whatever passphrase")


def test_bad_secrets_are_input_errors(tmp_path: Path) -> None:
    for bad, match in [(b"short", "exactly 32 bytes"), ("", "empty"), ("short", "shorter than 8"),
                       (12345, "passphrase \\(str\\) or 32 raw bytes")]:
        with pytest.raises(InputError, match=match):
            crypto.create_home_key(tmp_path, bad)
    assert not (tmp_path / crypto.KEYFILE).exists()


def test_key_for_a_plain_home_is_refused(tmp_path: Path) -> None:
    with pytest.raises(EncryptionError, match="not encrypted"):
        crypto.unlock_home(tmp_path, "some passphrase")
    assert crypto.unlock_home(tmp_path) is None


def test_database_key_encrypts_pages_and_refuses_other_keyfiles(tmp_path: Path) -> None:
    key = crypto.create_home_key(tmp_path / "a", secrets.token_bytes(32))
    other = crypto.create_home_key(tmp_path / "b", secrets.token_bytes(32))
    db = tmp_path / "a" / "t.db"
    conn = key.connect(db, timeout=5)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (x TEXT)")
    conn.execute("INSERT INTO t VALUES ('zebra-umbrella-7731')")
    files = [f for f in (tmp_path / "a").iterdir() if f.is_file()]
    assert {f.name for f in files} >= {"t.db", "t.db-wal"}
    for f in files:
        assert b"zebra-umbrella" not in f.read_bytes(), f.name
    conn.close()
    with pytest.raises(WrongKeyError, match="does not belong"):
        other.connect(db, timeout=5)
    conn = key.connect(db, timeout=5)
    assert conn.execute("SELECT x FROM t").fetchall() == [("zebra-umbrella-7731",)]
    conn.close()


def test_file_seam_roundtrip_and_swap(tmp_path: Path) -> None:
    key = crypto.create_home_key(tmp_path, secrets.token_bytes(32))
    a, b = tmp_path / "photos" / "a.enc", tmp_path / "photos" / "b.enc"
    crypto.write_file(a, b"AAAA", tmp_path / "tmp", key, "photo")
    crypto.write_file(b, b"BBBB", tmp_path / "tmp", key, "photo")
    assert crypto.read_file(a, key, "photo") == b"AAAA"
    a.write_bytes(b.read_bytes())  # swap b's sealed bytes into a's place
    with pytest.raises(DecryptError):
        crypto.read_file(a, key, "photo")
    with pytest.raises(DecryptError):
        crypto.read_file(b, key, "index")  # a photo cannot pass for an index file
    crypto.write_file(a, b"plain", tmp_path / "tmp", None, "photo")
    assert a.read_bytes() == b"plain"
    assert list((tmp_path / "tmp").iterdir()) == []


def test_keyring_stores_and_supplies_the_passphrase(tmp_path: Path, memory_keyring) -> None:
    key = crypto.create_home_key(tmp_path, "keyring passphrase", kdf=fast_kdf())
    with pytest.raises(MissingKeyError):
        crypto.unlock_home(tmp_path)
    crypto.keyring_set(key)
    assert memory_keyring.store == {("covip", key.keyring_user): "keyring passphrase"}
    assert crypto.unlock_home(tmp_path) is not None
    assert crypto.keyring_delete(key) and not crypto.keyring_delete(key)
    with pytest.raises(MissingKeyError):
        crypto.unlock_home(tmp_path)


def test_environment_passphrase_wins_and_names_itself_when_wrong(tmp_path: Path, monkeypatch) -> None:
    crypto.create_home_key(tmp_path, "env passphrase", kdf=fast_kdf())
    monkeypatch.setenv(crypto.PASSPHRASE_ENV, "env passphrase")
    assert crypto.unlock_home(tmp_path) is not None
    monkeypatch.setenv(crypto.PASSPHRASE_ENV, "not it at all")
    with pytest.raises(WrongKeyError, match="COVIP_PASSPHRASE"):
        crypto.unlock_home(tmp_path)


def test_sqlcipher_connection_reuses_one_savepoint_name_and_keeps_nesting(tmp_path: Path) -> None:
    """sqlite-utils draws a random savepoint name per nested write; on sqlcipher3's old statement cache that
    evicts every query once full, so the connection makes the name constant: nesting must still be right."""
    import sqlite_utils

    conn = crypto.create_home_key(tmp_path, secrets.token_bytes(32)).connect(tmp_path / "t.db", timeout=5)
    db = sqlite_utils.Database(conn)
    db.execute("CREATE TABLE t (x INTEGER)")
    seen: list[str] = []
    conn.set_trace_callback(seen.append)
    with db.atomic():
        db.execute("INSERT INTO t VALUES (1)")
        with db.atomic():
            db.execute("INSERT INTO t VALUES (2)")
            with pytest.raises(ValueError), db.atomic():
                db.execute("INSERT INTO t VALUES (3)")
                raise ValueError("rolled back to the inner savepoint only")
        with db.atomic():
            db.execute("INSERT INTO t VALUES (4)")
    assert [r[0] for r in conn.execute("SELECT x FROM t ORDER BY x")] == [1, 2, 4]
    savepoint_sql = {s for s in seen if "SAVEPOINT" in s}
    assert savepoint_sql == {"SAVEPOINT sqlite_utils_savepoint;", "RELEASE SAVEPOINT sqlite_utils_savepoint;",
                             "ROLLBACK TO SAVEPOINT sqlite_utils_savepoint;"}
    conn.close()
