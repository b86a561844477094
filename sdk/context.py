"""Context assembly: from a query photo, pick which remembered photos + dialogues the model gets to see.

Steps: embed the query, search the user's memory, drop hits below a similarity floor (abstain when
none is left, and say so), collapse several photos of one concept to its most similar photo with the
concept's newest dialogue, keep the best ``k`` items, then fit a token budget measured with the engine's
tokenizer: drop the least similar items first (down to one), then shorten the oldest dialogue turns.
Every item keeps its score and ids, so each answer can show which memories it used.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from covip.sdk._config import ConfigMixin
from covip.sdk.errors import InputError
from covip.sdk.memory.types import Episode, Hit, PhotoRecord, Turn

log = logging.getLogger(__name__)

__all__ = ["ContextConfig", "ContextItem", "Context", "assemble", "select_items", "fit_budget"]


@dataclass
class ContextConfig(ConfigMixin):
    """How many memories to show the model and how much room they may take."""

    k: int = field(default=4, metadata={"help": "At most this many context items (the paper uses 1-4 concepts "
                                          "plus distractors; 4-8 is typical on device)."})
    similarity_floor: float = field(
        default=0.2,
        metadata={"help": "Ignore memories whose cosine similarity to the query photo is below this; with "
                  "none left, answer without personal context and say so."})
    search_k: int = field(default=32, metadata={"help": "How many nearest photos to fetch before collapsing "
                                                  "them by concept."})
    token_budget: int = field(default=4096, metadata={"help": "Tokens the context may use (images + dialogues), "
                                                       "measured with the engine's tokenizer."})
    image_tokens: int = field(default=256, metadata={"help": "Tokens one context image costs (depends on the "
                                                      "model's image processor; caption-only mode counts the "
                                                      "caption's tokens instead)."})

    def __post_init__(self) -> None:
        if self.k < 1 or self.search_k < self.k:
            raise InputError("context k must be >= 1 and search_k >= k")
        if not -1.0 <= self.similarity_floor <= 1.0:
            raise InputError("similarity_floor is a cosine similarity: between -1 and 1")
        if self.token_budget < 1 or self.image_tokens < 0:
            raise InputError("token_budget must be positive and image_tokens non-negative")


@dataclass(frozen=True)
class ContextItem:
    """One remembered photo with the dialogue shown beside it (provenance of an answer)."""

    photo: PhotoRecord
    score: float
    concepts: tuple[str, ...]
    episodes: tuple[Episode, ...]  # the dialogue(s) shown, oldest first
    shared: bool = False
    trimmed: bool = False  # dialogue turns were shortened to fit the budget

    @property
    def dialogue(self) -> str:
        return "\n".join(e.text for e in self.episodes)

    def to_dict(self) -> dict[str, Any]:
        return {"photo_id": self.photo.id, "owner": self.photo.owner, "path": str(self.photo.path or ""),
                "score": round(self.score, 4), "concepts": list(self.concepts), "shared": self.shared,
                "taken_at": self.photo.taken_at, "place": self.photo.place, "dialogue": self.dialogue,
                "episode_ids": [e.id for e in self.episodes], "trimmed": self.trimmed}


@dataclass(frozen=True)
class Context:
    """The chosen items, best first; ``abstained`` means nothing in memory was similar enough."""

    items: tuple[ContextItem, ...]
    abstained: bool = False
    reason: str = ""
    tokens: int = 0

    @property
    def photo_ids(self) -> list[int]:
        return [i.photo.id for i in self.items]


def _newest(episodes: Sequence[Episode]) -> Episode | None:
    return max(episodes, key=lambda e: (e.taken_at or e.created_at, e.id), default=None)


def select_items(hits: Sequence[Hit], config: ContextConfig,
                 concept_episodes: Callable[[str, bool], Sequence[Episode]] | None = None) -> Context:
    """Floor, collapse by concept, keep the best ``k`` (no budget yet). ``concept_episodes(name, shared)``
    returns every episode about a concept, so an item can carry the concept's newest dialogue."""
    above = [h for h in hits if h.score >= config.similarity_floor]
    if not above:
        best = max((h.score for h in hits), default=None)
        reason = ("the memory is empty for this user" if best is None else
                  f"no remembered photo is similar enough (best similarity {best:.2f} < floor "
                  f"{config.similarity_floor:.2f}); answering without personal context")
        return Context(items=(), abstained=True, reason=reason)
    items: list[ContextItem] = []
    covered: set[str] = set()
    for hit in sorted(above, key=lambda h: -h.score):
        keys = {c.lower() for c in hit.concepts}
        if keys and keys <= covered:
            continue  # a less similar photo of concepts already shown
        if not keys and any(i.photo.id == hit.photo.id for i in items):
            continue
        covered |= keys
        episodes = list(hit.episodes)
        if concept_episodes is not None and hit.concepts:
            newest_about = [_newest(concept_episodes(c, hit.shared)) for c in hit.concepts]
            newest_about = [e for e in newest_about if e is not None]
            if newest_about:
                newest = _newest(newest_about)
                # the photo's own newest dialogue, plus the concept's newest one when it is a different talk
                own = _newest(episodes)
                episodes = [e for e in (own, newest) if e is not None]
                episodes = list({e.id: e for e in episodes}.values())
        else:
            own = _newest(episodes)
            episodes = [own] if own is not None else []
        episodes.sort(key=lambda e: (e.taken_at or e.created_at, e.id))
        items.append(ContextItem(photo=hit.photo, score=hit.score, concepts=hit.concepts,
                                 episodes=tuple(episodes), shared=hit.shared))
        if len(items) == config.k:
            break
    return Context(items=tuple(items))


