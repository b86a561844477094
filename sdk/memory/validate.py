"""Checks and normalization of caller input (names, dialogues, times, places) before anything is written."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from covip.sdk.errors import InputError
from covip.sdk.memory.types import Turn

__all__ = ["DialogueInput", "clean_name", "clean_dialogue", "clean_time", "clean_place", "clean_model_id",
           "clean_id", "clean_k", "clean_limit", "clean_flag", "clean_path", "clean_text", "clean_key",
           "clean_context_ids", "clean_file_name", "file_name_or_none", "vector_problem", "MAX_K", "MAX_ID",
           "MAX_TURNS", "MAX_CONCEPTS",
           "MAX_VECTOR_DIM", "NORM_TOLERANCE"]

DialogueInput = str | Sequence[Turn | dict | tuple[str, str]] | None
_MAX_NAME = 200
_MAX_TEXT = 100_000
MAX_TURNS = 1000
"""The most turns one dialogue may have (each at most 100,000 characters)."""
MAX_CONCEPTS = 1000
"""The most concepts one remember call may tie a photo to."""


def clean_name(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise InputError(f"{what} must be a string, not {type(value).__name__}")
    name = value.strip()
    if not name:
        raise InputError(f"{what} is empty; give a non-empty name")
    if len(name) > _MAX_NAME:
        raise InputError(f"{what} is {len(name)} characters long; the limit is {_MAX_NAME}")
    if any(ord(ch) < 32 for ch in name):
        raise InputError(f"{what} {name!r} contains control characters; use printable text")
    return name


def clean_dialogue(dialogue: DialogueInput) -> list[dict[str, str]] | None:
    """Normalize a dialogue to [{'role': 'user'|'assistant', 'text': ...}] (a plain string is one user turn)."""
    if dialogue is None:
        return None
    if isinstance(dialogue, str):
        dialogue = _parse_dialogue_text(dialogue)
    if not isinstance(dialogue, Sequence) or isinstance(dialogue, bytes):
        raise InputError(f"dialogue must be text or a list of turns, not {type(dialogue).__name__}")
    if len(dialogue) > MAX_TURNS:
        raise InputError(f"dialogue has {len(dialogue)} turns; the limit is {MAX_TURNS}")
    turns: list[dict[str, str]] = []
    for n, turn in enumerate(dialogue, 1):
        if isinstance(turn, Turn):
            role, text = turn.role, turn.text
        elif isinstance(turn, dict):
            role, text = turn.get("role"), turn.get("text", turn.get("content"))
        elif isinstance(turn, (tuple, list)) and len(turn) == 2:
            role, text = turn
        else:
            raise InputError(f"dialogue turn {n} must be a Turn, a {{'role', 'text'}} dict or a (role, text) "
                             f"pair, not {turn!r:.80}")
        if role not in ("user", "assistant"):
            raise InputError(f"dialogue turn {n} has role {role!r}; use 'user' or 'assistant'")
        if not isinstance(text, str) or not text.strip():
            raise InputError(f"dialogue turn {n} has no text; every turn needs non-empty text")
        if len(text) > _MAX_TEXT:
            raise InputError(f"dialogue turn {n} is {len(text)} characters; the limit is {_MAX_TEXT}")
        turns.append({"role": role, "text": text.strip()})
    if not turns:
        raise InputError("dialogue has no turns; pass None to remember a photo without a dialogue")
    return turns


_ROLE_PREFIX = re.compile(r"^\s*(user|assistant|me|you|human|ai)\s*:\s*", re.IGNORECASE)
_ROLE_NAMES = {"user": "user", "me": "user", "human": "user", "assistant": "assistant", "you": "assistant",
               "ai": "assistant"}


def _parse_dialogue_text(text: str) -> list[tuple[str, str]]:
    """Split "User: ... / Assistant: ..." text into turns; text without role prefixes is one user turn."""
    turns: list[tuple[str, str]] = []
    for line in text.splitlines():
        m = _ROLE_PREFIX.match(line)
        if m:
            turns.append((_ROLE_NAMES[m.group(1).lower()], line[m.end():]))
        elif turns:
            turns[-1] = (turns[-1][0], f"{turns[-1][1]}\n{line}")
        elif line.strip():
            turns.append(("user", line))
    if not turns:
        raise InputError("dialogue text is empty; pass None to remember a photo without a dialogue")
    return turns


def clean_time(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.strip()).isoformat()
        except ValueError as exc:
            raise InputError(f"taken_at {value!r} is not an ISO-8601 date/time (e.g. 2024-05-01 or "
                             "2024-05-01T14:30:00)") from exc
    raise InputError(f"taken_at must be a datetime or ISO-8601 text, not {type(value).__name__}")


def clean_place(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise InputError("place must be non-empty text (or None)")
    if len(value) > 500:
        raise InputError("place is longer than 500 characters")
    return value.strip()


def clean_model_id(value: Any, what: str = "model_id") -> str:
    """An embedding model id: printable text of at most 200 characters, no path tricks (``..``, ``/``-rooted,
    backslashes). It names vectors in SQLite and (slugged) index files, so it must be inert text."""
    if not isinstance(value, str):
        raise InputError(f"{what} must be a string, not {type(value).__name__}")
    if not value or value != value.strip():
        raise InputError(f"{what} {value!r:.80} is empty or has surrounding spaces")
    if len(value) > _MAX_NAME:
        raise InputError(f"{what} is {len(value)} characters long; the limit is {_MAX_NAME}")
    if not value.isprintable():
        raise InputError(f"{what} {value!r:.80} contains control or unprintable characters; use printable text")
    if value.startswith("/") or "\\" in value or ".." in value.split("/"):
        raise InputError(f"{what} {value!r:.80} looks like a path (leading '/', '\\' or a '..' part); "
                         "use a plain id such as 'ViT-B-32/laion2b_s34b_b79k'")
    return value


MAX_K = 1000
"""The most results one search may ask for (``k``), everywhere: the Python API, the CLI and the server."""
MAX_ID = 2**63 - 1
"""The largest row id SQLite can store (a signed 64-bit integer)."""
MAX_VECTOR_DIM = 16_384
"""The longest embedding vector the memory accepts."""
NORM_TOLERANCE = 1e-3
"""Stored vectors are L2-normalized float32; a norm further than this from 1 is not one of ours."""


def clean_id(value: Any, what: str = "id") -> int:
    """A row id: an int (not a bool) from 1 to 2**63-1, the range SQLite stores."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{what} must be an integer, not {type(value).__name__}")
    if not 1 <= value <= MAX_ID:
        raise InputError(f"{what} {value} is out of range; ids are whole numbers from 1 to {MAX_ID}")
    return int(value)


