"""The synthetic world's personal concepts: looks, facts, dialogues and fact questions (no drawing here).

A concept is a pet-like creature, bird, person-like figure, mug or toy robot with a body colour, a pattern
and an accessory (:class:`Look`), plus four objective facts the user told the assistant (:class:`Facts`):
where the photo was taken, when, on which occasion, and what the user was doing. Its dialogue
(:func:`dialogue_for`) is a short multi-turn conversation that states every fact verbatim; its questions
(:func:`questions_for`) ask about three of the four facts, with the true fact and two other values of the
same kind as A/B/C (shuffled) and D = "cannot be determined". Values inside one word list are chosen so
that none is a substring of another, so "the correct option's text appears in the dialogue and the wrong
ones do not" holds by construction (and is checked).

Looks come in *families* of look-alikes (:func:`look_families`): the same kind and body colour, and the same
pattern and accessory colours, differing only in the pattern and/or the accessory, so that every concept
has concepts beside it that a glance confuses with it (the distractors a context holds).

The space of looks is split once, by a fixed hash of (kind, colour, pattern, accessory)
(:func:`is_heldout_look`), into training looks and held-out looks (one in four). Test concepts take
held-out looks only (``make_concepts(..., n_heldout=...)``), and everything trained on the world (the
VLM, the ``mini`` image embedder) sees training looks only, so a test concept is new to every model.

Everything is drawn from a ``random.Random`` the caller seeds, so the world is a pure function of the seed.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import asdict, dataclass, replace

from covip.sdk.errors import InputError
from covip.training.data.schema import MCQA, UNDETERMINED

__all__ = [
    "KINDS",
    "COLOURS",
    "PATTERNS",
    "ACCESSORIES",
    "Look",
    "LookKey",
    "look_key",
    "look_family",
    "is_heldout_look",
    "look_keys",
    "look_with_key",
    "look_families",
    "LOOKALIKES",
    "HELDOUT_MODULUS",
    "Facts",
    "Concept",
    "make_concepts",
    "question_about",
    "dialogue_for",
    "questions_for",
    "attribute_similarity",
    "CODE_WORDS",
    "planted_instruction",
]

KINDS = ("cat", "bird", "person", "mug", "robot")
"""Concept kinds; each is drawn differently (:mod:`.render`)."""
KIND_NOUNS = {"cat": "cat", "bird": "parakeet", "person": "friend", "mug": "mug", "robot": "toy robot"}
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (200, 40, 40), "orange": (235, 130, 30), "yellow": (230, 205, 40), "green": (60, 160, 70),
    "teal": (30, 150, 150), "blue": (50, 90, 200), "purple": (130, 60, 170), "pink": (235, 130, 180),
    "brown": (130, 85, 45), "grey": (140, 140, 140), "white": (240, 240, 235), "black": (35, 35, 40),
}
PATTERNS = ("plain", "stripes", "spots", "patch")
ACCESSORIES = ("none", "hat", "scarf", "collar", "glasses", "bow", "backpack")

PLACES = (
    "the Han river park", "Haeundae beach", "a mountain cabin in Gangwon", "the old harbour in Busan",
    "my grandmother's farm", "the botanical garden downtown", "a ski lodge in Pyeongchang",
    "the rooftop of my office", "Jeju's Hallasan trail", "a campsite by Lake Chungju",
    "the Saturday flea market", "my cousin's bakery", "the public library's reading room",
    "a jazz bar in Itaewon", "the university rose garden", "the night market in Taipei",
    "a lavender field in Hokkaido", "the aquarium at COEX", "a tiny guesthouse in Gyeongju",
    "the riverside cycling path", "my parents' balcony", "the vet clinic on Maple Street",
    "a hot spring in Beppu", "the community pottery studio", "the train station in Daejeon",
    "a pumpkin patch outside town", "the ferry to Ulleungdo", "a rooftop cafe in Seongsu",
)
TIMES = (
    "last Saturday morning", "on a rainy evening in March", "during the first snow of December",
    "on New Year's Eve", "early one Sunday at sunrise", "on a humid afternoon in July",
    "two winters ago", "the night before my exams", "on a windy day in late October",
    "during the spring holidays", "on my thirtieth birthday", "one Friday after work",
    "on a foggy Tuesday in April", "during the Chuseok long weekend", "at midnight in mid-August",
    "on the last day of summer camp", "one chilly February morning", "during the cherry blossom week",
    "on a quiet Monday in November", "right after the June monsoon",
)
EVENTS = (
    "my sister's wedding", "a family picnic", "the neighbourhood kimchi-making day",
    "my graduation party", "a surprise farewell for my coworker", "the autumn lantern festival",
    "our first camping trip", "a board-game marathon", "the charity fun run",
    "my niece's first birthday", "a housewarming dinner", "the annual sports day",
    "a photography workshop", "the school reunion", "a midnight stargazing tour",
    "the harvest festival", "a rainy-day movie night", "our team's volunteer cleanup",
    "a cooking class for beginners", "the lunar new year gathering",
)
ACTIONS = (
    "baking cinnamon rolls", "repainting the garden fence", "flying a red kite", "learning to play the ukulele",
    "sketching the skyline", "fixing my old bicycle", "packing lunch boxes", "planting tulip bulbs",
    "writing postcards to friends", "practising yoga on the grass", "grilling corn on a tiny stove",
    "reading a detective novel", "building a sandcastle", "knitting a green sweater",
    "assembling a bookshelf", "feeding the ducks", "decorating a birthday cake", "tuning my guitar",
    "washing the car by hand", "taking a pottery lesson", "hanging paper lanterns", "jogging along the river",
)
FACT_LISTS: dict[str, tuple[str, ...]] = {"place": PLACES, "time": TIMES, "event": EVENTS, "action": ACTIONS}
NAMES = (
    "Bori", "Mochi", "Pino", "Dubu", "Kongi", "Luna", "Toto", "Hana", "Sora", "Miso", "Yuzu", "Nabi",
    "Coco", "Bam", "Gaeul", "Haru", "Jjang", "Dori", "Ollie", "Pepper", "Biscuit", "Maru", "Nori", "Ppoppi",
    "Seth", "Judy", "Frank", "Amanda", "Minji", "Jiwoo", "Tomas", "Lucia", "Kenji", "Aiko", "Mateo", "Ines",
    "Rosa", "Felix", "Oscar", "Nina", "Hugo", "Clara", "Leo", "Mina", "Dasom", "Eunbi", "Taeyang", "Seoyeon",
    "Waffle", "Pudding", "Sprout", "Pebble", "Button", "Ginger", "Juniper", "Clover", "Mango", "Peanut",
    "Tofu", "Kiwi", "Olive", "Sesame", "Hazel", "Basil", "Cookie", "Rusty", "Socks", "Whiskers", "Ziggy",
)

QUESTION_TEMPLATES = {
    "place": "Where did the user take the photo of {name}?",
    "time": "When was the user's photo of {name} taken?",
    "event": "What occasion was the user's photo of {name} taken at?",
    "action": "What was the user doing when the photo of {name} was taken?",
}
_OPENERS = (
    "User: This is {name}, my {noun}. I took this photo at {place}.",
    "User: Meet {name}! That's my {noun}, and this picture is from {place}.",
    "User: Here's {name}, my {noun}, at {place}.",
)
_ASK_WHEN = (
    "Assistant: {name} looks wonderful there. When was this?",
    "Assistant: What a nice shot of {name}! When did you take it?",
    "Assistant: I love this one of {name}. Do you remember when it was?",
)
_WHEN = (
    "User: It was {time}, during {event}.",
    "User: {time_cap}, at {event}.",
    "User: That was {time}. We were there for {event}.",
)
_ASK_DOING = (
    "Assistant: That sounds like a lovely day. What were you up to?",
    "Assistant: How fun! What were you doing at the time?",
    "Assistant: And what were you busy with that day?",
)
_DOING = (
    "User: I was {action} while {name} kept me company.",
    "User: Mostly {action}, and {name} stayed right next to me.",
    "User: I spent the afternoon {action}; {name} watched the whole time.",
)
_CLOSERS = (
    "Assistant: I'll remember {name} and that day at {place}.",
    "Assistant: Thanks for sharing {name} with me. I'll keep this memory.",
    "Assistant: Noted! {name}, {place}, {time}.",
)

# Downstream ITR (instruction-triggered recall): a dialogue plants a code word to say when its concept appears.
CODE_WORDS = (
    "marmalade", "quasar", "tangerine", "nebula", "kumquat", "zephyr", "obsidian", "pistachio", "saffron",
    "galaxy", "wombat", "origami", "bamboo", "meteor", "paprika", "lagoon", "cobalt", "velvet-comet",
    "avalanche", "lighthouse", "periwinkle", "thunderbolt", "cinnamon-star", "walrus",
)
_PLANTS = (
    "User: One more thing: whenever you see {name} in a new photo, start your reply with the code word "
    "\"{code}\".\nAssistant: Got it. When {name} shows up again, I'll say \"{code}\".",
    "User: Let's have a secret signal. If {name} is ever in a picture I show you, say \"{code}\".\n"
    "Assistant: Deal: \"{code}\" whenever I spot {name}.",
)


def planted_instruction(name: str, code: str, rng: random.Random) -> str:
    """Two dialogue turns that plant an instruction: say ``code`` when ``name`` appears in a new photo."""
    return rng.choice(_PLANTS).format(name=name, code=code)


@dataclass(frozen=True)
class Look:
    """How a concept is drawn: kind, body colour, pattern (+ colour), accessory (+ colour), skin tone."""

    kind: str
    colour: str
    pattern: str
    pattern_colour: str
    accessory: str
    accessory_colour: str
    skin: int = 0
    """Skin tone index (person-like figures only)."""

    def tokens(self) -> frozenset[str]:
        """Attribute tokens for :func:`attribute_similarity` (``kind=cat``, ``colour=red``, ...)."""
        d = asdict(self)
        if self.pattern == "plain":
            d.pop("pattern_colour")
        if self.accessory == "none":
            d.pop("accessory_colour")
        if self.kind != "person":
            d.pop("skin")
        return frozenset(f"{k}={v}" for k, v in d.items())


@dataclass(frozen=True)
class Facts:
    """What the user told the assistant about a concept (every value appears verbatim in the dialogue)."""

    place: str
    time: str
    event: str
    action: str


@dataclass(frozen=True)
class Concept:
    """One personal concept of the world."""

    id: str
    name: str
    look: Look
    facts: Facts
    dialogue: str
    questions: tuple[MCQA, ...]
    """Questions with ``correct`` = the fact letter and no concept_index (set per sample)."""

    @property
    def noun(self) -> str:
        """What the user calls it ("cat", "friend", "mug", ...)."""
        return KIND_NOUNS[self.look.kind]

    def to_dict(self) -> dict:
        """JSON-able description (for ``concepts.json``)."""
        return {"id": self.id, "name": self.name, "look": asdict(self.look), "facts": asdict(self.facts),
                "dialogue": self.dialogue, "questions": [q.to_dict() for q in self.questions]}


def _names(rng: random.Random, n: int) -> list[str]:
    names = list(NAMES)
    rng.shuffle(names)
    if n > len(names):  # compound names ("Bori-Mochi") once the single ones run out
        extra = [f"{a}-{b}" for a in NAMES for b in NAMES if a != b]
        rng.shuffle(extra)
        names += extra[: n - len(names)]
    return names[:n]


LookKey = tuple[str, str, str, str]
"""(kind, colour, pattern, accessory): what tells two concepts apart at a glance."""
HELDOUT_MODULUS = 4
"""One look key in this many is held out (:func:`is_heldout_look`)."""


def look_key(look: Look) -> LookKey:
    """The look's (kind, colour, pattern, accessory)."""
    return (look.kind, look.colour, look.pattern, look.accessory)


