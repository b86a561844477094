"""Reading a memory bundle without trusting it: members streamed with size caps, then every part checked.

:func:`read_bundle` is the one entry point (an encrypted bundle wraps it: it takes a path or a seekable
binary file). It refuses zip tricks first (duplicate, absolute or ``..`` member names, members the
manifest does not list, overlapping or encrypted entries, compression ratios of a zip bomb, sizes over
the caps), then reads the manifest and rows.json within caps derived from the counts, then the vectors,
and streams each image through sha256 into a temp file under ``home/tmp`` (never whole into memory)
before decoding it once to prove it is a photo. Nothing is written to the memory here.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np

from covip.sdk.errors import BundleError, ImageError
from covip.sdk.files import tmp_path
from covip.sdk.imaging import load_photo
from covip.sdk.memory.bundle_check import (
    Manifest,
    ModelEntry,
    Rows,
    check_manifest,
    check_rows,
    check_vectors,
    rows_cap,
    vectors_cap,
)
from covip.sdk.memory.crypto import PhotoSeal

log = logging.getLogger(__name__)

__all__ = ["BundleImage", "CheckedBundle", "read_bundle", "photo_cap"]

MAX_BUNDLE_BYTES = 50 * 2**30  # everything unpacked
MAX_MANIFEST_BYTES = 32 * 2**20
MAX_RATIO = 200  # uncompressed/compressed; real photos, vectors and rows stay far below (deflate tops out ~1032)
_RATIO_FLOOR = 2**20  # smaller members cannot hurt whatever their ratio
_CHUNK = 2**20
_NPY_HEADER = 2**16
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError, ValueError,
               struct.error)


def photo_cap(max_pixels: int) -> int:
    """The most bytes one photo file may have: 8 bytes a pixel (16-bit RGBA, uncompressed) plus metadata."""
    return max_pixels * 8 + 16 * 2**20


@dataclass(frozen=True)
class BundleImage:
    """A bundle photo checked and copied to a temp file under the home (moved into the photo store on import)."""

    sha256: str
    extension: str
    format: str
    width: int
    height: int
    size: int
    tmp: Path


@dataclass
class CheckedBundle:
    """A whole bundle, checked: manifest, rows, vectors per model and images (temp files until :meth:`close`)."""

    label: str
    manifest: Manifest
    rows: Rows
    vectors: list[tuple[ModelEntry, np.ndarray, np.ndarray]] = field(default_factory=list)
    images: dict[int, BundleImage] = field(default_factory=dict)  # bundle photo id -> image

    def close(self) -> None:
        """Remove the temp copies that were not moved into the photo store."""
        for image in self.images.values():
            image.tmp.unlink(missing_ok=True)


class _Zip:
    """The bundle's zip after its directory passed the structural checks; reads members with hard caps."""

    def __init__(self, zf: zipfile.ZipFile, label: str, seal: PhotoSeal | None = None) -> None:
        self.zf, self.label, self.seal = zf, label, seal
        self.infos: dict[str, zipfile.ZipInfo] = {}
        infos = zf.infolist()
        for info in infos:
            name = info.filename
            parts = name.replace("\\", "/").split("/")
            if (not name or "\\" in name or "\x00" in name or name.startswith("/") or ".." in parts
                    or (len(parts[0]) == 2 and parts[0][1] == ":")):
                raise BundleError(f"{label} holds a member named {name[:80]!r} (absolute, '..' or odd "
                                  "characters); refusing the bundle")
            if name in self.infos:
                raise BundleError(f"{label} holds two members named {name[:80]!r}; refusing the bundle")
            if info.flag_bits & 0x1:
                raise BundleError(f"{label}: member {name} is zip-encrypted; covip bundles never are")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise BundleError(f"{label}: member {name} uses compression method {info.compress_type}; "
                                  "covip bundles use stored or deflated members only")
            if info.file_size > _RATIO_FLOOR and info.file_size > MAX_RATIO * max(info.compress_size, 1):
                raise BundleError(f"{label}: member {name} unpacks {info.file_size // max(info.compress_size, 1)}"
                                  f" times larger than it is stored (more than {MAX_RATIO}x); that is a zip "
                                  "bomb, not a memory bundle")
            self.infos[name] = info
        total = sum(i.file_size for i in infos)
        if total > MAX_BUNDLE_BYTES:
            raise BundleError(f"{label} unpacks to {total:,} bytes, more than the limit of {MAX_BUNDLE_BYTES:,}")
        ends = sorted((i.header_offset, i.header_offset + 30 + len(i.orig_filename.encode()) + i.compress_size)
                      for i in infos)
        for (_, end), (start, _) in zip(ends, ends[1:]):
            if start < end:
                raise BundleError(f"{label} has overlapping zip members (a zip bomb trick); refusing the bundle")

    def check_size(self, name: str, cap: int, what: str) -> zipfile.ZipInfo:
        info = self.infos.get(name)
        if info is None:
            raise BundleError(f"{self.label} lacks {name}; the bundle is damaged")
        if info.file_size > cap:
            raise BundleError(f"{self.label}: {name} is {info.file_size:,} bytes, more than the {cap:,} {what} "
                              "may have; refusing the bundle")
        return info

    def _chunks(self, name: str, cap: int) -> Iterator[bytes]:
        """The member's bytes in chunks, stopping with an error as soon as more than ``cap`` come out
        (the sizes in zip headers are the sender's claim; this is the enforcement)."""
        seen = 0
        try:
            with self.zf.open(self.infos[name]) as fh:
                while chunk := fh.read(_CHUNK):
                    seen += len(chunk)
                    if seen > cap:
                        raise BundleError(f"{self.label}: member {name} holds more than the {cap:,} bytes "
                                          "allowed (its header says less); refusing the bundle")
                    yield chunk
        except BundleError:
            raise
        except _ZIP_ERRORS as exc:
            raise BundleError(f"{self.label}: member {name} is damaged ({exc})") from exc

    def read(self, name: str, cap: int, digest: str | None, what: str) -> bytes:
        """A small member (manifest, rows, vectors) in memory, within ``cap``, checked against ``digest``."""
        self.check_size(name, cap, what)
        h, buf = hashlib.sha256(), bytearray()
        for chunk in self._chunks(name, cap):
            h.update(chunk)
            buf += chunk
        if digest is not None and h.hexdigest() != digest:
            raise BundleError(f"{self.label}: {name} does not match its checksum; the bundle is damaged")
        return bytes(buf)

    def copy(self, name: str, dest: Path, cap: int, digest: str, photo_sha256: str = "") -> int:
        """Stream a member into ``dest`` through sha256 and the cap (sealed on the way in an encrypted home);
        returns its size."""
        self.check_size(name, cap, "a photo")
        h, size = hashlib.sha256(), 0
        with open(dest, "wb") as raw, (self.seal.writer(raw, photo_sha256) if self.seal else nullcontext(raw)) as out:
            for chunk in self._chunks(name, cap):
                h.update(chunk)
                size += len(chunk)
                out.write(chunk)
        if h.hexdigest() != digest:
            raise BundleError(f"{self.label}: {name} does not match its checksum; the bundle is damaged")
        return size


