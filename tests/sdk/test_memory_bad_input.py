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
from covip.sdk.memory.validate import MAX_K
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
    # resource bounds: one limit on k everywhere, checked before FAISS allocates anything
    ("search k above the limit", lambda m, t: m.search("ana", embedding=unit_vector(1), model_id=MODEL, k=MAX_K + 1),
     InputError, str(MAX_K)),
    ("search k=10**9", lambda m, t: m.search("ana", embedding=unit_vector(1), model_id=MODEL, k=10**9),
     InputError, str(MAX_K)),
    ("search k=2**31", lambda m, t: m.search("ana", embedding=unit_vector(1), model_id=MODEL, k=2**31),
     InputError, str(MAX_K)),
    ("search k=2**70", lambda m, t: m.search("ana", embedding=unit_vector(1), model_id=MODEL, k=2**70),
     InputError, str(MAX_K)),
    ("history limit 2**70", lambda m, t: m.history("ana", limit=2**70), InputError, "limit"),
    ("history limit True", lambda m, t: m.history("ana", limit=True), InputError, "limit"),
    ("search include_shared='no'", lambda m, t: m.search("ana", embedding=unit_vector(1), model_id=MODEL,
                                                         include_shared="no"), InputError, "include_shared"),
    # ids: one validator (int, not bool, 1..2**63-1) for every method that takes one
    ("forget photo id 2**70", lambda m, t: m.forget_photo("ana", 2**70), InputError, "range"),
    ("forget photo id -1", lambda m, t: m.forget_photo("ana", -1), InputError, "range"),
    ("find photo id 0", lambda m, t: m.find_photo("ana", 0), InputError, "range"),
    ("caption context id 2**70", lambda m, t: m.cache_caption("ana", "x", model_id="m", prompt_version="1",
                                                              photo_sha256="ab", context_ids=[2**70]),
     InputError, "range"),
    ("caption context id text", lambda m, t: m.cached_caption("ana", model_id="m", prompt_version="1",
                                                              photo_sha256="ab", context_ids=["1; DROP"]),
     InputError, "integer"),
    ("remember concepts=None", lambda m, t: remember(m, png_bytes(3), concepts=None), InputError, "concepts"),
    ("remember a vector of another length under the same model",
     lambda m, t: remember(m, png_bytes(3), embedding=unit_vector(5, 16)), InputError, "dimensions"),
    ("remember with 1001 concepts", lambda m, t: remember(m, png_bytes(3), concepts=[f"c{i}" for i in range(1001)]),
     InputError, "1000"),
    ("dialogue with 1001 turns", lambda m, t: remember(m, png_bytes(3), dialogue=[("user", "hi")] * 1001),
     InputError, "turns"),
    ("remember a non-numeric embedding", lambda m, t: remember(m, png_bytes(3), embedding="abc"), InputError,
     "embedding"),
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



# ----------------------------------------------------------------------------------- hostile values, every method
HOSTILE = [None, 2**70, -1, 0, True, 1.5, "", "../x", "x" * 1_000_000, b"\x00\xff", object(), ["Bori", None],
           {"a": 1}]


def _valid_args(mem: Memory, tmp: Path) -> dict[str, dict]:
    """A valid call of every public Memory method (the hostile test swaps one argument at a time)."""
    pid = mem.photos("ana")[0].id
    sha = mem.photos("ana")[0].sha256
    bundle = tmp / "ana.zip"
    if not bundle.exists():
        mem.export_user("ana", bundle)
    caption = {"model_id": "m", "prompt_version": "1", "photo_sha256": sha, "context_ids": [pid]}
    eid = mem.history("ana")[-1].episode.id
    recall = {"user": "ana", "embedding": unit_vector(1), "k": 2, "model_id": MODEL, "include_shared": True}
    return {
        "open": {"home": tmp / "other-home", "embedder": None, "config": None},
        "start_fresh": {"home": tmp / "fresh-home"},
        "users": {},
        "add_user": {"name": "carl", "exist_ok": True},
        "concepts": {"user": "ana"},
        "add_concept": {"user": "ana", "name": "Rex", "kind": "pet", "notes": "a dog"},
        "update_concept": {"user": "ana", "name": "Bori", "kind": "pet", "notes": "good dog"},
        "rename_concept": {"user": "ana", "old": "Mom", "new": "Mother"},
        "merge_concepts": {"user": "ana", "sources": ["Mom"], "into": "Bori"},
        "share_concept": {"user": "ana", "name": "Bori", "with_user": "ben"},
        "unshare_concept": {"user": "ana", "name": "Bori", "with_user": "ben"},
        "remember": {"user": "ana", "photo": png_bytes(7), "dialogue": "User: hi", "concepts": ["Bori"],
                     "taken_at": "2024-05-01", "place": "park", "embedding": unit_vector(7), "model_id": MODEL,
                     "original_name": "day.png"},
        "recall": recall,
        "search": recall,
        "history": {"user": "ana", "concept": "Bori", "limit": 2},
        "photos": {"user": "ana"},
        "find_photo": {"user": "ana", "photo": pid},
        "forget_photo": {"user": "ana", "photo": pid},
        "forget_concept": {"user": "ana", "name": "Mom", "keep_shared_photos": False},
        "forget_user": {"user": "ben"},
        "photo_concepts": {"user": "ana", "photo": pid},
        "tag_photo": {"user": "ana", "photo": pid, "concept": "Mom"},
        "untag_photo": {"user": "ana", "photo": pid, "concept": "Bori"},
        "move_photo": {"user": "ana", "photo": pid, "from_concept": "Bori", "to_concept": "Mom"},
        "retag_photo": {"user": "ana", "photo": pid, "from_concept": "Bori", "to_concept": "Mom"},
        "update_episode": {"user": "ana", "episode_id": eid, "dialogue": "User: fixed", "taken_at": "2024-05-02",
                           "place": "park"},
        "forget_episode": {"user": "ana", "episode_id": eid},
        "delete_episode": {"user": "ana", "episode_id": eid},
        "cached_caption": {"user": "ana", **caption},
        "cache_caption": {"user": "ana", "caption": "a dog", **caption},
        "export_memory": {"user": "ana", "path": tmp / "out.zip"},
        "export_user": {"user": "ana", "path": tmp / "out.zip"},
        "import_memory": {"path": bundle, "user": "ana-copy", "merge": True},
        "import_bundle": {"path": bundle, "user": "ana-copy", "merge": True},
        "load_memory_photo": {"photo": pid, "max_side": 64},
        "read_photo_bytes": {"photo": pid},
        "verify": {"deep": True},
        "repair": {},
        "flush": {},
        "close": {},
    }