def look_family(look: Look) -> tuple[str, str]:
    """The look's family: (kind, colour); look-alikes share it."""
    return (look.kind, look.colour)


def is_heldout_look(look: Look | LookKey) -> bool:
    """Whether a look (or look key) is reserved for held-out test concepts; fixed for all seeds and machines."""
    key = look_key(look) if isinstance(look, Look) else tuple(look)
    digest = hashlib.sha256(("covip-look:" + ":".join(key)).encode()).digest()
    return int.from_bytes(digest[:8], "big") % HELDOUT_MODULUS == 0


def look_keys(*, heldout: bool) -> list[LookKey]:
    """Every look key of one side of the split (held-out or training), in a fixed order."""
    return [(k, c, p, a) for k in KINDS for c in COLOURS for p in PATTERNS for a in ACCESSORIES
            if is_heldout_look((k, c, p, a)) == heldout]


def look_with_key(key: LookKey, rng: random.Random, *, pattern_colour: str | None = None,
                  accessory_colour: str | None = None) -> Look:
    """A look with the given key; pattern/accessory colours (other than the body's) and skin drawn from ``rng``."""
    kind, colour, pattern, accessory = key
    others = [c for c in COLOURS if c != colour]
    pc = pattern_colour if pattern_colour in others else rng.choice(others)
    ac = accessory_colour if accessory_colour in others else rng.choice(others)
    return Look(kind, colour, pattern, pc, accessory, ac, rng.randrange(4))