def _json(data: bytes, name: str, label: str) -> object:
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise BundleError(f"{label}: {name} is not valid JSON ({str(exc)[:120]})") from exc


def _npy(npz: zipfile.ZipFile, member: str, ok: Callable[[np.dtype, tuple], bool], expected: str, label: str,
         what: str) -> np.ndarray:
    """One array of an .npz, its header checked before any data is allocated (no pickles, no huge shapes)."""
    info = next((i for i in npz.infolist() if i.filename == member), None)
    if info is None:
        raise BundleError(f"{label}: {what} lack {member}")
    with npz.open(info) as fh:
        version = np.lib.format.read_magic(fh)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in read_header:
            raise BundleError(f"{label}: {what}: {member} has unknown .npy version {version}")
        shape, fortran, dtype = read_header[version](fh, max_header_size=_NPY_HEADER)
        if fortran or not ok(dtype, shape):
            raise BundleError(f"{label}: {what}: {member} must be {expected}, not {dtype} {shape}")
    with npz.open(info) as fh:
        return np.lib.format.read_array(fh, allow_pickle=False)


def _read_vectors(data: bytes, model: ModelEntry, label: str) -> tuple[np.ndarray, np.ndarray]:
    what = f"vectors of model {model.model_id!r}"
    n, dim = model.count, model.dim
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as npz:
            names = sorted(i.filename for i in npz.infolist())
            if names != ["photo_ids.npy", "vectors.npy"]:
                raise BundleError(f"{label}: {what} must hold exactly photo_ids and vectors, not {names[:5]}")
            ids = _npy(npz, "photo_ids.npy", lambda t, s: t.kind in "iu" and t.itemsize <= 8 and s == (n,),
                       f"{n} integers", label, what)
            vecs = _npy(npz, "vectors.npy", lambda t, s: t == np.dtype(np.float32) and s == (n, dim),
                        f"float32 of shape ({n}, {dim})", label, what)
    except BundleError:
        raise
    except (*_ZIP_ERRORS, TypeError, SyntaxError) as exc:
        raise BundleError(f"{label}: {what} are unreadable ({str(exc)[:160]})") from exc
    return ids, vecs


