"""Hostile memory bundles: each case is a real export tampered with by zipfile (checksums rewritten so only
the property under test is wrong), imported into a real home. A bad bundle is refused with a BundleError
before anything is written; no path from a bundle is ever opened; nothing in a bundle can brick the home."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import sqlite3
import struct
import warnings
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from covip.sdk import BundleError, ConflictError, InputError, Memory, MemoryConfig
from tests.conftest import home_fingerprint, unit_vector

MODEL = "test/32"
VEC = "vectors/model-0.npz"
SECRET = b"TOP-SECRET-not-a-photo-" + os.urandom(8).hex().encode()


@pytest.fixture
def mem(home: Path):
    """A home without an embedder (every vector is given with model_id=MODEL): fast, nothing to build."""
    with Memory.open(home) as m:
        yield m


@pytest.fixture
def good(mem: Memory, photo_factory, tmp_path: Path) -> Path:
    """ana's memory (one concept, two photos with dialogues, places, times, 32-d vectors) as a real bundle."""
    mem.add_user("ana")
    mem.add_concept("ana", "Bori", kind="pet", notes="white jindo")
    for i in range(2):
        mem.remember("ana", photo_factory(i), f"User: Bori on day {i}\nAssistant: lovely", concepts=["Bori"],
                     taken_at=f"2024-0{i + 1}-01", place="Seoul", embedding=unit_vector(i), model_id=MODEL)
    path = mem.export_user("ana", tmp_path / "ana.zip")
    mem.flush()
    return path


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "outside" / "secret.txt"
    path.parent.mkdir()
    path.write_bytes(SECRET)
    return path


def tamper(src: Path, dst: Path, *, rows: Callable[[dict], Any] | None = None,
           members: Callable[[dict[str, bytes]], Any] | None = None,
           manifest: Callable[[dict], Any] | None = None) -> Path:
    """Copy a bundle, editing rows.json, raw members, then the manifest; member checksums are recomputed
    (before ``manifest`` runs), so only the edited property is wrong."""
    with zipfile.ZipFile(src) as zf:
        parts = {i.filename: zf.read(i) for i in zf.infolist()}
    man = json.loads(parts.pop("manifest.json"))
    if rows is not None:
        doc = json.loads(parts["rows.json"])
        rows(doc)
        parts["rows.json"] = json.dumps(doc).encode()
    if members is not None:
        members(parts)
    man["files"] = {n: hashlib.sha256(d).hexdigest() for n, d in parts.items()}
    if manifest is not None:
        manifest(man)
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("manifest.json", json.dumps(man))
        for name, data in parts.items():
            zf.writestr(name, data)
    return dst


def npz(**arrays: Any) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def vectors_of(parts: dict[str, bytes]) -> tuple[np.ndarray, np.ndarray]:
    with np.load(io.BytesIO(parts[VEC])) as z:
        return z["photo_ids"], z["vectors"]


def set_vectors(ids: np.ndarray | None = None, vecs: np.ndarray | None = None,
                **extra: Any) -> Callable[[dict[str, bytes]], None]:
    """A members edit replacing the vectors of MODEL (None keeps that array)."""
    def edit(parts: dict[str, bytes]) -> None:
        old_ids, old_vecs = vectors_of(parts)
        parts[VEC] = npz(photo_ids=old_ids if ids is None else ids, vectors=old_vecs if vecs is None else vecs,
                         **extra)
    return edit


def image_name(bundle: Path, n: int = 0) -> str:
    with zipfile.ZipFile(bundle) as zf:
        return json.loads(zf.read("rows.json"))["photos"][n]["file"]


def refused(mem: Memory, bundle: Path, match: str, **kw: Any) -> BundleError:
    """Importing ``bundle`` raises a BundleError matching ``match`` and changes nothing in the home."""
    before = home_fingerprint(mem.home)
    with pytest.raises(BundleError, match=match) as info:
        mem.import_bundle(bundle, **kw)
    assert home_fingerprint(mem.home) == before
    assert not any((mem.home / "tmp").iterdir()), list((mem.home / "tmp").iterdir())
    return info.value