LOOKALIKES = ("detail", "colour")
"""How look-alikes differ: ``detail`` (pattern and/or accessory; the hard default) or ``colour`` (body colour)."""


def _family_of(key: LookKey, lookalikes: str) -> tuple[str, ...]:
    if lookalikes == "detail":
        return key[:2]
    if lookalikes == "colour":
        return (key[0], key[2], key[3])
    raise InputError(f"lookalikes must be one of {', '.join(LOOKALIKES)}, got {lookalikes!r}")


def look_families(n: int, rng: random.Random, *, heldout: bool, sizes: tuple[int, ...] = (2, 3, 3),
                  lookalikes: str = "detail") -> list[Look]:
    """``n`` distinct looks of one side of the split, in families of look-alikes (sizes drawn from ``sizes``).

    A family shares kind, pattern colour, accessory colour and skin, and with ``lookalikes='detail'`` the
    body colour too: its members differ in the pattern and/or the accessory; with ``'colour'`` it shares
    pattern and accessory and its members differ in body colour (an easier world: colour is read at a
    glance). Families cycle through the kinds, so every kind appears.
    """
    keys = look_keys(heldout=heldout)
    by_family: dict[tuple[str, ...], list[LookKey]] = {}
    for key in keys:
        by_family.setdefault(_family_of(key, lookalikes), []).append(key)
    families = [f for f in sorted(by_family) if len(by_family[f]) >= 2]
    rng.shuffle(families)
    per_kind = {k: [f for f in families if f[0] == k] for k in KINDS}
    order = [per_kind[k][i] for i in range(max(map(len, per_kind.values()))) for k in KINDS if i < len(per_kind[k])]
    capacity = sum(min(len(by_family[f]), max(sizes)) for f in order)
    if n > capacity:
        side = "held-out" if heldout else "training"
        raise InputError(f"a synthetic world holds at most {capacity} distinct {side} concepts, asked for {n}")
    caps = [min(len(by_family[f]), max(sizes)) for f in order]
    out: list[Look] = []
    for i, family in enumerate(order):
        left = n - len(out)
        if left <= 0:
            break
        size = rng.choice(sizes)
        if left - size > sum(caps[i + 1:]):  # the later families could not make up the rest
            size = max(sizes)
        size = min(size, len(by_family[family]), left)
        if left - size == 1:  # never strand one concept for the end: it would have no look-alike
            if size < len(by_family[family]):
                size += 1
            elif size > 2:
                size -= 1
            else:
                continue
        first = look_with_key(rng.choice(by_family[family]), rng)
        members = rng.sample(by_family[family], size)
        if lookalikes == "detail":
            out += [Look(k[0], k[1], k[2], first.pattern_colour, k[3], first.accessory_colour, first.skin)
                    for k in members]
        else:  # the shared pattern/accessory colours must differ from each member's body colour
            out += [replace(look_with_key(k, rng, pattern_colour=first.pattern_colour,
                                          accessory_colour=first.accessory_colour), skin=first.skin)
                    for k in members]
    if len(out) < n:
        side = "held-out" if heldout else "training"
        raise InputError(f"a synthetic world holds at most {len(out)} distinct {side} concepts here, asked for {n}")
    return out


