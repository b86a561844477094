"""The one exception tree of covip. Every error names what was wrong and what to do.

Catch :class:`CovipError` to handle everything covip raises on purpose::

    CovipError
    ├── ConfigError              a home directory or config file that cannot be used
    ├── MissingExtraError        an optional dependency is not installed (message has the pip line);
    │                            also an ImportError
    ├── InputError               a bad argument from the caller; also a ValueError
    │   ├── ImageError           a photo that cannot be taken in
    │   │   ├── EmptyImageError      zero-byte file or empty bytes
    │   │   ├── NotAnImageError      bytes that are no image format Pillow knows
    │   │   ├── TruncatedImageError  an image whose data ends early or is corrupt
    │   │   └── ImageTooLargeError   more pixels than the decompression-bomb limit
    │   └── DataError            a training/evaluation sample or data file with a bad field
    │                            (names the sample id and the field) or a missing image
    ├── NotFoundError            a user, concept or photo that does not exist; also a LookupError
    ├── ConflictError            a name that already exists, a merge into itself, ...
    ├── StoreError               the on-disk memory cannot be read or written
    │   ├── DatabaseCorruptError memory.db is damaged (the message names the recovery path: the last
    │   │                        export bundle, or ``sqlite3 memory.db .recover | sqlite3 recovered.db``)
    │   ├── DatabaseMissingError memory.db is missing or empty while the home still holds photos or
    │   │                        index files (restore a backup, import a bundle, or ``verify --start-fresh``)
    │   ├── SchemaError          the database is newer than this covip, or a migration failed
    │   ├── IndexCorruptError    a FAISS index file cannot be read (``covip verify --repair``)
    │   ├── BundleError          an export bundle that is not a covip bundle or is damaged
    │   └── EncryptionError      encryption at rest: an unusable keyfile, a plain home given a key
    │       ├── MissingKeyError  an encrypted home or bundle opened without its passphrase/key
    │       ├── WrongKeyError    the passphrase or key does not unlock it (nothing is changed)
    │       └── DecryptError     an encrypted file that fails authentication: altered, damaged,
    │                            or swapped for another file
    ├── EmbedderError            an embedding model that cannot be built or loaded
    ├── EngineError              an inference engine whose model cannot be loaded or run
    ├── JudgeError               a reward judge (HTTP server, local model) that cannot answer
    └── ExportError              a model export (GGUF/ONNX) that cannot be built or verified, or an
                                 export directory whose manifest or files are missing or damaged

Errors raised before any write leave the memory unchanged; errors inside a write roll the
whole write back (every write is one SQLite transaction plus atomic file renames).
"""

from __future__ import annotations

__all__ = [
    "CovipError",
    "ConfigError",
    "MissingExtraError",
    "InputError",
    "ImageError",
    "EmptyImageError",
    "NotAnImageError",
    "TruncatedImageError",
    "ImageTooLargeError",
    "NotFoundError",
    "ConflictError",
    "StoreError",
    "DatabaseCorruptError",
    "DatabaseMissingError",
    "SchemaError",
    "IndexCorruptError",
    "BundleError",
    "EncryptionError",
    "MissingKeyError",
    "WrongKeyError",
    "DecryptError",
    "EmbedderError",
    "EngineError",
    "DataError",
    "JudgeError",
    "ExportError",
]


class CovipError(Exception):
    """Base class of every error covip raises on purpose."""


class ConfigError(CovipError):
    """A home directory or config file that cannot be used."""


class MissingExtraError(CovipError, ImportError):
    """An optional dependency is missing; the message names the ``pip install`` line."""

    def __init__(self, feature: str, extra: str, module: str) -> None:
        self.feature, self.extra, self.module = feature, extra, module
        super().__init__(
            f"{feature} needs the Python package '{module}', which is not installed. "
            f"Install it with: pip install 'covip[{extra}]'"
        )


class InputError(CovipError, ValueError):
    """A bad argument from the caller."""


class ImageError(InputError):
    """A photo that cannot be taken in."""


class EmptyImageError(ImageError):
    """A zero-byte file or empty bytes."""


class NotAnImageError(ImageError):
    """Bytes that are no image format Pillow can read."""


class TruncatedImageError(ImageError):
    """An image whose data ends early or is corrupt."""


class ImageTooLargeError(ImageError):
    """More pixels than the decompression-bomb limit allows."""


class NotFoundError(CovipError, LookupError):
    """A user, concept or photo that does not exist."""

    def __str__(self) -> str:  # LookupError would repr() a single argument
        return str(self.args[0]) if self.args else ""


class ConflictError(CovipError):
    """A name that already exists, or an operation that contradicts the current state."""


class StoreError(CovipError):
    """The on-disk memory cannot be read or written."""


class DatabaseCorruptError(StoreError):
    """memory.db is damaged; repair cannot rebuild it (the message names the recovery path)."""


class DatabaseMissingError(StoreError):
    """memory.db is missing or empty but the home still holds photos or index files of a memory: covip
    refuses to start a new database over them (the message names the recovery steps)."""


class SchemaError(StoreError):
    """The database schema is newer than this covip, or a migration failed."""


class IndexCorruptError(StoreError):
    """A FAISS index file cannot be read; ``covip verify --repair`` rebuilds it from SQLite."""


class BundleError(StoreError):
    """A memory bundle that is not a covip bundle, or is damaged."""


class EncryptionError(StoreError):
    """Encryption at rest cannot proceed: an unusable keyfile, or a key given for a plain home."""


class MissingKeyError(EncryptionError):
    """An encrypted home or bundle was opened without its passphrase or key (the message says where to
    give one: ``key=``, ``$COVIP_PASSPHRASE``, the OS keyring)."""


class WrongKeyError(EncryptionError):
    """The passphrase or key does not unlock the home or bundle; nothing was read or changed."""


class DecryptError(EncryptionError):
    """An encrypted file fails authentication: it was altered, damaged, or swapped for another file."""


class EmbedderError(CovipError):
    """An embedding model that cannot be built or loaded."""


class EngineError(CovipError):
    """An inference engine whose model cannot be loaded or run."""


class DataError(InputError):
    """A training or evaluation sample (or data file) that cannot be used.

    The message names the sample id and the bad field; :attr:`sample_id` and :attr:`field` carry
    them (either may be None when the problem is with the file as a whole).
    """

    def __init__(self, message: str, *, sample_id: str | None = None, field: str | None = None) -> None:
        self.sample_id, self.field = sample_id, field
        super().__init__(message)


class JudgeError(CovipError):
    """A reward judge (an HTTP server or a local model) that cannot be reached, loaded or run."""


class ExportError(CovipError):
    """A model export (merge, GGUF/ONNX conversion, quantization, parity check) that cannot be built or
    verified, or an export directory whose manifest or files are missing, damaged or mismatched."""