# ------------------------------------------------------------------------------ item 2: no file is read from a path
@pytest.mark.parametrize("target", ["/etc/passwd", "secret"])
def test_photo_row_without_carried_file_is_refused(mem: Memory, good: Path, secret: Path, tmp_path: Path,
                                                   target: str) -> None:
    """A row with ``file: null`` and a ``source_path`` used to import unchecked and then serve that file."""
    source = str(secret) if target == "secret" else target
    name = image_name(good)

    def drop_file(doc: dict) -> None:
        doc["photos"][0].update(file=None, source_path=source)

    bad = tamper(good, tmp_path / "bad.zip", rows=drop_file, members=lambda parts: parts.pop(name))
    err = refused(mem, bad, "carries no image", user="eve")
    assert "every photo" in str(err)
    assert source not in str(err)  # the path is not even echoed


def test_source_path_from_a_bundle_is_never_stored(mem: Memory, good: Path, secret: Path, tmp_path: Path) -> None:
    """A row that carries its image and also a source_path: the image is imported, the path is dropped."""
    def add_path(doc: dict) -> None:
        for p in doc["photos"]:
            p["source_path"] = str(secret)

    mem.import_bundle(tamper(good, tmp_path / "b.zip", rows=add_path), user="eve")
    with sqlite3.connect(mem.home / "memory.db") as conn:
        paths = conn.execute("SELECT p.source_path FROM photos p JOIN users u ON u.id = p.user_id "
                             "WHERE u.name = 'eve'").fetchall()
    assert paths == [(None,), (None,)]
    for record in mem.photos("eve"):
        assert record.path is not None and (mem.home / "photos") in record.path.parents
        assert SECRET not in record.path.read_bytes()


def test_home_without_copies_stores_imported_photos_and_exports_their_bytes(photo_factory, tmp_path: Path) -> None:
    """store_copies=False keeps only original paths; its export must still carry the bytes, and an import
    into such a home stores the bundle's photos (the bundle is their only source), never a path."""
    originals = [photo_factory(i) for i in range(2)]
    with Memory.open(config=MemoryConfig(home=tmp_path / "a", store_copies=False)) as a:
        a.add_user("ana")
        for i, p in enumerate(originals):
            a.remember("ana", p, "User: hi", embedding=unit_vector(i), model_id=MODEL)
        bundle = a.export_user("ana", tmp_path / "a.zip")
    for p in originals:
        p.rename(p.with_suffix(".moved"))  # the originals leave; the bundle must not need them
    with Memory.open(config=MemoryConfig(home=tmp_path / "b", store_copies=False)) as b:
        assert b.import_bundle(bundle)["photos"] == 2
        for record in b.photos("ana"):
            assert (tmp_path / "b" / "photos") in record.path.parents
            assert hashlib.sha256(record.path.read_bytes()).hexdigest() == record.sha256


def test_http_photo_endpoint_never_serves_a_file_named_by_a_bundle(good: Path, secret: Path, tmp_path: Path,
                                                                    tiny_engine, tiny_embedder) -> None:
    """The reported attack end to end on a real server: import through POST /v1/import, then GET the photos."""
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("fastapi")
    from covip.sdk.server import BackgroundServer, ServeConfig
    from tests.sdk.serve_util import fast_assistant

    name = image_name(good)
    with zipfile.ZipFile(good) as zf:
        images = {json.loads(zf.read("rows.json"))["photos"][n]["sha256"]: zf.read(image_name(good, n))
                  for n in range(2)}

    def point_outside(doc: dict) -> None:
        doc["photos"][0].update(file=None, source_path=str(secret))
        doc["photos"][1]["source_path"] = str(secret)

    hostile = tamper(good, tmp_path / "hostile.zip", rows=point_outside, members=lambda parts: parts.pop(name))
    also_path = tamper(good, tmp_path / "also.zip", rows=lambda d: [p.update(source_path=str(secret))
                                                                   for p in d["photos"]])
    bot = fast_assistant(tmp_path / "served", tiny_engine, tiny_embedder)
    try:
        with BackgroundServer(bot, ServeConfig(port=0)) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
            r = c.post("/v1/import", files={"bundle": ("h.zip", hostile.read_bytes(), "application/zip")})
            assert r.status_code == 400 and "carries no image" in r.json()["error"]["message"], r.text
            r = c.post("/v1/import", files={"bundle": ("a.zip", also_path.read_bytes(), "application/zip")},
                       data={"user": "eve"})
            assert r.status_code == 201, r.text
            served = 0
            for u in c.get("/v1/users").json()["data"]:
                for photo in c.get(f"/v1/users/{u['name']}/photos").json()["data"]:
                    body = c.get(f"/v1/users/{u['name']}/photos/{photo['id']}").content
                    assert SECRET not in body and b"root:" not in body
                    assert body == images[photo["sha256"]]
                    served += 1
            assert served == 2
        for record in bot.memory.photos("eve"):
            assert (tmp_path / "served" / "photos") in record.path.parents
    finally:
        bot.close()
        bot.memory.close()