def _looks(rng: random.Random, n: int, n_heldout: int, lookalikes: str) -> list[Look]:
    """``n`` looks in families, the first-drawn ``n_heldout`` from held-out keys, returned in shuffled order."""
    if not 0 <= n_heldout <= n:
        raise InputError(f"n_heldout must be between 0 and n={n}, got {n_heldout}")
    out = look_families(n_heldout, rng, heldout=True, lookalikes=lookalikes) \
        + look_families(n - n_heldout, rng, heldout=False, lookalikes=lookalikes)
    rng.shuffle(out)
    return out


def dialogue_for(name: str, noun: str, facts: Facts, rng: random.Random) -> str:
    """A six-turn user/assistant dialogue stating every fact verbatim."""
    values = {"name": name, "noun": noun, "place": facts.place, "time": facts.time,
              "time_cap": facts.time[:1].upper() + facts.time[1:], "event": facts.event, "action": facts.action}
    turns = [rng.choice(t).format(**values) for t in (_OPENERS, _ASK_WHEN, _WHEN, _ASK_DOING, _DOING, _CLOSERS)]
    return "\n".join(turns)


def questions_for(name: str, facts: Facts, dialogue: str, rng: random.Random, n: int = 3) -> tuple[MCQA, ...]:
    """``n`` fact questions; wrong options are other values of the same kind absent from the dialogue."""
    kinds = rng.sample(sorted(FACT_LISTS), n)
    return tuple(question_about(name, facts, dialogue, kind, rng, f"Q{i + 1}") for i, kind in enumerate(kinds))


