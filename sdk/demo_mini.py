"""`covip demo --model mini`: the trained miniature model on held-out concepts, with its naming rate.

The memory holds one remembered photo and dialogue per held-out concept of the installed demo set
(:mod:`covip.sdk.models.mini`); each concept's new photo (another pose, background and light) is asked about
with Caption-Augmented Generation and directly. The mini model answers recognition by pointing at a remembered
dialogue (``\\boxed{[i]}``, numbered as its prompt pack numbers them) and then copies what the user said there,
so the demo counts two things per photo: whether the reply points at the right concept's memory (else, when it
points nowhere, whether its text names the right concept), and whether its text spells the right name.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["MINI_QUESTION", "named_concept", "spells_name", "run_mini_demo"]

MINI_QUESTION = "Who is this?"
_BOX = re.compile(r"\\boxed\{\s*\[?\s*(\d{1,3})")


def _name_pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"(?<![\w-]){re.escape(name)}(?![\w-])")


def spells_name(text: str, name: str) -> bool:
    """Whether ``text`` contains ``name`` as a whole word (``Frank`` is not in ``Frank-Ziggy``)."""
    return bool(_name_pattern(name).search(text or ""))


def named_concept(text: str, items: Sequence[Any], known: Sequence[str], *, numbering: int = 0) -> str | None:
    """The concept a reply names: the memory its first ``\\boxed{[i]}`` points at (``items``: the context
    items in prompt order, dialogues numbered from ``numbering``), else the longest known name it spells."""
    text = text or ""
    match = _BOX.search(text)
    if match:
        index = int(match.group(1)) - numbering
        if 0 <= index < len(items) and items[index].concepts:
            return str(items[index].concepts[0])
        return None  # points at a memory that is not there: names nothing
    for name in sorted(known, key=len, reverse=True):
        if spells_name(text, name):
            return name
    return None


def run_mini_demo(assistant: Any, installed: Any, *, say: Callable[[str], None], user: str = "demo",
                  numbering: int = 0) -> dict[str, Any]:
    """Remember the installed demo concepts, then ask about each new photo with and without CAG; returns the
    runs and the naming rates (``named``: right concept pointed at or named; ``spelled``: name in the text)."""
    from covip.sdk.errors import NotFoundError

    mem = assistant.memory
    mem.add_user(user, exist_ok=True)
    known = {c.name for c in mem.concepts(user)}
    for concept in installed.concepts:
        if concept.name not in known:
            mem.add_concept(user, concept.name, kind=concept.kind)
        try:
            mem.find_photo(user, concept.memory_photo)
        except NotFoundError:  # a kept --home already holds it
            mem.remember(user, concept.memory_photo, concept.dialogue, [concept.name])
    names = [c.name for c in installed.concepts]
    say(f"remembered {len(names)} held-out concepts (never trained on) for user '{user}': {', '.join(names)}")
    runs: list[dict[str, Any]] = []
    tally = {mode: {"named": 0, "spelled": 0} for mode in ("cag", "direct")}
    for concept in installed.concepts:
        say(f"\nnew photo of {concept.name}: {MINI_QUESTION}")
        for mode in ("cag", "direct"):
            t0 = time.perf_counter()
            reply = assistant.ask(user, concept.new_photo, MINI_QUESTION, cag=mode == "cag")
            wall = time.perf_counter() - t0
            text = "\n".join(t for t in (reply.caption, reply.answer) if t)
            got = named_concept(text, reply.memories, names, numbering=numbering)  # the caption's box first
            spelled = spells_name(text, concept.name)
            tally[mode]["named"] += got == concept.name
            tally[mode]["spelled"] += spelled
            used = ", ".join(f"{'/'.join(m.concepts) or 'photo'} {m.score:.2f}" for m in reply.memories) or "none"
            say(f"  [{'CAG' if mode == 'cag' else 'direct'}] {wall:.2f}s  memories: {used}")
            if reply.caption is not None:
                say(f"    caption: {reply.caption[:160]}")
            say(f"    answer: {reply.answer[:160]}")
            say(f"    -> names {got or 'nobody'} ({'right' if got == concept.name else 'wrong'}); "
                f"spells '{concept.name}': {'yes' if spelled else 'no'}")
            runs.append({"concept": concept.name, "mode": mode, "named": got, "right": got == concept.name,
                         "spelled": spelled, "wall_s": round(wall, 4), **reply.to_dict()})
    n = len(installed.concepts)
    rates = {mode: {"named": t["named"] / n, "spelled": t["spelled"] / n, "n": n} for mode, t in tally.items()}
    say("")
    for mode, label in (("cag", "with CAG"), ("direct", "without CAG")):
        r = rates[mode]
        say(f"naming rate {label}: {r['named']:.0%} of {n} new photos name the right concept "
            f"(spelled in the text: {r['spelled']:.0%})")
    return {"user": user, "meaningless": assistant.meaningless, "model_record": installed.record.get("source", {}),
            "naming": rates, "runs": runs}