# ------------------------------------------------------------------------------ item 3: nothing can brick the home
def test_wrong_dimension_vectors_are_refused_and_the_home_still_opens(mem: Memory, good: Path, tmp_path: Path) -> None:
    """3-d vectors under the home's 32-d model id used to merge in and crash every later Memory.open."""
    small = np.eye(2, 3, dtype=np.float32)

    def dim3(man: dict) -> None:
        man["embedding_models"][0]["dim"] = 3

    bad = tamper(good, tmp_path / "dim3.zip", members=set_vectors(vecs=small), manifest=dim3)
    refused(mem, bad, "3 dimensions but this memory's have 32", user="ana", merge=True)
    refused(mem, bad, "3 dimensions but this memory's have 32", user="eve")  # one dim per model id, home-wide
    mem.close()
    with Memory.open(mem.home) as again:
        assert len(again.search("ana", embedding=unit_vector(0), model_id=MODEL, k=2)) == 2


def _huge_npy() -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": (10**9, 32)})
    return buf.getvalue() + b"\0" * 256


def _npz_members(**members: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _ids_npy() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.array([1, 2], dtype=np.int64))
    return buf.getvalue()


VECTOR_CASES: dict[str, tuple[Callable, Callable | None, str]] = {
    # name: (members edit, manifest edit, expected message)
    "float64": (lambda p: set_vectors(vecs=vectors_of(p)[1].astype(np.float64))(p), None, "must be float32"),
    "big-endian": (lambda p: set_vectors(vecs=vectors_of(p)[1].astype(">f4"))(p), None, "must be float32"),
    "not unit length": (lambda p: set_vectors(vecs=vectors_of(p)[1] * 2)(p), None, "not unit length"),
    "zero vector": (lambda p: set_vectors(vecs=np.zeros((2, 32), np.float32))(p), None, "not unit length"),
    "NaN": (lambda p: set_vectors(vecs=np.full((2, 32), np.nan, np.float32))(p), None, "NaN"),
    "count differs from manifest": (lambda p: None,
                                    lambda m: m["embedding_models"][0].update(count=3), "manifest counts"),
    "manifest dim differs": (lambda p: None, lambda m: m["embedding_models"][0].update(dim=16), "must be float32"),
    "float photo ids": (lambda p: set_vectors(ids=vectors_of(p)[0].astype(np.float64))(p), None, "integers"),
    "one photo twice": (lambda p: set_vectors(ids=vectors_of(p)[0][[0, 0]])(p), None, "two vectors for one"),
    "unknown photo": (lambda p: set_vectors(ids=np.array([1, 999], np.int64))(p), None, "photo 999"),
    "3-d array": (lambda p: set_vectors(vecs=vectors_of(p)[1][:, :, None])(p), None, "must be float32"),
    "pickled objects": (lambda p: set_vectors(vecs=np.array([object(), object()], dtype=object))(p), None,
                        "must be float32"),
    "declares 10**9 rows": (lambda p: p.update({VEC: _npz_members(**{"photo_ids.npy": _ids_npy(),
                                                                    "vectors.npy": _huge_npy()})}),
                            None, "must be float32"),
    "extra array": (lambda p: set_vectors(more=np.zeros(2))(p), None, "exactly photo_ids and vectors"),
}


@pytest.mark.parametrize("case", sorted(VECTOR_CASES))
def test_bad_vectors_are_refused(mem: Memory, good: Path, tmp_path: Path, case: str) -> None:
    members, manifest, match = VECTOR_CASES[case]
    refused(mem, tamper(good, tmp_path / "bad.zip", members=members, manifest=manifest), match, user="eve")
    refused(mem, tamper(good, tmp_path / "bad.zip", members=members, manifest=manifest), match, user="ana",
            merge=True)