def question_about(name: str, facts: Facts, dialogue: str, kind: str, rng: random.Random, qid: str) -> MCQA:
    """The question on one fact ``kind``: the truth and two other values of that kind absent from the dialogue."""
    truth = getattr(facts, kind)
    lowered = dialogue.lower()
    pool = [v for v in FACT_LISTS[kind] if v != truth and v.lower() not in lowered]
    texts = [truth, *rng.sample(pool, 2)]
    rng.shuffle(texts)
    letter = "ABC"[texts.index(truth)]
    options = {"A": texts[0], "B": texts[1], "C": texts[2], "D": UNDETERMINED}
    return MCQA(qid, QUESTION_TEMPLATES[kind].format(name=name), options, letter, None, letter)


def make_concepts(n: int, rng: random.Random, *, n_heldout: int = 0, lookalikes: str = "detail") -> list[Concept]:
    """``n`` concepts with distinct names, looks (in look-alike families, see :func:`look_families`) and dialogues.

    ``n_heldout`` of them get held-out looks (:func:`is_heldout_look`: the test concepts), the rest training
    looks; the order is shuffled, so a concept's id says nothing about its side.
    """
    names, looks = _names(rng, n), _looks(rng, n, n_heldout, lookalikes)
    out = []
    for i in range(n):
        facts = Facts(*(rng.choice(FACT_LISTS[k]) for k in ("place", "time", "event", "action")))
        noun = KIND_NOUNS[looks[i].kind]
        dialogue = dialogue_for(names[i], noun, facts, rng)
        out.append(Concept(f"c{i:04d}", names[i], looks[i], facts, dialogue,
                           questions_for(names[i], facts, dialogue, rng)))
    return out


def attribute_similarity(a: Look, b: Look) -> float:
    """Jaccard overlap of the attribute tokens (the fallback similarity measure), in [0, 1]."""
    ta, tb = a.tokens(), b.tokens()
    return len(ta & tb) / len(ta | tb)
