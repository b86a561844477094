"""Plain records the memory API returns (frozen dataclasses; safe to keep after the memory is closed)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["User", "Concept", "PhotoRecord", "Turn", "Episode", "Hit", "HistoryItem", "Remembered", "ForgetReport",
           "PhotoTags", "VerifyReport"]

CONCEPT_KINDS = ("person", "pet", "object", "place", "other")


@dataclass(frozen=True)
class User:
    id: int
    name: str
    created_at: str


@dataclass(frozen=True)
class Concept:
    id: int
    user: str
    name: str
    kind: str
    notes: str
    photo_count: int = 0


@dataclass(frozen=True)
class PhotoRecord:
    """A remembered photo. ``path`` is the stored copy under the home, or the original path; ``original_name`` is
    the file name it was remembered from (a base name, never a path; None when it came as bytes or an image)."""

    id: int
    owner: str
    sha256: str
    path: Path | None
    format: str
    width: int
    height: int
    taken_at: str | None
    place: str | None
    gps: tuple[float, float] | None
    created_at: str
    original_name: str | None = None


@dataclass(frozen=True)
class Turn:
    """One dialogue turn: role is 'user' or 'assistant'."""

    role: str
    text: str


@dataclass(frozen=True)
class Episode:
    """A dialogue about one photo, tied to concepts, a time and a place."""

    id: int
    photo_id: int
    dialogue: tuple[Turn, ...]
    concepts: tuple[str, ...]
    taken_at: str | None
    place: str | None
    created_at: str

    @property
    def text(self) -> str:
        """The dialogue as plain text, one ``Role: text`` line per turn."""
        return "\n".join(f"{t.role.capitalize()}: {t.text}" for t in self.dialogue)


@dataclass(frozen=True)
class Hit:
    """One search result: the photo, its similarity to the query, its concepts and the dialogues behind it."""

    score: float
    photo: PhotoRecord
    concepts: tuple[str, ...]
    episodes: tuple[Episode, ...]
    shared: bool = False


@dataclass(frozen=True)
class HistoryItem:
    """One dialogue episode with the photo it is about."""

    episode: Episode
    photo: PhotoRecord


@dataclass(frozen=True)
class Remembered:
    """What :meth:`Memory.remember` stored."""

    photo: PhotoRecord
    episode: Episode | None
    new_photo: bool
    embedding_id: int | None


@dataclass(frozen=True)
class ForgetReport:
    """What a forget removed. ``scrubbed`` is False when another process kept the WAL from being truncated."""

    photos: int = 0
    episodes: int = 0
    concepts: int = 0
    vectors: int = 0
    captions: int = 0
    files: int = 0
    users: int = 0
    scrubbed: bool = True


@dataclass(frozen=True)
class PhotoTags:
    """A photo's concepts after :meth:`Memory.tag_photo`, ``untag_photo`` or ``move_photo``: ``changed`` is False
    when nothing had to change (already tagged), ``captions`` counts the cached captions dropped."""

    photo: PhotoRecord
    concepts: tuple[str, ...]
    changed: bool = True
    captions: int = 0


@dataclass
class VerifyReport:
    """Result of :meth:`Memory.verify`: ``ok`` is False when any error was found."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)
    repaired: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors
