"""The sealed-file format of an encrypted home: segmented AES-256-GCM with a key per file.

It is the construction of Tink's AesGcmHkdfStreaming: a random salt per file gives a per-file key (HKDF-SHA256
over the caller's key, the salt and the file's role and name), so rewriting files millions of times never
nears AES-GCM's random-nonce limit and a file cannot pass for another; 1 MiB segments carry a counter and a
last-segment flag in the nonce, which stops truncation and reordering, lifts AES-GCM's 2 GiB single-call
limit and lets a file be read as a seekable stream (a bundle is unzipped with no plaintext on disk)::

    "COVIPENC" | version (1 byte) | header length (4 bytes) | header | salt (16) | nonce prefix (7) | segments

Every segment is AES-GCM(key_file, prefix | counter (4) | last (1), plaintext, magic..header). The header is
empty for home files; an encrypted bundle carries its wrapped key there (see :mod:`covip.sdk.memory.crypto`).
"""

from __future__ import annotations

import io
import os
import secrets
import struct
from collections.abc import Callable
from typing import IO, Any

from covip.sdk._extras import require
from covip.sdk.errors import DecryptError, EncryptionError

__all__ = ["MAGIC", "VERSION", "SEGMENT", "PRELUDE", "FEATURE", "seal", "unseal", "is_sealed", "SealedWriter",
           "SealedReader", "aesgcm", "hkdf", "require_cryptography"]

MAGIC = b"COVIPENC"
VERSION = 1
SEGMENT = 1 << 20  # plaintext bytes per AES-GCM segment
_TAG = 16
_SALT = 16
_PREFIX = 7
PRELUDE = struct.Struct(">8sBI")  # magic, version, header length
FEATURE = "encryption at rest"


def require_cryptography() -> Any:
    """The ``cryptography`` package, or MissingExtraError naming ``covip[encrypt]``."""
    return require("cryptography", feature=FEATURE, extra="encrypt")


def aesgcm(key: bytes) -> Any:
    """An AES-GCM cipher object for ``key`` (from ``cryptography``)."""
    require_cryptography()
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM(key)


def hkdf(ikm: bytes, info: bytes, salt: bytes | None = None) -> bytes:
    """A 32-byte key derived from ``ikm`` with HKDF-SHA256 for ``info`` (and ``salt``)."""
    require_cryptography()
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)


def _segment_nonce(prefix: bytes, index: int, last: bool) -> bytes:
    if index >= 2**32:
        raise EncryptionError("file too large to seal (over 2**32 segments)")
    return prefix + struct.pack(">I", index) + (b"\x01" if last else b"\x00")


def seal(data: bytes | memoryview, key: bytes, info: bytes, *, header: bytes = b"") -> bytes:
    """Seal ``data`` in one go (see the module docstring for the format)."""
    if len(data) <= SEGMENT:  # one segment (every photo): no stream, no extra copies
        salt, prefix = secrets.token_bytes(_SALT), secrets.token_bytes(_PREFIX)
        prelude = PRELUDE.pack(MAGIC, VERSION, len(header)) + header
        body = aesgcm(hkdf(key, info, salt)).encrypt(_segment_nonce(prefix, 0, True), data, prelude)
        return b"".join((prelude, salt, prefix, body))
    out = io.BytesIO()
    with SealedWriter(out, key, info, header=header, close_fh=False) as w:
        w.write(data)
    return out.getvalue()


def unseal(blob: bytes, key: bytes, info: bytes, *, what: str = "data") -> bytes:
    """Open a sealed blob; :class:`DecryptError` when it is damaged, altered or sealed for another name."""
    reader = SealedReader(io.BytesIO(blob), lambda _header: key, info, what=what)
    return reader.read_all()


def is_sealed(data_or_path: bytes | str | os.PathLike[str]) -> bool:
    """Whether bytes (or a file) start with covip's sealed-file magic."""
    if isinstance(data_or_path, (bytes, bytearray)):
        return bytes(data_or_path[:8]) == MAGIC
    try:
        with open(data_or_path, "rb") as fh:
            return fh.read(8) == MAGIC
    except OSError:
        return False