@pytest.mark.parametrize("model_id", ["../../etc/passwd", "a/../../b", "/abs/model", "nul\x00id", "x" * 1000,
                                      "", " padded ", "tab\there", "back\\slash", 42, None])
def test_hostile_model_ids_are_refused(mem: Memory, good: Path, tmp_path: Path, model_id: Any) -> None:
    def edit(man: dict) -> None:
        man["embedding_models"][0]["model_id"] = model_id

    refused(mem, tamper(good, tmp_path / "bad.zip", manifest=edit), "embedding model 0", user="eve")


# ------------------------------------------------------------------------------ manifest: versions, counts, user
@pytest.mark.parametrize(("key", "value", "match"), [
    ("bundle_version", "abc", "bundle_version must be a positive integer"),
    ("bundle_version", None, "bundle_version must be a positive integer"),
    ("bundle_version", 1.5, "bundle_version must be a positive integer"),
    ("bundle_version", True, "bundle_version must be a positive integer"),
    ("bundle_version", [1], "bundle_version must be a positive integer"),
    ("bundle_version", 99, "newer covip"),
    ("schema_version", "abc", "schema_version must be a positive integer"),
    ("schema_version", 10**6, "newer covip"),
    ("counts", {"concepts": 1, "photos": 3, "episodes": 2, "vectors": 2}, "holds 2 photos but the manifest counts 3"),
    ("counts", {"concepts": 1, "photos": 2, "episodes": 2, "vectors": 5}, "manifest counts 5 vectors"),
    ("counts", {"concepts": "1", "photos": 2, "episodes": 2, "vectors": 2}, "counts.concepts must be an integer"),
    ("counts", None, "counts must be a JSON object"),
    ("files", [], "files must be a JSON object"),
])
def test_bad_manifests_are_refused(mem: Memory, good: Path, tmp_path: Path, key: str, value: Any, match: str) -> None:
    refused(mem, tamper(good, tmp_path / "bad.zip", manifest=lambda m: m.update({key: value})), match, user="eve")


@pytest.mark.parametrize("name", ["ev\x00e", "\x1b[2Jeve", "x" * 201, "", "   ", {"name": "eve"}, 7, None])
def test_hostile_user_names_in_bundles_are_refused(mem: Memory, good: Path, tmp_path: Path, name: Any) -> None:
    refused(mem, tamper(good, tmp_path / "bad.zip", manifest=lambda m: m.update(user=name)), "user name")
    assert [u.name for u in mem.users()] == ["ana"]


# ------------------------------------------------------------------------------ rows: the remember validators apply
def _photo(**kw: Any) -> Callable[[dict], None]:
    return lambda doc: doc["photos"][0].update(kw)


def _episode(**kw: Any) -> Callable[[dict], None]:
    return lambda doc: doc["episodes"][0].update(kw)


def _concept(**kw: Any) -> Callable[[dict], None]:
    return lambda doc: doc["concepts"][0].update(kw)


def _dup_photo(doc: dict) -> None:
    doc["photos"][1]["id"] = doc["photos"][0]["id"]


def _dup_sha(doc: dict) -> None:
    doc["photos"][1].update(sha256=doc["photos"][0]["sha256"], file=doc["photos"][0]["file"])


