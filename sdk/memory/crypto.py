"""Encryption at rest for a memory home (``covip init --encrypt``): keyfile, passphrase KDF, sealed files.

Design, and why:

- One random 256-bit *data key* per home, wrapped with AES-256-GCM by a key-encryption key (KEK) derived
  from the passphrase by Argon2id (RFC 9106's second recommended setting: 64 MiB, 3 passes, 4 lanes; scrypt
  where the installed ``cryptography`` lacks Argon2id) with a per-home salt. Salt, KDF parameters and the
  wrapped key are ``keyfile.json``. The slow KDF runs once per open, a wrong passphrase is caught by the
  wrap's tag before any other file is touched, and changing the passphrase rewraps 32 bytes instead of
  re-encrypting the home. A raw 32-byte key may stand in for a passphrase (it is the KEK as is).
- Sub-keys per use come from the data key through HKDF: SQLCipher's raw page key (``memory.db`` and its
  WAL, so every row: dialogues, places, vectors, the caption cache), the file key and the file-name key.
- Files (stored photos, FAISS index files and their sidecars, encrypted bundles) are *sealed* with the
  segmented AES-GCM construction of Tink's AesGcmHkdfStreaming: a random salt per file gives a per-file key
  (HKDF), so rewriting index files millions of times never nears AES-GCM's random-nonce limit; 1 MiB
  segments carry a counter and a last-segment flag in the nonce, which stops truncation and reordering,
  lifts AES-GCM's 2 GiB single-call limit (large index files) and lets a bundle be read as a seekable stream
  with no plaintext on disk. The file's role and name go into the key derivation, so files cannot be
  swapped with each other inside a home.
- Stored photo files are named by an HMAC of their content hash, so a stolen disk does not tell whether a
  known photo is in the memory.

Keys come from, in order: the ``key=`` argument, ``$COVIP_PASSPHRASE`` (or ``$COVIP_KEY``, 64 hex digits
of a raw key), the OS keyring (the ``keyring`` package, service ``covip``, user ``home-<home id>``).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import sqlite3
import sys
import unicodedata
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from covip.sdk._extras import require
from covip.sdk.errors import DecryptError, EncryptionError, InputError, MissingKeyError, WrongKeyError
from covip.sdk.files import atomic_write_bytes, private_dir, read_bytes
from covip.sdk.memory.sealed import (
    FEATURE,
    MAGIC,
    PRELUDE,
    SealedReader,
    SealedWriter,
    aesgcm,
    hkdf,
    is_sealed,
    require_cryptography,
    seal,
    unseal,
)

log = logging.getLogger(__name__)

__all__ = [
    "KEYFILE", "PASSPHRASE_ENV", "KEY_ENV", "KEYRING_SERVICE", "Secret", "HomeKey", "SealedReader",
    "SealedWriter", "is_encrypted_home", "unlock_home", "create_home_key", "resolve_secret", "read_keyfile",
    "keyring_get", "keyring_set", "keyring_delete", "write_file", "read_file", "is_sealed", "seal", "unseal",
    "derive_kek", "default_kdf", "open_home_key", "db_errors", "open_sealed_bundle", "bundle_sink", "holds_memory",
    "bundle_secrets", "secret_from_text", "change_home_key", "check_new_secret", "require_encryption",
    "PhotoSeal",
]

KEYFILE = "keyfile.json"
PASSPHRASE_ENV = "COVIP_PASSPHRASE"
KEY_ENV = "COVIP_KEY"
KEYRING_SERVICE = "covip"
KEYFILE_FORMAT = "covip-keyfile"
KEYFILE_VERSION = 1
MIN_PASSPHRASE = 8
DB_HMAC = "HMAC_SHA256"  # page MAC of new homes: as strong here, 2-3x cheaper than SHA-512 with SHA-NI
_DB_HMACS = ("HMAC_SHA1", "HMAC_SHA256", "HMAC_SHA512")
STATEMENT_CACHE = 1024  # prepared statements kept per SQLCipher connection (see _connection_class)

Secret = str | bytes
"""A passphrase (str) or a raw 32-byte key (bytes)."""


# ---------------------------------------------------------------------------------------------- primitives
def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any, what: str) -> bytes:
    try:
        return base64.b64decode(str(text), validate=True)
    except (ValueError, TypeError) as exc:
        raise EncryptionError(f"{what} is not valid base64; the keyfile is damaged") from exc


def _argon2_available() -> bool:
    require_cryptography()
    try:
        from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

        Argon2id(salt=b"\0" * 16, length=32, iterations=1, lanes=1, memory_cost=8).derive(b"probe")
    except Exception:  # noqa: BLE001 - ImportError, UnsupportedAlgorithm: fall back to scrypt
        return False
    return True


def default_kdf() -> dict[str, Any]:
    """KDF parameters for a new passphrase: Argon2id (RFC 9106, second recommended option), else scrypt."""
    salt = _b64(secrets.token_bytes(16))
    if _argon2_available():
        return {"name": "argon2id", "salt": salt, "iterations": 3, "lanes": 4, "memory_cost": 65536}
    return {"name": "scrypt", "salt": salt, "n": 2**17, "r": 8, "p": 1}


def _passphrase_bytes(passphrase: str) -> bytes:
    if not passphrase:
        raise InputError("the passphrase is empty; give a passphrase or a raw 32-byte key")
    return unicodedata.normalize("NFC", passphrase).encode("utf-8")


def require_encryption() -> None:
    """MissingExtraError naming ``pip install 'covip[encrypt]'`` unless SQLCipher and cryptography are there."""
    require("sqlcipher3", feature=FEATURE, extra="encrypt")
    require_cryptography()


def derive_kek(secret: Secret, kdf: dict[str, Any]) -> bytes:
    """The key-encryption key for ``secret`` under the keyfile's KDF parameters (slow by design)."""
    name = kdf.get("name")
    if name == "raw":
        if not isinstance(secret, bytes) or len(secret) != 32:
            raise WrongKeyError("this was locked with a raw 32-byte key, not a passphrase; pass key=<32 bytes> "
                                f"or set ${KEY_ENV} to its 64 hex digits")
        return secret
    if not isinstance(secret, str):
        raise WrongKeyError("this was locked with a passphrase, not a raw key; pass key='<passphrase>' or set "
                            f"${PASSPHRASE_ENV}")
    salt = _unb64(kdf.get("salt"), "the KDF salt")
    data = _passphrase_bytes(secret)
    require_cryptography()
    try:
        if name == "argon2id":
            from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

            return Argon2id(salt=salt, length=32, iterations=int(kdf["iterations"]), lanes=int(kdf["lanes"]),
                            memory_cost=int(kdf["memory_cost"])).derive(data)
        if name == "scrypt":
            from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

            return Scrypt(salt=salt, length=32, n=int(kdf["n"]), r=int(kdf["r"]), p=int(kdf["p"])).derive(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise EncryptionError(f"the KDF parameters {sorted(kdf)} are unusable ({exc}); the keyfile is "
                              "damaged") from exc
    raise EncryptionError(f"unknown KDF {name!r} (written by a newer covip?); upgrade covip")


def check_new_secret(secret: Any) -> Secret:
    """``secret`` if it may lock a new home (a passphrase of 8+ characters, or 32 raw bytes), else InputError."""
    return _check_secret(secret, creating=True)


def _check_secret(secret: Any, *, creating: bool) -> Secret:
    if isinstance(secret, (bytearray, memoryview)):
        secret = bytes(secret)
    if isinstance(secret, bytes):
        if len(secret) != 32:
            raise InputError(f"a raw key must be exactly 32 bytes, not {len(secret)}; pass a passphrase (str) "
                             "instead, or secrets.token_bytes(32)")
        return secret
    if isinstance(secret, str):
        _passphrase_bytes(secret)
        if creating and len(secret) < MIN_PASSPHRASE:
            raise InputError(f"the passphrase is shorter than {MIN_PASSPHRASE} characters; choose a longer one")
        return secret
    raise InputError(f"key must be a passphrase (str) or 32 raw bytes, not {type(secret).__name__}")


# ---------------------------------------------------------------------------------------------- keyslots
def _slot_aad(slot: dict[str, Any]) -> bytes:
    """Associated data of a wrapped key: everything in the slot but the wrap (so parameters cannot be
    swapped or weakened without the unwrap failing)."""
    fields = {k: v for k, v in slot.items() if k not in ("wrapped_key", "note")}
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def _wrap(slot: dict[str, Any], kek: bytes, data_key: bytes) -> dict[str, Any]:
    nonce = secrets.token_bytes(12)
    slot = dict(slot)
    slot["wrapped_key"] = _b64(nonce + aesgcm(kek).encrypt(nonce, data_key, _slot_aad(slot)))
    return slot


def _unwrap(slot: dict[str, Any], kek: bytes, what: str, source: str) -> bytes:
    from cryptography.exceptions import InvalidTag

    blob = _unb64(slot.get("wrapped_key"), "the wrapped key")
    try:
        key = aesgcm(kek).decrypt(blob[:12], blob[12:], _slot_aad(slot))
    except InvalidTag:
        raise WrongKeyError(f"the {source} does not unlock {what} (wrong passphrase or key, or its keyfile "
                            "was altered); nothing was changed") from None
    if len(key) != 32:
        raise EncryptionError(f"{what}: the unwrapped key has {len(key)} bytes; the keyfile is damaged")
    return key


def _new_slot(kind: str, secret: Secret, kdf: dict[str, Any] | None) -> tuple[dict[str, Any], bytes]:
    """A fresh slot header (not yet wrapped) and its KEK."""
    if isinstance(secret, bytes):
        kdf = {"name": "raw"}
    kdf = kdf or default_kdf()
    slot = {"format": kind, "version": KEYFILE_VERSION, "id": uuid.uuid4().hex, "cipher": "AES-256-GCM",
            "kdf": kdf, "db": {"hmac": DB_HMAC}}
    return slot, derive_kek(secret, kdf)


# ---------------------------------------------------------------------------------------------- the home key
class HomeKey:
    """An unlocked home: sub-keys of its data key. Holds secrets; never printed (``repr`` hides them)."""

    def __init__(self, data_key: bytes, slot: dict[str, Any], kek: bytes, secret: Secret | None) -> None:
        self.home_id: str = slot["id"]
        self.kdf_name: str = slot["kdf"]["name"]
        self._slot = {k: v for k, v in slot.items() if k != "wrapped_key"}
        self._kek = kek
        self._secret = secret
        self._data_key = data_key
        self._db_key = hkdf(data_key, b"covip sqlcipher page key v1")
        db = slot.get("db") if isinstance(slot.get("db"), dict) else {}
        self._db_hmac = db.get("hmac", "HMAC_SHA512")  # keyfiles without the field: SQLCipher 4's default
        if self._db_hmac not in _DB_HMACS:
            raise EncryptionError(f"unknown database HMAC {self._db_hmac!r} in the keyfile; upgrade covip")
        self._file_key = hkdf(data_key, b"covip file key v1")
        self._name_key = hkdf(data_key, b"covip file name key v1")

    def __repr__(self) -> str:
        return f"HomeKey(home_id={self.home_id!r}, kdf={self.kdf_name!r})"

    @property
    def keyring_user(self) -> str:
        """The keyring user name this home's passphrase is stored under."""
        return f"home-{self.home_id}"

    # -- database
    def connect(self, path: Path, *, timeout: float) -> Any:
        """A SQLCipher connection to ``path`` keyed with the home's page key (raw key: no second KDF)."""
        sqlcipher = require("sqlcipher3", feature=FEATURE, extra="encrypt")
        dbapi = sqlcipher.dbapi2
        conn = dbapi.connect(str(path), timeout=timeout, isolation_level=None, check_same_thread=False,
                             cached_statements=STATEMENT_CACHE, factory=_connection_class(dbapi))
        try:
            conn.execute("PRAGMA cipher_log_level = NONE")  # a wrong key is our error to report, not stderr's
            conn.execute(f"PRAGMA key = \"x'{self._db_key.hex()}'\"")
            conn.execute(f"PRAGMA cipher_hmac_algorithm = {self._db_hmac}")
            conn.execute("PRAGMA temp_store = MEMORY")  # sort/temp tables never spill plaintext to /tmp
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except dbapi.DatabaseError as exc:
            conn.close()
            raise WrongKeyError(
                f"{path} cannot be decrypted with this home's key ({exc}): the database does not belong to "
                f"this home's {KEYFILE}, or it is damaged; restore both from the same backup or an export "
                "bundle") from exc
        return conn

    # -- files
    def seal(self, data: bytes, role: str, name: str) -> bytes:
        """Encrypt ``data`` as the home file ``name`` of kind ``role`` (photo, index, ...)."""
        return seal(data, self._file_key, _file_info(role, name))

    def unseal(self, blob: bytes, role: str, name: str) -> bytes:
        """Decrypt a home file sealed by :meth:`seal`; DecryptError when it was altered or swapped."""
        return unseal(blob, self._file_key, _file_info(role, name), what=f"{role} file {name}")

    def photo_name(self, sha256: str) -> str:
        """A stored photo's file name: a keyed hash of its content hash (hides which photo it is)."""
        return hmac.new(self._name_key, sha256.encode(), hashlib.sha256).hexdigest()[:40]

    # -- bundles
    def bundle_writer(self, fh: IO[bytes]) -> SealedWriter:
        """A writer that seals a bundle under this home's passphrase (or raw key) with a fresh bundle key,
        so the bundle opens on any device with the same passphrase (no KDF run: the home's KEK is reused)."""
        slot = dict(self._slot, format="covip-bundle-key", id=uuid.uuid4().hex)
        bundle_key = secrets.token_bytes(32)
        slot = _wrap(slot, self._kek, bundle_key)
        header = json.dumps(slot, sort_keys=True).encode()
        return SealedWriter(fh, bundle_key, _file_info("bundle", ""), header=header)

    def secret(self) -> Secret | None:
        """The passphrase or raw key this home was opened with (tried first on encrypted bundles)."""
        return self._secret


class PhotoSeal:
    """Writes photos in their final photo-store form (sealed under the same key and name a stored copy gets), so
    a bundle import stages them in the home's temp folder and moves them into place by rename: no plaintext
    photo touches the disk of an encrypted home."""

    def __init__(self, key: HomeKey) -> None:
        self._key = key

    def name(self, sha256: str) -> str:
        """The stored file name of the photo with this content hash."""
        return self._key.photo_name(sha256) + ".enc"

    def writer(self, fh: IO[bytes], sha256: str) -> SealedWriter:
        """A stream sealing what is written into ``fh`` (left open) as the stored photo ``sha256``."""
        return SealedWriter(fh, self._key._file_key, _file_info("photo", self.name(sha256)), close_fh=False)

    def read(self, path: Path, sha256: str) -> bytes:
        """The plaintext of a file written through :meth:`writer`."""
        return self._key.unseal(read_bytes(path), "photo", self.name(sha256))


_SAVEPOINT_NAME = re.compile(r"sqlite_utils_[0-9a-f]{32}")
_CONNECTION_CLASS: list[type] = []


def _connection_class(dbapi: Any) -> type:
    """sqlcipher3's Connection with savepoint names made constant.

    sqlcipher3 keeps the pre-3.11 pysqlite statement cache: once it is full, each new statement evicts the
    one before it, so a query issued between new statements is compiled again on every call. sqlite-utils
    names each nested write's savepoint at random, which fills the cache within a few hundred writes (then
    searches measured 2.7x slower than on the stdlib's sqlite3, none of it the cipher). One name is equally
    correct: RELEASE and ROLLBACK TO act on the innermost savepoint of that name, and these nest strictly.
    """
    if not _CONNECTION_CLASS:
        class Connection(dbapi.Connection):
            def execute(self, sql: str, *args: Any) -> Any:
                if "sqlite_utils_" in sql:
                    sql = _SAVEPOINT_NAME.sub("sqlite_utils_savepoint", sql)
                return super().execute(sql, *args)

        _CONNECTION_CLASS.append(Connection)
    return _CONNECTION_CLASS[0]


def _file_info(role: str, name: str) -> bytes:
    return f"covip file v1|{role}|{name}".encode()


def read_keyfile(home: Path) -> dict[str, Any] | None:
    """The home's keyfile, or None for a home that is not encrypted."""
    path = Path(home) / KEYFILE
    try:
        raw = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):  # no keyfile; a home that is no folder is make_home's error
        return None
    except OSError as exc:
        raise EncryptionError(f"cannot read {path} ({exc.strerror}); check its permissions") from exc
    try:
        slot = json.loads(raw)
        ok = (isinstance(slot, dict) and slot.get("format") == KEYFILE_FORMAT and isinstance(slot.get("kdf"), dict)
              and isinstance(slot.get("id"), str) and "wrapped_key" in slot)
    except ValueError:
        ok = False
    if not ok:
        raise EncryptionError(f"{path} is not a covip keyfile (damaged?); restore it from a backup, without it "
                              "the encrypted memory cannot be opened")
    if int(slot.get("version", 0)) > KEYFILE_VERSION:
        raise EncryptionError(f"{path} was written by a newer covip; upgrade covip to open this memory")
    return slot


