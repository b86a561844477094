"""The synthetic world's personal concepts: looks, facts, dialogues and fact questions (no drawing here).

A concept is a pet-like creature, bird, person-like figure, mug or toy robot with a body colour, a pattern
and an accessory (:class:`Look`), plus four objective facts the user told the assistant (:class:`Facts`):
where the photo was taken, when, on which occasion, and what the user was doing. Its dialogue
(:func:`dialogue_for`) is a short multi-turn conversation that states every fact verbatim; its questions
(:func:`questions_for`) ask about three of the four facts, with the true fact and two other values of the
same kind as A/B/C (shuffled) and D = "cannot be determined". Values inside one word list are chosen so
that none is a substring of another, so "the correct option's text appears in the dialogue and the wrong
ones do not" holds by construction (and is checked).

Everything is drawn from a ``random.Random`` the caller seeds, so the world is a pure function of the seed.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

from covip.sdk.errors import InputError
from covip.training.data.schema import MCQA, UNDETERMINED

__all__ = [
    "KINDS",
    "COLOURS",
    "PATTERNS",
    "ACCESSORIES",
    "Look",
    "Facts",
    "Concept",
    "make_concepts",
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


def _looks(rng: random.Random, n: int) -> list[Look]:
    colours = list(COLOURS)
    seen: set[tuple] = set()
    out: list[Look] = []
    capacity = len(KINDS) * len(colours) * len(PATTERNS) * len(ACCESSORIES)
    if n > capacity // 4:
        raise InputError(f"a synthetic world holds at most {capacity // 4} distinct concepts, asked for {n}")
    while len(out) < n:
        kind = KINDS[len(out) % len(KINDS)] if len(out) < len(KINDS) else rng.choice(KINDS)
        colour = rng.choice(colours)
        pattern = rng.choice(PATTERNS)
        accessory = rng.choice(ACCESSORIES)
        key = (kind, colour, pattern, accessory)
        if key in seen:
            continue
        seen.add(key)
        others = [c for c in colours if c != colour]
        out.append(Look(kind, colour, pattern, rng.choice(others), accessory, rng.choice(others), rng.randrange(4)))
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
    lowered = dialogue.lower()
    out = []
    for i, kind in enumerate(kinds):
        truth = getattr(facts, kind)
        pool = [v for v in FACT_LISTS[kind] if v != truth and v.lower() not in lowered]
        wrong = rng.sample(pool, 2)
        texts = [truth, *wrong]
        rng.shuffle(texts)
        letter = "ABC"[texts.index(truth)]
        options = {"A": texts[0], "B": texts[1], "C": texts[2], "D": UNDETERMINED}
        out.append(MCQA(f"Q{i + 1}", QUESTION_TEMPLATES[kind].format(name=name), options, letter, None, letter))
    return tuple(out)


def make_concepts(n: int, rng: random.Random) -> list[Concept]:
    """``n`` concepts with distinct names, looks and dialogues."""
    names, looks = _names(rng, n), _looks(rng, n)
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
