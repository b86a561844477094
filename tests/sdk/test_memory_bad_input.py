"""Bad photos and bad arguments: each gets its own clear error, and the memory is left exactly as it was."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from covip.sdk import (
    ConflictError,
    CovipError,
    EmptyImageError,
    ImageTooLargeError,
    InputError,
    Memory,
    MemoryConfig,
    NotAnImageError,
    NotFoundError,
    TruncatedImageError,
)
from tests.conftest import draw_photo, home_fingerprint, unit_vector

MODEL = "test/32"


def png_bytes(seed: int = 1) -> bytes:
    buf = io.BytesIO()
    draw_photo(seed).save(buf, "PNG")
    return buf.getvalue()


def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A tiny PNG whose header claims a huge 1-bit image (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = zlib.compress(b"\x00" * (1 + width // 8) * 16)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", raw) + chunk(b"IEND", b""))


def jpeg_bytes() -> bytes:
    buf = io.BytesIO()
    draw_photo(2).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture
def seeded(tmp_path: Path):
    """A memory holding two users, concepts, photos and an index on disk; yields (mem, tmp_path)."""
    cfg = MemoryConfig(home=tmp_path / "home", max_pixels=5_000_000)
    with Memory(cfg) as mem:
        mem.add_user("ana")
        mem.add_user("ben")
        mem.add_concept("ana", "Bori", kind="pet")
        mem.add_concept("ana", "Mom", kind="person")
        for i in range(3):
            mem.remember("ana", draw_photo(10 + i), f"User: day {i}", concepts=["Bori"],
                         embedding=unit_vector(i), model_id=MODEL)
        mem.flush()
        yield mem, tmp_path


def remember(mem: Memory, photo, **kw):
    args = dict(dialogue="User: hello", concepts=["Bori"], embedding=unit_vector(99), model_id=MODEL)
    args.update(kw)
    return mem.remember("ana", photo, **args)


def write(tmp: Path, name: str, data: bytes) -> Path:
    p = tmp / name
    p.write_bytes(data)
    return p


# (id, call(mem, tmp), expected error class, text the message must contain)
CASES = [
    ("zero-byte file", lambda m, t: remember(m, write(t, "empty.jpg", b"")), EmptyImageError, "empty"),
    ("empty bytes", lambda m, t: remember(m, b""), EmptyImageError, "empty"),
    ("text file named .jpg", lambda m, t: remember(m, write(t, "notes.jpg", b"just some text, not a photo")),
     NotAnImageError, "not"),
    ("truncated PNG", lambda m, t: remember(m, write(t, "cut.png", png_bytes()[: len(png_bytes()) // 2])),
     TruncatedImageError, "truncated"),
    ("truncated JPEG", lambda m, t: remember(m, write(t, "cut.jpg", jpeg_bytes()[: len(jpeg_bytes()) // 2])),
     TruncatedImageError, "truncated"),
    ("corrupt PNG body", lambda m, t: remember(m, png_bytes()[:60] + b"\x00" * 200 + png_bytes()[260:]),
     TruncatedImageError, ""),
    ("decompression bomb", lambda m, t: remember(m, write(t, "bomb.png", bomb_png())), ImageTooLargeError, "pixels"),
    ("over the configured pixel limit", lambda m, t: remember(m, Image.new("RGB", (3000, 2000))),
     ImageTooLargeError, "pixels"),
    ("missing path", lambda m, t: remember(m, t / "nope.jpg"), InputError, "nope.jpg"),
    ("directory instead of photo", lambda m, t: remember(m, t), InputError, "director"),
    ("unsupported photo type", lambda m, t: remember(m, 12345), InputError, "int"),
    ("unknown user", lambda m, t: m.remember("zoe", png_bytes(3), "hi", embedding=unit_vector(5), model_id=MODEL),
     NotFoundError, "zoe"),
    ("empty concept name", lambda m, t: remember(m, png_bytes(3), concepts=["  "]), InputError, "concept name"),
    ("concept name with control chars", lambda m, t: remember(m, png_bytes(3), concepts=["Bo\x00ri"]),
     InputError, "control"),
    ("bad concept kind", lambda m, t: m.add_concept("ana", "Rex", kind="dinosaur"), InputError, "kind"),
    ("duplicate concept", lambda m, t: m.add_concept("ana", "bori"), ConflictError, "already"),
    ("rename onto existing", lambda m, t: m.rename_concept("ana", "Bori", "Mom"), ConflictError, "merge"),
    ("merge into itself", lambda m, t: m.merge_concepts("ana", ["Bori"], "Bori"), ConflictError, "itself"),
    ("unparsable taken_at", lambda m, t: remember(m, png_bytes(3), taken_at="last tuesday"), InputError, "ISO"),
    ("bad dialogue role", lambda m, t: remember(m, png_bytes(3), dialogue=[("narrator", "x")]), InputError, "role"),
    ("empty dialogue turn", lambda m, t: remember(m, png_bytes(3), dialogue=[{"role": "user", "text": ""}]),
     InputError, "no text"),
    ("blank dialogue text", lambda m, t: remember(m, png_bytes(3), dialogue="   "), InputError, "empty"),
    ("embedding with NaN", lambda m, t: remember(m, png_bytes(3), embedding=np.full(32, np.nan)), InputError, "NaN"),
    ("all-zero embedding", lambda m, t: remember(m, png_bytes(3), embedding=np.zeros(32)), InputError, "zeros"),
    ("model_id without embedding", lambda m, t: remember(m, png_bytes(3), embedding=None), InputError, "model_id"),
    ("search with wrong dimension", lambda m, t: m.search("ana", embedding=unit_vector(1, 16), model_id=MODEL),
     InputError, "dimensions"),
    ("search with k=0", lambda m, t: m.search("ana", embedding=unit_vector(1), model_id=MODEL, k=0), InputError, "k"),
    ("search with image and embedding", lambda m, t: m.search("ana", png_bytes(), embedding=unit_vector(1)),
     InputError, "exactly one"),
    ("user name empty", lambda m, t: m.add_user(""), InputError, "empty"),
    ("duplicate user", lambda m, t: m.add_user("ben"), ConflictError, "exists"),
    ("share with self", lambda m, t: m.share_concept("ana", "Bori", "ana"), ConflictError, "themselves"),
    ("forget unknown photo", lambda m, t: m.forget_photo("ana", png_bytes(42)), NotFoundError, "no remembered photo"),
    ("forget unknown concept", lambda m, t: m.forget_concept("ana", "Nobody"), NotFoundError, "Nobody"),
    ("import missing bundle", lambda m, t: m.import_bundle(t / "missing.zip"), InputError, "missing.zip"),
    ("export onto a directory", lambda m, t: m.export_user("ana", t), InputError, "directory"),
    ("place too long", lambda m, t: remember(m, png_bytes(3), place="x" * 600), InputError, "place"),
]


@pytest.mark.parametrize("call,error,text", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gets_a_clear_error_and_changes_nothing(seeded, call, error, text) -> None:
    mem, tmp = seeded
    before = home_fingerprint(mem.home)
    with pytest.raises(error) as info:
        call(mem, tmp)
    assert isinstance(info.value, CovipError)
    message = str(info.value)
    assert len(message) > 20, message
    assert text.lower() in message.lower(), message
    assert home_fingerprint(mem.home) == before
    assert list((mem.home / "tmp").iterdir()) == []  # no half-written temp files
    assert mem.verify().ok

