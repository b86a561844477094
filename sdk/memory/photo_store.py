"""The photo store's one reading and writing seam: :class:`PhotoFiles`, a collaborator of
:class:`~covip.sdk.memory.memory.Memory` through which every remembered photo's bytes pass.

In an encrypted home the stored copies are sealed (see :mod:`covip.sdk.memory.crypto`), so nothing else may
open ``home / stored_path`` or ``PhotoRecord.path`` itself: verify, bundle export, the HTTP server and the
engines' context photos all read through ``Memory.read_photo_bytes`` (or the stream and check helpers
below). Every read is checked against the sha256 the photo was remembered with. It needs only the home,
the store and the key, so it is built from those, not from the Memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from covip.sdk.errors import DecryptError, InputError, NotFoundError, StoreError
from covip.sdk.memory import crypto
from covip.sdk.memory.types import PhotoRecord

if TYPE_CHECKING:
    from covip.sdk.imaging import Photo
    from covip.sdk.memory.crypto import HomeKey
    from covip.sdk.memory.store import Store

log = logging.getLogger(__name__)

__all__: list[str] = []

_PHOTO = "photo"


class PhotoFiles:
    """Names, writes, reads (sha256-checked) and checks the stored photo copies of one home."""

    def __init__(self, home: Path, store: Store, key: HomeKey | None) -> None:
        self.home = home
        self.store = store
        self.crypto = key

    def sealed_name(self, uid: int, sha256: str) -> str:
        """Where an encrypted home stores a photo: named by a keyed hash, no format in the name."""
        name = self.crypto.photo_name(sha256)
        return f"photos/u{uid}/{name[:2]}/{name}.enc"

    def name(self, uid: int, photo: Photo) -> str:
        """Where a new photo of a user is stored, relative to the home."""
        if self.crypto is not None:
            return self.sealed_name(uid, photo.sha256)
        return f"photos/u{uid}/{photo.sha256[:2]}/{photo.sha256}{photo.extension}"

    def write(self, dest: Path, data: bytes, *, durable: bool) -> None:
        """Write a stored photo copy atomically (sealed in an encrypted home)."""
        crypto.write_file(dest, data, self.home / "tmp", self.crypto, _PHOTO, durable=durable)

    def row(self, photo: PhotoRecord | int) -> dict[str, Any]:
        """The photo's id, sha256 and paths (by record or id); InputError, or NotFoundError when there is none."""
        pid = photo.id if isinstance(photo, PhotoRecord) else photo
        if isinstance(pid, bool) or not isinstance(pid, int) or not 0 < pid < 2**63:
            raise InputError(f"photo must be a PhotoRecord or a photo id (a positive integer), not {photo!r:.60}")
        row = self.store.one("SELECT id, sha256, stored_path, source_path FROM photos WHERE id = ?", [pid])
        if row is None:
            raise NotFoundError(f"no photo with id {pid}")
        return row

    def stored_path(self, row: dict[str, Any]) -> Path:
        """The photo's stored copy (StoreError when the row names a path outside the photo store)."""
        path = self.store.stored_file(row["stored_path"])
        if path is None:
            raise StoreError(f"photo {row['id']}'s stored path is not inside the photo store; run `covip verify`")
        return path

    @contextlib.contextmanager
    def open_row(self, row: dict[str, Any]) -> Iterator[IO[bytes]]:
        """A binary stream of one photo's original bytes (decrypted on the fly in an encrypted home). The caller
        checks the sha256 (see :meth:`row_bytes`); OSError and DecryptError pass through."""
        if row["stored_path"]:
            path = self.stored_path(row)
            if self.crypto is None:
                with open(path, "rb") as fh:
                    yield fh
            else:
                try:
                    data = crypto.read_file(path, self.crypto, _PHOTO)
                except DecryptError as exc:
                    raise DecryptError(f"photo {row['id']}'s stored file fails authentication: it was "
                                       "altered, damaged or swapped; run `covip verify` (restore it from a "
                                       "backup or forget the photo)") from exc
                yield io.BytesIO(data)
        elif row["source_path"]:  # store_copies=False: the photo's original file outside the home
            from covip.sdk.homefiles import refuse_home_file

            refuse_home_file(row["source_path"], f"photo {row['id']}'s original file")
            with open(row["source_path"], "rb") as fh:
                yield fh
        else:
            raise StoreError(f"photo {row['id']} has neither a stored copy nor an original file; forget it")

    def row_bytes(self, row: dict[str, Any]) -> bytes:
        """One photo's original bytes, checked against its remembered sha256 (StoreError/DecryptError if not)."""
        try:
            with self.open_row(row) as fh:
                data = fh.read()
        except OSError as exc:
            raise StoreError(f"photo {row['id']}'s file cannot be read ({exc.strerror or exc}); run `covip verify`"
                             ) from exc
        if hashlib.sha256(data).hexdigest() != row["sha256"]:
            raise StoreError(f"photo {row['id']}'s file has changed since it was remembered; run `covip verify` "
                             "(restore it from a backup or forget the photo)")
        return data

    def problem(self, row: dict[str, Any], *, deep: bool) -> str | None:
        """What is wrong with one photo's stored file (missing, altered, fails authentication), or None.
        ``deep`` reads and checks the content; otherwise only that the file exists."""
        path = self.store.stored_file(row["stored_path"])
        if path is None:
            return f"stored path {str(row['stored_path'])[:80]!r} is not inside the photo store"
        if not path.is_file():
            return f"stored file {row['stored_path']} is missing"
        if not deep:
            return None
        try:
            data = crypto.read_file(path, self.crypto, _PHOTO)
        except DecryptError:
            return f"stored file {row['stored_path']} fails authentication (altered, damaged or swapped)"
        except OSError as exc:
            return f"stored file {row['stored_path']} cannot be read ({exc.strerror or exc})"
        if hashlib.sha256(data).hexdigest() != row["sha256"]:
            return f"stored file {row['stored_path']} has been altered"
        return None

    def remove_user(self, uid: int) -> None:
        """Delete a (forgotten) user's whole photo folder."""
        shutil.rmtree(self.home / "photos" / f"u{uid}", ignore_errors=True)