def _open_zip(source: Path | IO[bytes], label: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(source)
    except _ZIP_ERRORS as exc:
        raise BundleError(f"{label} is not a covip memory bundle (not a zip file: {exc})") from exc


@contextmanager
def read_bundle(source: Path | IO[bytes], *, tmp_dir: Path, max_pixels: int,
                label: str | None = None, seal: PhotoSeal | None = None) -> Iterator[CheckedBundle]:
    """Read and check a whole bundle; yields it with its images in temp files under ``tmp_dir``, removed on exit.

    ``source`` is the bundle's path or a seekable binary file (e.g. a decrypted stream); ``label`` names
    it in errors; ``seal`` (an encrypted home's) writes the temp images already sealed, in their photo-store
    form, so no plaintext photo touches the disk. Raises :class:`BundleError` for anything wrong; nothing in
    the memory is touched.
    """
    label = label or str(source)
    with _open_zip(source, label) as zf:
        bundle = _read(_Zip(zf, label, seal), tmp_dir, max_pixels, label)
    try:
        yield bundle
    finally:
        bundle.close()


def _read(z: _Zip, tmp_dir: Path, max_pixels: int, label: str) -> CheckedBundle:
    if "manifest.json" not in z.infos:
        raise BundleError(f"{label} has no manifest.json; it is not a covip memory bundle")
    manifest = check_manifest(_json(z.read("manifest.json", MAX_MANIFEST_BYTES, None, "a manifest"),
                                    "manifest.json", label), label)
    if "rows.json" not in manifest.files:
        raise BundleError(f"{label}: the manifest lists no rows.json; the bundle is damaged")
    rows = check_rows(_json(z.read("rows.json", rows_cap(manifest.counts), manifest.files["rows.json"],
                                   "rows.json for these counts"), "rows.json", label), manifest, label)
    expected = {"rows.json"} | {m.file for m in manifest.models} | {p["file"] for p in rows.photos}
    for name in sorted(set(manifest.files) - expected):
        raise BundleError(f"{label}: the manifest lists {name}, which no row or model uses; the bundle is damaged")
    for name in sorted(set(z.infos) - expected - {"manifest.json"}):
        raise BundleError(f"{label} holds {name[:80]!r}, which its manifest does not list; refusing the bundle")
    image_cap = photo_cap(max_pixels)
    image_bytes = sum(z.check_size(p["file"], image_cap, "a photo").file_size for p in rows.photos)
    for m in manifest.models:
        z.check_size(m.file, vectors_cap(m), "the vectors of these counts")
    bundle = CheckedBundle(label=label, manifest=manifest, rows=rows)
    photo_ids = {p["id"] for p in rows.photos}
    for m in manifest.models:
        ids, vecs = _read_vectors(z.read(m.file, vectors_cap(m), manifest.files[m.file], "the vectors of these counts"), m, label)
        check_vectors(m, ids, vecs, photo_ids, label)
        bundle.vectors.append((m, ids.astype(np.int64), vecs))
    tmp_dir.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(tmp_dir).free
    if image_bytes + 64 * 2**20 > free:
        raise BundleError(f"importing {label} needs about {image_bytes // 2**20 + 64} MiB free under "
                          f"{tmp_dir.parent}, but only {free // 2**20} MiB are; free some space first")
    try:
        for p in rows.photos:
            bundle.images[p["id"]] = _copy_image(z, p, tmp_dir, image_cap, manifest.files[p["file"]], max_pixels,
                                                 label)
    except BaseException:
        bundle.close()
        raise
    return bundle


def _copy_image(z: _Zip, p: dict, tmp_dir: Path, cap: int, digest: str, max_pixels: int,
                label: str) -> BundleImage:
    """Stream one image member into a temp file (checksummed, capped), then decode it once."""
    tmp = tmp_path(tmp_dir, ".bundle-img")
    try:
        size = z.copy(p["file"], tmp, cap, digest, p["sha256"])
        try:
            pic = load_photo(z.seal.read(tmp, p["sha256"]) if z.seal else tmp.read_bytes(), max_pixels=max_pixels)
        except ImageError as exc:
            raise BundleError(f"{label}: image {p['file']} of photo {p['id']} is not a usable photo ({exc})") \
                from exc
        if pic.sha256 != p["sha256"]:
            raise BundleError(f"{label}: image {p['file']} does not match photo {p['id']}'s sha256; the bundle is "
                              "damaged")
        image = BundleImage(sha256=pic.sha256, extension=pic.extension, format=pic.format, width=pic.width,
                            height=pic.height, size=size, tmp=tmp)
        del pic
        return image
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