def clean_k(value: Any) -> int:
    """How many search results to return: an int from 1 to :data:`MAX_K`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"k must be a positive integer, not {type(value).__name__}")
    if not 1 <= value <= MAX_K:
        raise InputError(f"k={value} is out of range; ask for 1 to {MAX_K} results (MAX_K)")
    return int(value)


def clean_limit(value: Any, what: str = "limit") -> int | None:
    """An optional row limit: None (no limit) or an int from 1 to 2**63-1."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{what} must be a positive integer or None, not {type(value).__name__}")
    if not 1 <= value <= MAX_ID:
        raise InputError(f"{what}={value} is out of range; give 1 to {MAX_ID}, or None for no limit")
    return int(value)


def clean_flag(value: Any, what: str) -> bool:
    """A yes/no option: exactly True or False (a string such as 'no' would silently count as yes)."""
    if not isinstance(value, bool):
        raise InputError(f"{what} must be True or False, not {type(value).__name__}")
    return value


def clean_text(value: Any, what: str, limit: int = _MAX_TEXT) -> str:
    """Free text (notes, captions) of at most ``limit`` characters."""
    if not isinstance(value, str):
        raise InputError(f"{what} must be text, not {type(value).__name__}")
    if len(value) > limit:
        raise InputError(f"{what} is {len(value)} characters long; the limit is {limit}")
    return value