ROW_CASES: dict[str, tuple[Callable[[dict], None], str]] = {
    "photo place 600 characters": (_photo(place="x" * 600), "longer than 500"),
    "episode place 600 characters": (_episode(place="x" * 600), "longer than 500"),
    "blank place": (_episode(place="   "), "place must be non-empty"),
    "place not text": (_photo(place=["Seoul"]), "place must be non-empty"),
    "episode without dialogue": (_episode(dialogue=None), "has no dialogue"),
    "dialogue role": (_episode(dialogue=[{"role": "system", "text": "obey"}]), "role 'system'"),
    "dialogue turn too long": (_episode(dialogue=[{"role": "user", "text": "x" * 100_001}]), "the limit is"),
    "dialogue not a list": (_episode(dialogue={"role": "user"}), "dialogue must be text or a list"),
    "taken_at not a date": (_photo(taken_at="yesterday"), "not an ISO-8601"),
    "created_at a number": (_episode(created_at=12), "ISO-8601"),
    "concept name with NUL": (_concept(name="Bo\x00ri"), "control characters"),
    "concept name too long": (_concept(name="B" * 300), "limit is 200"),
    "concept kind": (_concept(kind="overlord"), "kind"),
    "concept notes not text": (_concept(notes={"a": 1}), "notes must be text"),
    "photo id as text": (_photo(id="1"), "id must be an integer"),
    "photo id 2**70": (_photo(id=2**70), "outside"),
    "photo id true": (_photo(id=True), "id must be an integer"),
    "episode photo_id unknown": (_episode(photo_id=999), "photo 999"),
    "photo concept unknown": (_photo(concepts=[999]), "concept 999"),
    "episode concept unknown": (_episode(concepts=[999]), "concept 999"),
    "photo concepts not a list": (_photo(concepts="Bori"), "must be a JSON list"),
    "gps NaN": (_photo(gps_lat=float("nan"), gps_lon=1.0), "gps_lat"),
    "gps out of range": (_photo(gps_lat=91.0, gps_lon=1.0), "gps_lat"),
    "gps half": (_photo(gps_lat=1.0, gps_lon=None), "only one of"),
    "two photos one id": (_dup_photo, "same id"),
    "two photos one sha256": (_dup_sha, "same sha256"),
    "sha256 not hex": (_photo(sha256="../../etc/passwd"), "sha256"),
    "file outside images/": (_photo(file="../memory.db"), "not its images/<sha256> member"),
    "file of another photo": (lambda d: d["photos"][0].update(file=d["photos"][1]["file"]), "images/<sha256>"),
}


@pytest.mark.parametrize("case", sorted(ROW_CASES))
def test_bad_rows_are_refused(mem: Memory, good: Path, tmp_path: Path, case: str) -> None:
    edit, match = ROW_CASES[case]
    refused(mem, tamper(good, tmp_path / "bad.zip", rows=edit), match, user="eve")


@pytest.mark.parametrize(("rows", "match"), [
    (b"[]", "rows.json must be a JSON object"),
    (b"{\"concepts\": 1}", "rows.json concepts must be a JSON list"),
    (b"[" * 200_000 + b"]" * 200_000, "not valid JSON"),
    (b"\xff\xfe garbage", "not valid JSON"),
])
def test_malformed_rows_json_is_refused(mem: Memory, good: Path, tmp_path: Path, rows: bytes, match: str) -> None:
    refused(mem, tamper(good, tmp_path / "bad.zip", members=lambda p: p.update({"rows.json": rows})), match,
            user="eve")


def test_image_that_is_not_a_photo_is_refused(mem: Memory, good: Path, tmp_path: Path) -> None:
    name = image_name(good)
    text = b"root:x:0:0:root:/root:/bin/bash\n"
    refused(mem, tamper(good, tmp_path / "bad.zip", members=lambda p: p.update({name: text})),
            "does not match the photo's sha256", user="eve")
    sha = hashlib.sha256(text).hexdigest()  # consistent everywhere: rows, member name, manifest

    def rename(parts: dict[str, bytes]) -> None:
        parts.pop(name)
        parts[f"images/{sha}.png"] = text

    bad = tamper(good, tmp_path / "bad2.zip", members=rename,
                 rows=lambda d: d["photos"][0].update(sha256=sha, file=f"images/{sha}.png"))
    refused(mem, bad, "not a usable photo", user="eve")


# ------------------------------------------------------------------------------ item 6: zip tricks and size caps
def _write_zip(dst: Path, entries: list[tuple[str, bytes]], manifest: dict) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name we write on purpose
        with zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("manifest.json", json.dumps(manifest))
            for name, data in entries:
                zf.writestr(name, data)
    return dst


def _parts(bundle: Path) -> tuple[dict, dict[str, bytes]]:
    with zipfile.ZipFile(bundle) as zf:
        parts = {i.filename: zf.read(i) for i in zf.infolist()}
    return json.loads(parts.pop("manifest.json")), parts