def is_encrypted_home(home: str | os.PathLike[str]) -> bool:
    """Whether ``home`` has a keyfile (was created with ``covip init --encrypt`` or ``Memory.open(key=...)``)."""
    return (Path(home) / KEYFILE).is_file()


def secret_from_text(home: str | os.PathLike[str], text: str) -> Secret:
    """A typed or stored secret as ``home`` needs it: the passphrase itself, or the raw key's bytes from its 64
    hex digits in a home locked with a raw key."""
    slot = read_keyfile(Path(home))
    return _secret_from_text(text, str(slot["kdf"].get("name")) if slot else "argon2id", "typed key")


def change_home_key(home: str | os.PathLike[str], old: Any, new: Any, *,
                    kdf: dict[str, Any] | None = None) -> HomeKey:
    """Lock ``home`` with a new passphrase (or raw key): the data key is unwrapped with ``old`` and wrapped again
    under ``new`` with a fresh salt; nothing else is re-encrypted. A keyring entry for the home is updated."""
    home = Path(home)
    current = unlock_home(home, old)
    if current is None:
        raise EncryptionError(f"the memory in {home} is not encrypted; there is no key to change")
    secret = _check_secret(new, creating=True)
    had_keyring = keyring_get(current.keyring_user) is not None
    slot = {k: v for k, v in read_keyfile(home).items() if k not in ("wrapped_key", "kdf")}
    slot["kdf"] = {"name": "raw"} if isinstance(secret, bytes) else (kdf or default_kdf())
    kek = derive_kek(secret, slot["kdf"])
    slot = _wrap({k: v for k, v in slot.items() if k != "note"}, kek, current._data_key)
    slot["note"] = read_keyfile(home).get("note", "")
    atomic_write_bytes(home / KEYFILE, (json.dumps(slot, indent=1, sort_keys=True) + "\n").encode(), home / "tmp")
    changed = HomeKey(current._data_key, slot, kek, secret)
    if had_keyring:
        keyring_set(changed)
    log.info("changed the key of %s", home)
    return changed