def _item_tokens(item: ContextItem, count: Callable[[str], int], image_tokens: int) -> int:
    return image_tokens + count(item.dialogue) + 8  # header and separators


def _shorten_oldest(item: ContextItem) -> ContextItem | None:
    """Drop the oldest turn of the oldest dialogue of ``item`` (None when nothing is left to drop)."""
    episodes = list(item.episodes)
    for n, ep in enumerate(episodes):
        if len(ep.dialogue) > 1:
            episodes[n] = replace(ep, dialogue=tuple(ep.dialogue[1:]))
            return replace(item, episodes=tuple(episodes), trimmed=True)
        if len(episodes) > 1:
            del episodes[n]
            return replace(item, episodes=tuple(episodes), trimmed=True)
    if episodes and len(episodes[0].dialogue) == 1:
        text = episodes[0].dialogue[0].text
        if len(text) > 16:  # last resort: keep the newest half of the only turn
            turn = Turn(role=episodes[0].dialogue[0].role, text="..." + text[len(text) // 2:])
            episodes[0] = replace(episodes[0], dialogue=(turn,))
            return replace(item, episodes=tuple(episodes), trimmed=True)
    return None


def fit_budget(context: Context, config: ContextConfig, count: Callable[[str], int],
               image_tokens: int | None = None) -> Context:
    """Fit the items into ``config.token_budget``: drop least similar items first, then shorten the oldest
    dialogue turns (of the oldest dialogues first)."""
    if context.abstained or not context.items:
        return context
    cost = config.image_tokens if image_tokens is None else image_tokens
    items = sorted(context.items, key=lambda i: -i.score)

    def total() -> int:
        return sum(_item_tokens(i, count, cost) for i in items)

    while total() > config.token_budget and len(items) > 1:
        dropped = items.pop()
        log.debug("context over budget: dropped photo %d (score %.3f)", dropped.photo.id, dropped.score)
    while total() > config.token_budget:
        # the item whose oldest dialogue is oldest gets shortened first
        order = sorted(range(len(items)), key=lambda n: min(
            (e.taken_at or e.created_at for e in items[n].episodes), default=""))
        for n in order:
            shorter = _shorten_oldest(items[n])
            if shorter is not None:
                items[n] = shorter
                break
        else:
            log.warning("context still over the token budget after shortening every dialogue")
            break
    return Context(items=tuple(items), tokens=total())


def assemble(memory: Any, user: str, query_embedding: Any, config: ContextConfig, *,
             count_tokens: Callable[[str], int], model_id: str | None = None,
             image_tokens: int | None = None) -> Context:
    """Search ``user``'s memory with the query embedding and return the fitted context."""
    hits = memory.search(user, embedding=query_embedding, model_id=model_id, k=config.search_k)

    def concept_episodes(name: str, shared: bool) -> list[Episode]:
        return [h.episode for h in memory.history(user, concept=name)]

    context = select_items(hits, config, concept_episodes)
    return fit_budget(context, config, count_tokens, image_tokens)
