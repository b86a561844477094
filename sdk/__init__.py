"""covip.sdk: the on-device runtime an app embeds: episodic memory, embeddings, engines, CAG, CLI.

Imports without torch; torch-backed pieces (open_clip embeddings) load when first built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from covip.sdk._config import lazy_exports
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

if TYPE_CHECKING:  # imported on first use (see __getattr__), so `import covip.sdk...` stays light
    from covip.sdk.assistant import Assistant, AssistantConfig
    from covip.sdk.cag import Answer, CagConfig, CaptionResult
    from covip.sdk.config import default_home
    from covip.sdk.context import Context, ContextConfig, ContextItem
    from covip.sdk.engines import Engine, Generation, GenerationConfig, make_engine
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
        PhotoTags,
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
    "PhotoTags",
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

_LAZY: dict[str, str] = {
    "Assistant": "covip.sdk.assistant",
    "AssistantConfig": "covip.sdk.assistant",
    "Answer": "covip.sdk.cag",
    "CagConfig": "covip.sdk.cag",
    "CaptionResult": "covip.sdk.cag",
    "default_home": "covip.sdk.config",
    "Context": "covip.sdk.context",
    "ContextConfig": "covip.sdk.context",
    "ContextItem": "covip.sdk.context",
    "Engine": "covip.sdk.engines",
    "Generation": "covip.sdk.engines",
    "GenerationConfig": "covip.sdk.engines",
    "make_engine": "covip.sdk.engines",
    "Photo": "covip.sdk.imaging",
    "load_photo": "covip.sdk.imaging",
    "Concept": "covip.sdk.memory",
    "Episode": "covip.sdk.memory",
    "ForgetReport": "covip.sdk.memory",
    "HistoryItem": "covip.sdk.memory",
    "Hit": "covip.sdk.memory",
    "IndexConfig": "covip.sdk.memory",
    "Memory": "covip.sdk.memory",
    "MemoryConfig": "covip.sdk.memory",
    "PhotoRecord": "covip.sdk.memory",
    "PhotoTags": "covip.sdk.memory",
    "Remembered": "covip.sdk.memory",
    "Turn": "covip.sdk.memory",
    "User": "covip.sdk.memory",
    "VerifyReport": "covip.sdk.memory",
    "Embedder": "covip.sdk.vision",
    "EmbedderConfig": "covip.sdk.vision",
    "make_embedder": "covip.sdk.vision",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