def _secret_from_text(text: str, kdf_name: str, source: str) -> Secret:
    if kdf_name != "raw":
        return text
    try:
        raw = bytes.fromhex(text.strip())
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise WrongKeyError(f"the {source} is not 64 hex digits (a raw 32-byte key, as this home needs)")
    return raw


def resolve_secret(kdf_name: str, home_id: str | None, key: Any = None) -> tuple[Secret, str]:
    """The secret to try and where it came from: ``key``, else the environment, else the OS keyring.

    Raises :class:`MissingKeyError` when none has one.
    """
    if key is not None:
        return _check_secret(key, creating=False), "given key"
    if kdf_name == "raw":
        env = os.environ.get(KEY_ENV)
        if env:
            return _secret_from_text(env, "raw", f"${KEY_ENV}"), f"${KEY_ENV}"
    else:
        env = os.environ.get(PASSPHRASE_ENV)
        if env:
            return env, f"passphrase in ${PASSPHRASE_ENV}"
    if home_id is not None:
        stored = keyring_get(f"home-{home_id}")
        if stored:
            return _secret_from_text(stored, kdf_name, "keyring entry"), "passphrase in the OS keyring"
    need = f"${KEY_ENV} (64 hex digits)" if kdf_name == "raw" else f"${PASSPHRASE_ENV}"
    raise MissingKeyError(f"it is encrypted and no key was given: pass key=..., set {need}, or store the "
                          "passphrase in the OS keyring (`covip key store`)")


