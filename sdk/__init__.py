"""covip.sdk: the on-device runtime an app embeds: episodic memory, image intake, embeddings, CLI.

Imports without torch; torch-backed pieces (open_clip embeddings) load when first built.
"""

from covip.sdk.config import default_home
from covip.sdk.errors import (
    BundleError,
    ConfigError,
    ConflictError,
    CovipError,
    EmbedderError,
    EmptyImageError,
    ImageError,
    ImageTooLargeError,
    IndexCorruptError,
    InputError,
    MissingExtraError,
    NotAnImageError,
    NotFoundError,
    SchemaError,
    StoreError,
    TruncatedImageError,
)
from covip.sdk.imaging import Photo, load_photo
from covip.sdk.memory import (
    Concept,
    Episode,
    ForgetReport,
    HistoryItem,
    Hit,
    IndexConfig,
    Memory,
    MemoryConfig,
    PhotoRecord,
    Remembered,
    Turn,
    User,
    VerifyReport,
)
from covip.sdk.vision import Embedder, EmbedderConfig, make_embedder

__all__ = [
    # memory
    "Memory",
    "MemoryConfig",
    "IndexConfig",
    "default_home",
    "Concept",
    "Episode",
    "ForgetReport",
    "HistoryItem",
    "Hit",
    "PhotoRecord",
    "Remembered",
    "Turn",
    "User",
    "VerifyReport",
    # photos and embeddings
    "Photo",
    "load_photo",
    "Embedder",
    "EmbedderConfig",
    "make_embedder",
    # errors
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
    "SchemaError",
    "IndexCorruptError",
    "BundleError",
    "EmbedderError",
]