def _public_methods() -> list[str]:
    import inspect

    return sorted(n for n in dir(Memory) if not n.startswith("_")
                  and not isinstance(inspect.getattr_static(Memory, n), property))


def test_every_public_method_has_a_hostile_input_case(seeded) -> None:
    mem, tmp = seeded
    assert set(_valid_args(mem, tmp)) == set(_public_methods()), \
        "add the new public Memory method to _valid_args so it is tried with hostile values"


@pytest.mark.parametrize("method", _public_methods())
def test_hostile_values_get_input_or_not_found_errors(seeded, tiny_embedder, method, monkeypatch) -> None:
    """Each parameter of each public method, one at a time, gets None, 2**70, -1, '', '../x', a 1 MB string,
    bytes, objects...: the call either works or raises InputError/NotFoundError (ConflictError when an
    earlier accepted call already made the same thing); no TypeError, OverflowError or other crash escapes."""
    import inspect

    mem, tmp = seeded
    mem._embedder = tiny_embedder  # model_id=None means "the home's embedder": a real one, offline
    (tmp / method).mkdir()
    monkeypatch.chdir(tmp / method)  # relative paths such as '../x' stay inside this test's folder
    monkeypatch.setenv("COVIP_HOME", str(tmp / "default-home"))  # home=None must not touch the real one
    valid = _valid_args(mem, tmp)[method]
    assert set(valid) <= set(inspect.signature(getattr(Memory, method)).parameters)
    target = Memory if method in ("open", "start_fresh") else mem
    for name in valid:
        for value in HOSTILE:
            args = {**valid, name: value}
            try:
                out = getattr(target, method)(**args)
            except (InputError, NotFoundError, ConflictError):
                continue
            except Exception as exc:  # noqa: BLE001 - the point of the test
                pytest.fail(f"{method}({name}={value!r:.40}) raised {type(exc).__name__}: {exc!s:.300}")
            if isinstance(out, Memory):
                out.close()
    if method != "close":
        assert mem.verify().ok, mem.verify().errors


def test_index_caps_k_at_its_size_before_searching() -> None:
    from covip.sdk.memory import VectorIndex

    index = VectorIndex(32)
    index.add(np.array([1, 2, 3]), np.stack([unit_vector(i) for i in range(3)]))
    scores, ids = index.search(unit_vector(0)[None, :], MAX_K)
    assert ids.shape == (1, 3) and sorted(ids[0].tolist()) == [1, 2, 3]
    assert index.search(unit_vector(0)[None, :], 10, allowed_ids=np.array([2]))[1].shape == (1, 1)
    with pytest.raises(InputError, match=str(MAX_K)):
        index.search(unit_vector(0)[None, :], MAX_K + 1)


def test_cli_recall_refuses_k_above_the_limit(seeded, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from covip.sdk.cli import cli

    mem, _ = seeded
    (mem.home / "config.json").write_text('{"embedder": {"model": "tiny", "pretrained": null}}')
    shown = write(tmp_path, "q.png", png_bytes(5))
    for k in (str(MAX_K + 1), "1000000000"):
        result = CliRunner().invoke(cli, ["--home", str(mem.home), "recall", str(shown), "--user", "ana", "-k", k])
        assert result.exit_code == 2, result.output
        assert f"1<=x<={MAX_K}" in result.stderr


def test_a_file_given_as_the_home_is_an_input_error(tmp_path: Path) -> None:
    """A home path naming an existing file (a bundle, a photo) is refused clearly, and the file is untouched."""
    not_a_home = tmp_path / "ana.zip"
    not_a_home.write_bytes(b"PK\x05\x06" + b"\x00" * 18)
    with pytest.raises(InputError, match="is a file, not a folder"):
        Memory.open(not_a_home)
    assert not_a_home.read_bytes() == b"PK\x05\x06" + b"\x00" * 18