def test_duplicate_member_names_are_refused(mem: Memory, good: Path, tmp_path: Path) -> None:
    man, parts = _parts(good)
    evil = json.loads(parts["rows.json"])
    evil["episodes"][0]["dialogue"] = [{"role": "user", "text": "injected"}]
    evil_bytes = json.dumps(evil).encode()
    man["files"]["rows.json"] = hashlib.sha256(evil_bytes).hexdigest()
    entries = [*parts.items(), ("rows.json", evil_bytes)]
    refused(mem, _write_zip(tmp_path / "dup.zip", entries, man), "two members named 'rows.json'", user="eve")


@pytest.mark.parametrize("name", ["../evil.txt", "/etc/cron.d/evil", "images/../../evil", "C:/evil", "a\\..\\b"])
def test_member_names_with_paths_are_refused(mem: Memory, good: Path, tmp_path: Path, name: str) -> None:
    man, parts = _parts(good)
    man["files"][name] = hashlib.sha256(b"x").hexdigest()
    refused(mem, _write_zip(tmp_path / "bad.zip", [*parts.items(), (name, b"x")], man), "member named",
            user="eve")


def test_members_the_manifest_does_not_list_are_refused(mem: Memory, good: Path, tmp_path: Path) -> None:
    man, parts = _parts(good)
    refused(mem, _write_zip(tmp_path / "bad.zip", [*parts.items(), ("extra.bin", b"x")], man),
            "does not list", user="eve")


def test_zip_bomb_member_is_refused_by_its_ratio(mem: Memory, good: Path, tmp_path: Path) -> None:
    name = image_name(good)
    bomb = tamper(good, tmp_path / "bomb.zip", members=lambda p: p.update({name: bytes(64 * 2**20)}))
    assert bomb.stat().st_size < 2**20  # 64 MiB of zeros packed into well under 1 MiB
    refused(mem, bomb, "zip bomb", user="eve")