class SealedWriter(io.RawIOBase):
    """Write-only, non-seekable stream that seals what is written (zipfile writes bundles through it)."""

    def __init__(self, fh: IO[bytes], key: bytes, info: bytes, *, header: bytes = b"", close_fh: bool = True):
        super().__init__()
        self._fh, self._close_fh = fh, close_fh
        salt, self._prefix = secrets.token_bytes(_SALT), secrets.token_bytes(_PREFIX)
        prelude = PRELUDE.pack(MAGIC, VERSION, len(header)) + header
        self._aad = prelude
        self._gcm = aesgcm(hkdf(key, info, salt))
        self._buf = bytearray()
        self._index = 0
        self._pos = 0
        fh.write(prelude + salt + self._prefix)

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def write(self, b: Any) -> int:
        if self.closed:
            raise ValueError("write to a closed SealedWriter")
        view = memoryview(b).cast("B")
        n, pos = len(view), 0
        while pos < n:  # a full segment goes out only once more data follows: the last one is never empty
            if len(self._buf) == SEGMENT:
                self._emit(bytes(self._buf), last=False)
                self._buf.clear()
            if not self._buf and n - pos > SEGMENT:
                self._emit(view[pos:pos + SEGMENT], last=False)
                pos += SEGMENT
                continue
            take = min(SEGMENT - len(self._buf), n - pos)
            self._buf += view[pos:pos + take]
            pos += take
        self._pos += n
        return n

    def _emit(self, chunk: bytes | memoryview, *, last: bool) -> None:
        self._fh.write(self._gcm.encrypt(_segment_nonce(self._prefix, self._index, last), chunk, self._aad))
        self._index += 1

    def close(self) -> None:
        if self.closed:
            return
        try:
            self._emit(bytes(self._buf), last=True)
            self._buf.clear()
            if self._close_fh:
                self._fh.close()
        finally:
            super().close()


class SealedReader(io.RawIOBase):
    """Seekable read-only view of a sealed file: segments are decrypted (and authenticated) on demand, so a
    bundle is unzipped without its plaintext ever touching the disk. ``key_for(header)`` returns the key."""

    def __init__(self, fh: IO[bytes], key_for: Callable[[bytes], bytes], info: bytes, *, what: str,
                 close_fh: bool = True):
        super().__init__()
        self._fh, self._close_fh, self._what = fh, close_fh, what
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(0)
        head = fh.read(PRELUDE.size)
        if len(head) < PRELUDE.size:
            raise DecryptError(f"{what} is too short to be a sealed file; it is damaged")
        magic, version, hlen = PRELUDE.unpack(head)
        if magic != MAGIC:
            raise DecryptError(f"{what} is not encrypted by covip (no sealed-file header); it was replaced or "
                               "damaged")
        if version > VERSION:
            raise EncryptionError(f"{what} was sealed by a newer covip; upgrade covip")
        if hlen > 1 << 20 or PRELUDE.size + hlen + _SALT + _PREFIX > size:
            raise DecryptError(f"{what} has a bad header; it is damaged")
        self.header = fh.read(hlen)
        salt, self._prefix = fh.read(_SALT), fh.read(_PREFIX)
        self._aad = head + self.header
        self._gcm = aesgcm(hkdf(key_for(self.header), info, salt))
        self._start = PRELUDE.size + hlen + _SALT + _PREFIX
        body = size - self._start
        full = SEGMENT + _TAG
        self._count = max(1, -(-body // full))
        last_ct = body - (self._count - 1) * full
        if last_ct < _TAG:
            raise DecryptError(f"{what} is truncated; it is damaged")
        self._size = (self._count - 1) * SEGMENT + last_ct - _TAG
        self._pos = 0
        self._cached: tuple[int, bytes] | None = None

    @property
    def size(self) -> int:
        """Plaintext size."""
        return self._size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def _segment(self, index: int) -> bytes:
        if self._cached is not None and self._cached[0] == index:
            return self._cached[1]
        from cryptography.exceptions import InvalidTag

        full = SEGMENT + _TAG
        self._fh.seek(self._start + index * full)
        ct = self._fh.read(full)
        last = index == self._count - 1
        try:
            plain = self._gcm.decrypt(_segment_nonce(self._prefix, index, last), ct, self._aad)
        except InvalidTag:
            raise DecryptError(f"{self._what} fails authentication (altered, damaged, or not this file); it "
                               "is not used") from None
        self._cached = (index, plain)
        return plain

    def readinto(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        done = 0
        while done < len(view) and self._pos < self._size:
            index, offset = divmod(self._pos, SEGMENT)
            seg = self._segment(index)
            n = min(len(view) - done, len(seg) - offset)
            view[done:done + n] = seg[offset:offset + n]
            done += n
            self._pos += n
        return done

    def read_all(self) -> bytes:
        """The whole plaintext (every segment authenticated)."""
        self.seek(0)
        parts = [self._segment(i) for i in range(self._count)]
        self._pos = self._size
        return b"".join(parts)

    def close(self) -> None:
        if not self.closed and self._close_fh:
            self._fh.close()
        super().close()
