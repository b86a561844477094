"""Ground-truth answers of synthetic samples: what a perfect personal assistant would write (SFT targets).

The synthetic world knows every concept's look and facts, so each sample has an exact right answer:

* :func:`look_phrase`: a concept's look in words ("a pink cat with yellow stripes and a green scarf");
* :func:`recognition_target`: a short rationale that describes every concept image and the query image,
  each description followed by the concept's number, then ``Answer: \\boxed{[...]}`` on its own line (the
  recognition instruction allows brief reasoning; the reward reads only the box);
* :func:`verification_target`: ``Yes.`` / ``No.``;
* :func:`describe_target`: a plain description of a photo of one concept (the SDK's describe prompt, the
  stand-in caption of caption-only memories): "The photo shows a grey cat with red stripes and a hat.";
* :func:`caption_target`: a one-paragraph personalized caption that names every present concept, says
  what it looks like now and weaves in all four remembered facts verbatim (so the lexical judge can find
  them), and never mentions an absent (distractor) concept.

The wording is chosen by a ``random.Random`` the caller seeds (a few phrasings per sentence), so the same
sample always gets the same target.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from covip.sdk.errors import InputError
from covip.training.data.world import KIND_NOUNS, Concept, Look

__all__ = ["look_phrase", "recognition_target", "verification_target", "describe_target", "caption_target",
           "indexed_caption_target", "who_target"]

_PATTERN_WORDS = {"stripes": "{c} stripes", "spots": "{c} spots", "patch": "{a} {c} patch"}
_ACCESSORY_WORDS = {
    "hat": "{a} {c} hat", "scarf": "{a} {c} scarf", "collar": "{a} {c} collar", "glasses": "{c} glasses",
    "bow": "{a} {c} bow", "backpack": "{a} {c} backpack",
}


def _a(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def look_phrase(look: Look, *, article: bool = True) -> str:
    """The look in words: kind, body colour, pattern and accessory ("a grey robot with red spots and a hat")."""
    if look.kind == "person":
        core = f"person in {look.colour}"
    else:
        core = f"{look.colour} {KIND_NOUNS.get(look.kind, look.kind)}"
    extras = []
    if look.pattern != "plain":
        extras.append(_PATTERN_WORDS[look.pattern].format(a=_a(look.pattern_colour), c=look.pattern_colour))
    if look.accessory != "none":
        extras.append(_ACCESSORY_WORDS[look.accessory].format(a=_a(look.accessory_colour), c=look.accessory_colour))
    text = core if not extras else f"{core} with {' and '.join(extras)}"
    return f"{_a(text)} {text}" if article else text


def _boxed(indices: Sequence[int]) -> str:
    return "Answer: \\boxed{[" + ", ".join(str(i) for i in indices) + "]}"


def recognition_target(context_looks: Sequence[Look], present: Sequence[int], *, rationale: bool = True) -> str:
    """Describe each concept image (then its number), the query's concepts the same way, then the box.

    The descriptions come before the numbers so that matching the query's description against the concept
    descriptions leads straight to the number to copy. ``rationale=False``: the box alone.
    """
    present = sorted({int(i) for i in present})
    if not present or any(i < 0 or i >= len(context_looks) for i in present):
        raise InputError(f"present indices {present} do not fit {len(context_looks)} concept images")
    if not rationale:
        return _boxed(present)
    lines = [f"{look_phrase(look).capitalize()}: concept {i}." for i, look in enumerate(context_looks)]
    shown = [f"{look_phrase(context_looks[i])}: concept {i}" for i in present]
    lines.append("The query image shows " + _join(shown) + ".")
    lines.append(_boxed(present))
    return "\n".join(lines)


def verification_target(answer: str) -> str:
    """``Yes.`` or ``No.`` for a verification answer ('yes'/'no')."""
    word = str(answer).strip().lower()
    if word not in ("yes", "no"):
        raise InputError(f"a verification answer must be 'yes' or 'no', got {answer!r}")
    return "Yes." if word == "yes" else "No."


def describe_target(look: Look) -> str:
    """A plain, non-personal description of a photo of one concept."""
    return f"The photo shows {look_phrase(look)}."


def _join(items: Sequence[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


_INTROS = (
    "In this new photo I can see {who}.",
    "This new photo shows {who}.",
    "Here is a new photo of {who}.",
)
_SEEN = (
    "{name} is {look} here.",
    "Here {name} is {look}.",
)
_FACTS = (
    "You told me about {name} at {place}, {time}, during {event}, while you were {action}.",
    "I remember {name} from {place}: it was {time}, at {event}, and you were {action}.",
    "Last time you showed me {name} at {place}, {time}; it was {event} and you were {action}.",
)


def caption_target(present: Sequence[Concept], rng: random.Random) -> str:
    """A personalized caption of the present concepts (their looks and every fact, verbatim)."""
    if not present:
        raise InputError("a caption target needs at least one present concept")
    who = _join([f"{c.name}, your {c.noun}" for c in present])
    sentences = [rng.choice(_INTROS).format(who=who)]
    for c in present:
        f = c.facts
        sentences.append(rng.choice(_SEEN).format(name=c.name, look=look_phrase(c.look)))
        sentences.append(rng.choice(_FACTS).format(name=c.name, place=f.place, time=f.time, event=f.event,
                                                   action=f.action))
    return " ".join(sentences)


def indexed_caption_target(dialogues: Sequence[str], present: Sequence[int], *, numbering: int = 0) -> str:
    """A caption by index: the recognition box of the present context items (numbered from ``numbering``, as
    the prompt's dialogue headers), then what the user said in each of their dialogues, verbatim.

    The miniature recipe's caption style (``data.caption_style: indexed``): the box reuses the recognition
    chain (match the new photo against the memory photos, name the index) and the rest is a copy from the
    dialogue that index names, which carries every remembered fact a CapEval question asks about.
    """
    present = sorted({int(i) for i in present})
    if not present or any(i < 0 or i >= len(dialogues) for i in present):
        raise InputError(f"present indices {present} do not fit {len(dialogues)} dialogues")
    said = []
    for i in present:
        lines = [line[len("User: "):].strip() for line in str(dialogues[i]).splitlines() if line.startswith("User: ")]
        if not lines:
            raise InputError(f"dialogue {i} has no 'User: ' line to caption from")
        said.append(" ".join(lines))
    return _boxed([i + numbering for i in present]) + " " + " ".join(said)


def who_target(name: str, index: int | None = None, *, numbering: int = 0) -> str:
    """The answer to "who is this?" about a photo of one remembered concept: "That's <name>.", after the
    recognition box of its dialogue (``index``, numbered from ``numbering``) when the reply is the first turn
    about the photo (answering directly); after a caption, which boxed it already, the name alone."""
    said = f"That's {name}."
    return said if index is None else f"{_boxed([int(index) + numbering])} {said}"