def unlock_home(home: str | os.PathLike[str], key: Any = None) -> HomeKey | None:
    """Unlock an encrypted home (None for a plain one). Reads only ``keyfile.json``; writes nothing.

    A plain home given a ``key`` raises :class:`EncryptionError` (it would not be encrypted).
    """
    home = Path(home)
    slot = read_keyfile(home)
    if slot is None:
        if key is not None:
            raise EncryptionError(f"the memory in {home} is not encrypted, but a key was given; open it without "
                                  "a key, or move its data into an encrypted home: `covip export`, `covip --home "
                                  "NEW init --encrypt`, `covip --home NEW import-memory`")
        return None
    require("sqlcipher3", feature=FEATURE, extra="encrypt")
    kdf_name = str(slot["kdf"].get("name"))
    try:
        secret, source = resolve_secret(kdf_name, slot["id"], key)
    except MissingKeyError as exc:
        raise MissingKeyError(f"cannot open the memory in {home}: {exc}") from None
    kek = derive_kek(secret, slot["kdf"])
    data_key = _unwrap(slot, kek, f"the memory in {home}", source)
    return HomeKey(data_key, slot, kek, secret)


def create_home_key(home: str | os.PathLike[str], key: Any, *, kdf: dict[str, Any] | None = None) -> HomeKey:
    """Create ``keyfile.json`` for a new encrypted home (refuses to overwrite one) and return its key."""
    home = Path(home)
    secret = _check_secret(key, creating=True)
    require("sqlcipher3", feature=FEATURE, extra="encrypt")
    path = home / KEYFILE
    if path.exists():
        raise EncryptionError(f"{path} already exists; this home is encrypted already")
    slot, kek = _new_slot(KEYFILE_FORMAT, secret, kdf)
    data_key = secrets.token_bytes(32)
    slot = _wrap(slot, kek, data_key)
    slot["note"] = ("covip encryption keyfile: without it and the passphrase the memory cannot be read; "
                    "back it up together with the home")
    private_dir(home)
    atomic_write_bytes(path, (json.dumps(slot, indent=1, sort_keys=True) + "\n").encode(), home / "tmp")
    log.info("created encryption keyfile %s (kdf %s)", path, slot["kdf"]["name"])
    return HomeKey(data_key, slot, kek, secret)