def clean_key(value: Any, what: str) -> str:
    """A non-empty identifier of at most 1000 characters (a model id or path, a prompt version, a hash)."""
    value = clean_text(value, what, 1000)
    if not value.strip():
        raise InputError(f"{what} is empty")
    return value


def clean_context_ids(context_ids: Any, limit: int = 10_000) -> str:
    """The cache key of a set of memory photo ids ("3,7,12"), each checked with :func:`clean_id`."""
    if not isinstance(context_ids, (list, tuple, set, frozenset)):
        raise InputError(f"context_ids must be a list of photo ids, not {type(context_ids).__name__}")
    if len(context_ids) > limit:
        raise InputError(f"context_ids has {len(context_ids)} ids; the limit is {limit}")
    return ",".join(str(i) for i in sorted({clean_id(i, "context photo id") for i in context_ids}))


def clean_file_name(value: Any, what: str = "original file name") -> str:
    """A file's base name (``bori.jpg``): printable text of at most 255 characters with no path parts (no ``/``
    or ``\\``, not ``.`` or ``..``). Photos keep it to be recognizable; it is only ever shown, never opened."""
    if not isinstance(value, str):
        raise InputError(f"{what} must be text, not {type(value).__name__}")
    if not value.strip() or value in (".", "..") or value != value.strip():
        raise InputError(f"{what} {value!r:.80} is empty, '.', '..' or has surrounding spaces; give a file name "
                         "such as 'bori.jpg'")
    if "/" in value or "\\" in value:
        raise InputError(f"{what} {value!r:.80} has path parts; give only the file's name, such as 'bori.jpg'")
    if not value.isprintable():  # also refuses lone surrogates (undecodable bytes), which SQLite cannot store
        raise InputError(f"{what} {value!r:.80} contains control or unprintable characters; use printable text")
    if len(value.encode()) > 255:
        raise InputError(f"{what} is {len(value.encode())} bytes long; file names have at most 255")
    return value


def file_name_or_none(value: Any) -> str | None:
    """The base name of a path a client sent (an upload's file name), or None when nothing usable is left: a
    name is worth keeping, never worth failing a request over."""
    if not isinstance(value, str):
        return None
    base = value.replace("\\", "/").rsplit("/", 1)[-1].strip()
    try:
        return clean_file_name(base)
    except InputError:
        return None


def clean_path(value: Any, what: str = "path") -> Path:
    """A file path from the caller: str or os.PathLike, not empty, no NUL byte, within the OS's length
    limits (so it fails here with a clear message, not later with TypeError or ENAMETOOLONG)."""
    if isinstance(value, bool) or not isinstance(value, (str, os.PathLike)):
        raise InputError(f"{what} must be a file path, not {type(value).__name__}")
    try:
        path = Path(value).expanduser()
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InputError(f"{what} {str(value)[:80]!r} is not a usable path ({exc})") from exc
    text = str(path)
    if not str(value).strip() or "\x00" in text:
        raise InputError(f"{what} is empty or contains a NUL byte")
    if len(os.fsencode(text)) > 4096 or any(len(os.fsencode(part)) > 255 for part in path.parts):
        raise InputError(f"{what} {text[:80]!r}... is longer than the file system allows")
    return path


def vector_problem(blob: Any, row_dim: Any, dim: int) -> str | None:
    """Why a stored embedding row cannot be used with vectors of length ``dim`` (None when it can)."""
    if not isinstance(blob, bytes):
        return f"is stored as {type(blob).__name__}, not float32 bytes"
    if isinstance(row_dim, bool) or not isinstance(row_dim, int) or row_dim != dim:
        return f"has dimension {row_dim!r}, expected {dim}"
    if len(blob) != 4 * dim:
        return f"is {len(blob)} bytes long, expected {4 * dim} ({dim} float32 values)"
    vec = np.frombuffer(blob, dtype=np.float32)
    if not np.all(np.isfinite(vec)):
        return "contains NaN or infinite values"
    norm = float(np.linalg.norm(vec.astype(np.float64)))
    if abs(norm - 1.0) > NORM_TOLERANCE:
        return f"is not unit length (norm {norm:.4g})"
    return None