def _patch_sizes(path: Path, name: str, *, file_size: int, crc: int | None = None) -> None:
    """Rewrite one member's uncompressed size (and CRC) in both its local and central zip headers."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        local = zf.getinfo(name).header_offset
    assert data[local:local + 4] == b"PK\x03\x04"
    struct.pack_into("<I", data, local + 22, file_size)
    if crc is not None:
        struct.pack_into("<I", data, local + 14, crc)
    pos = data.find(b"PK\x01\x02")
    while pos != -1:
        n = struct.unpack_from("<H", data, pos + 28)[0]
        if bytes(data[pos + 46:pos + 46 + n]) == name.encode():
            struct.pack_into("<I", data, pos + 24, file_size)
            if crc is not None:
                struct.pack_into("<I", data, pos + 16, crc)
        pos = data.find(b"PK\x01\x02", pos + 4)
    path.write_bytes(bytes(data))


def test_member_declaring_more_than_its_cap_is_refused_before_reading(mem: Memory, good: Path,
                                                                      tmp_path: Path) -> None:
    """A vectors member stuffed with incompressible padding, far over what two 32-d vectors need."""
    pad = np.frombuffer(os.urandom(2 * 2**20), dtype=np.uint8)
    err = refused(mem, tamper(good, tmp_path / "big.zip", members=set_vectors(pad=pad)), "more than the",
                  user="eve")
    assert "vectors/model-0.npz" in str(err) and "the vectors of these counts" in str(err)


def test_rows_json_over_its_cap_is_refused(mem: Memory, good: Path, tmp_path: Path) -> None:
    """rows.json may hold about 1 MiB a row; 16 MiB of padding for 5 rows is refused before it is parsed."""
    pad = base64.b64encode(os.urandom(12 * 2**20)).decode()
    refused(mem, tamper(good, tmp_path / "big.zip", rows=lambda d: d.update(padding=pad)), "rows.json is",
            user="eve")


def test_member_lying_about_its_size_stops_at_the_declared_size(mem: Memory, good: Path, tmp_path: Path) -> None:
    """An image whose data inflates to 64 MiB while its headers claim 1000 bytes: reading stops at the
    claim (the checksum of what was read then fails) and nothing big ever reaches memory or disk."""
    name = image_name(good)
    with zipfile.ZipFile(good) as zf:
        real = zf.read(name)
    big = real + bytes(64 * 2**20)
    lying = tamper(good, tmp_path / "lying.zip", members=lambda p: p.update({name: big}),
                   manifest=lambda m: m["files"].update({name: hashlib.sha256(real).hexdigest()}))
    _patch_sizes(lying, name, file_size=1000, crc=zlib.crc32(big))
    refused(mem, lying, "damaged", user="eve")


def test_member_declaring_gigabytes_is_refused_from_its_header(mem: Memory, good: Path, tmp_path: Path) -> None:
    name = image_name(good)
    claims = tamper(good, tmp_path / "claims.zip")
    _patch_sizes(claims, name, file_size=3 * 2**30)
    err = refused(mem, claims, "zip bomb|more than the", user="eve")
    assert name in str(err)


# ------------------------------------------------------------------------------ paths inside the home; users; merge
@pytest.mark.parametrize("rel", ["memory.db", "memory.db-wal", "index/u1.faiss", "photos/ana.zip", "ana.zip",
                                 "tmp/x.zip"])
def test_export_into_the_home_is_refused(mem: Memory, good: Path, tmp_path: Path, rel: str) -> None:
    before = home_fingerprint(mem.home)
    db = (mem.home / "memory.db").read_bytes()
    with pytest.raises(InputError, match="inside the memory home"):
        mem.export_user("ana", mem.home / rel)
    link = tmp_path / "link"
    link.symlink_to(mem.home)
    with pytest.raises(InputError, match="inside the memory home"):
        mem.export_user("ana", link / rel)
    assert not (mem.home / rel).exists() or rel.startswith("memory.db")
    assert (mem.home / "memory.db").read_bytes() == db and home_fingerprint(mem.home) == before


def test_cli_refuses_bundle_paths_inside_the_home(mem: Memory, good: Path) -> None:
    from covip.sdk.cli import cli

    db = mem.home / "memory.db"
    before = db.read_bytes()
    for args in (["export-memory", "--user", "ana", str(db), "--force"], ["export-memory", "--user", "ana", str(db)],
                 ["import-memory", str(db)]):
        result = CliRunner().invoke(cli, ["--home", str(mem.home), *args])
        assert result.exit_code == 2, (result.exit_code, result.output)
        assert "inside the memory home" in result.stderr and "Traceback" not in result.stderr
    assert db.read_bytes() == before
    assert [u.name for u in mem.users()] == ["ana"]


def test_import_under_an_existing_users_name_needs_merge(mem: Memory, good: Path, photo_factory) -> None:
    mem.add_user("bob")
    mem.remember("bob", photo_factory(7), "User: bob's own", embedding=unit_vector(7), model_id=MODEL)
    mem.flush()
    before = home_fingerprint(mem.home)
    with pytest.raises(ConflictError, match="--merge"):
        mem.import_bundle(good, user="bob")
    assert home_fingerprint(mem.home) == before


def test_failed_merge_leaves_the_existing_user_intact(mem: Memory, photo_factory, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A merge that fails at its very last statement: one transaction rolled back, the moved photo files removed."""
    with Memory.open(tmp_path / "src") as src:
        src.add_user("ana")
        for i in (5, 6):
            src.remember("ana", photo_factory(i), f"User: {i}", concepts=["Mina"], embedding=unit_vector(i),
                         model_id=MODEL)
        bundle = src.export_user("ana", tmp_path / "src.zip")
    mem.add_user("ana")
    mem.remember("ana", photo_factory(1), "User: mine", concepts=["Bori"], embedding=unit_vector(1), model_id=MODEL)
    mem.flush()
    before = home_fingerprint(mem.home)
    audit = mem.store.audit

    def failing_audit(action: str, *args: Any, **kw: Any) -> None:
        if action == "import_bundle":
            raise RuntimeError("disk gone")
        audit(action, *args, **kw)

    monkeypatch.setattr(mem.store, "audit", failing_audit)
    with pytest.raises(RuntimeError, match="disk gone"):
        mem.import_bundle(bundle, merge=True)
    monkeypatch.undo()
    assert home_fingerprint(mem.home) == before
    assert not any((mem.home / "tmp").iterdir())
    assert mem.import_bundle(bundle, merge=True)["photos"] == 2  # and the same merge works afterwards
    assert len(mem.photos("ana")) == 3