def holds_memory(home: Path) -> bool:
    """Whether ``home`` already holds a memory (a non-empty database, photo or index files)."""
    from covip.sdk.memory.layout import DB_FILE, leftovers

    db = home / DB_FILE
    return (db.is_file() and db.stat().st_size > 0) or bool(leftovers(home))


def open_home_key(home: str | os.PathLike[str], key: Any = None) -> HomeKey | None:
    """The key of ``home`` as :meth:`Memory.open` needs it: unlocked from its keyfile, created when ``key`` is
    given for a new home, None for a plain home. Writes nothing except a new home's keyfile."""
    home = Path(home)
    if key is None or is_encrypted_home(home) or holds_memory(home):
        return unlock_home(home, key)
    return create_home_key(home, key)


def db_errors() -> tuple[type[Exception], ...]:
    """The error classes of every SQLite binding in use: the stdlib's, and SQLCipher's once it is loaded
    (its exceptions do not derive from ``sqlite3.Error``)."""
    mod = sys.modules.get("sqlcipher3.dbapi2")
    return (sqlite3.Error,) if mod is None else (sqlite3.Error, mod.Error)


# ---------------------------------------------------------------------------------------------- keyring
def _keyring() -> Any | None:
    try:
        import keyring
    except ImportError:
        return None
    return keyring


