"""covip.sdk: the on-device runtime an app embeds: episodic memory, embeddings, engines, CAG, CLI.

Imports without torch; torch-backed pieces (open_clip embeddings) load when first built.
"""

from covip.sdk.assistant import Assistant, AssistantConfig
from covip.sdk.cag import Answer, CagConfig, CaptionResult
from covip.sdk.config import default_home
from covip.sdk.context import Context, ContextConfig, ContextItem
from covip.sdk.engines import Engine, Generation, GenerationConfig, make_engine
from covip.sdk.errors import (
    BundleError,
    ConfigError,
    ConflictError,
    CovipError,
    DatabaseCorruptError,
    DatabaseMissingError,
    DataError,
    DecryptError,
    EmbedderError,
    EmptyImageError,
    EncryptionError,
    EngineError,
    ExportError,
    ImageError,
    ImageTooLargeError,
    IndexCorruptError,
    InputError,
    JudgeError,
    MissingExtraError,
    MissingKeyError,
    NotAnImageError,
    NotFoundError,
    SchemaError,
    StoreError,
    TruncatedImageError,
    WrongKeyError,
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
    # personalized photo chat
    "Assistant",
    "AssistantConfig",
    "Answer",
    "CaptionResult",
    "CagConfig",
    "Context",
    "ContextConfig",
    "ContextItem",
    "Engine",
    "Generation",
    "GenerationConfig",
    "make_engine",
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
    "DatabaseCorruptError",
    "DatabaseMissingError",
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
