"""Checks and normalization of caller input (names, dialogues, times, places) before anything is written."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from covip.sdk.errors import InputError
from covip.sdk.memory.types import Turn

__all__ = ["DialogueInput", "clean_name", "clean_dialogue", "clean_time", "clean_place"]

DialogueInput = str | Sequence[Turn | dict | tuple[str, str]] | None
_MAX_NAME = 200
_MAX_TEXT = 100_000


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