def keyring_get(user: str) -> str | None:
    """The secret stored for ``user`` under service ``covip`` in the OS keyring (None when absent/unusable)."""
    kr = _keyring()
    if kr is None:
        return None
    try:
        return kr.get_password(KEYRING_SERVICE, user)
    except Exception as exc:  # noqa: BLE001 - no usable backend (headless Linux), locked keychain, ...
        log.debug("OS keyring not usable: %s", exc)
        return None


def keyring_set(key: HomeKey) -> None:
    """Store the passphrase (or hex raw key) the home was opened with in the OS keyring."""
    kr = require("keyring", feature="storing the passphrase in the OS keyring", extra="encrypt")
    secret = key.secret()
    if secret is None:
        raise MissingKeyError("no passphrase to store: open the memory with its passphrase first")
    text = secret.hex() if isinstance(secret, bytes) else secret
    try:
        kr.set_password(KEYRING_SERVICE, key.keyring_user, text)
    except Exception as exc:  # noqa: BLE001 - keyring.errors.* and backend errors alike
        raise EncryptionError(f"the OS keyring refused the passphrase ({exc}); use ${PASSPHRASE_ENV} "
                              "instead") from exc


def keyring_delete(key: HomeKey) -> bool:
    """Remove the home's keyring entry; False when there was none."""
    kr = require("keyring", feature="the OS keyring", extra="encrypt")
    try:
        kr.delete_password(KEYRING_SERVICE, key.keyring_user)
    except Exception:  # noqa: BLE001 - PasswordDeleteError when absent
        return False
    return True


# ---------------------------------------------------------------------------------------------- bundles
def open_sealed_bundle(path: Path, secrets_to_try: list[tuple[Secret, str]]) -> SealedReader:
    """Open an encrypted bundle with the first secret that unwraps its key; the reader is a seekable stream
    of the zip inside. Raises MissingKeyError (no secrets) or WrongKeyError (none fits)."""
    fh = open(path, "rb")  # noqa: SIM115 - owned by the reader
    try:
        head = fh.read(PRELUDE.size)
        if len(head) < PRELUDE.size or head[:8] != MAGIC:
            raise DecryptError(f"{path} is not an encrypted covip bundle")
        hlen = PRELUDE.unpack(head)[2]
        try:
            slot = json.loads(fh.read(min(hlen, 1 << 20)))
        except ValueError:
            slot = None
        if not isinstance(slot, dict) or not isinstance(slot.get("kdf"), dict):
            raise DecryptError(f"{path}: the key header of the encrypted bundle is damaged")
        if not secrets_to_try:
            need = KEY_ENV if slot["kdf"].get("name") == "raw" else PASSPHRASE_ENV
            raise MissingKeyError(f"{path} is an encrypted bundle: give its passphrase (key=..., ${need}, or "
                                  "type it when `covip import-memory` asks)")
        errors = []
        for secret, source in secrets_to_try:
            try:
                bundle_key = _unwrap(slot, derive_kek(secret, slot["kdf"]), f"bundle {path.name}", source)
            except WrongKeyError as exc:
                errors.append(str(exc))
                continue
            return SealedReader(fh, lambda _h, k=bundle_key: k, _file_info("bundle", ""), what=f"bundle {path}")
        raise WrongKeyError(f"no key given unlocks the encrypted bundle {path}: " + "; ".join(errors))
    except BaseException:
        fh.close()
        raise


# ---------------------------------------------------------------------------------------------- file seam
def write_file(dest: Path, data: bytes, tmp_dir: Path, key: HomeKey | None, role: str, *,
               durable: bool = True) -> None:
    """Write a home file atomically, sealed when the home is encrypted (the one seam for file writes)."""
    if key is not None:
        data = key.seal(data, role, dest.name)
    atomic_write_bytes(dest, data, tmp_dir, durable=durable)


def read_file(path: Path, key: HomeKey | None, role: str) -> bytes:
    """Read a home file written by :func:`write_file` (DecryptError when a sealed one was altered)."""
    data = read_bytes(path)
    return data if key is None else key.unseal(data, role, path.name)


@contextlib.contextmanager
def bundle_sink(path: Path, key: HomeKey | None) -> Iterator[IO[bytes]]:
    """A binary stream writing ``path``: sealed as an encrypted bundle under ``key``'s passphrase, or plain when
    ``key`` is None. Closed (the last segment written) when the block ends."""
    with open(path, "wb") as fh:
        if key is None:
            yield fh
            return
        writer = key.bundle_writer(fh)
        try:
            yield writer
        finally:
            writer.close()


def bundle_secrets(key: Any, home_key: HomeKey | None) -> list[tuple[Secret, str]]:
    """The secrets to try on an encrypted bundle, in order: ``key``, ``$COVIP_PASSPHRASE`` / ``$COVIP_KEY``, the
    passphrase the importing home was opened with."""
    out: list[tuple[Secret, str]] = []
    if key is not None:
        out.append((_check_secret(key, creating=False), "given key"))
    if os.environ.get(PASSPHRASE_ENV):
        out.append((os.environ[PASSPHRASE_ENV], f"passphrase in ${PASSPHRASE_ENV}"))
    raw = os.environ.get(KEY_ENV, "").strip()
    if raw:
        with contextlib.suppress(ValueError):
            out.append((bytes.fromhex(raw), f"${KEY_ENV}"))
    if home_key is not None and home_key.secret() is not None:
        out.append((home_key.secret(), "passphrase of this memory"))
    return out
