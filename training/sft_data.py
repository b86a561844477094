"""The synthetic world's ground truth -> the prompt/completion ``datasets.Dataset`` trl's SFTTrainer learns.

One row per training sample:

* ``prompt``: the chat of :func:`covip.training.gspo_data.sample_messages`, i.e. exactly the layout of
  :mod:`covip.sdk.prompts` (caption, recognition or verification prompt; the caption prompt's query header
  drawn by a seeded rng, as in training), with bare ``{"type": "image"}`` placeholders;
* ``completion``: the assistant turn with the ground-truth answer of :mod:`covip.training.data.targets`
  (a personalized caption naming the present concepts with their remembered facts, a recognition rationale
  ending in ``\\boxed{[...]}``, or yes/no);
* ``images``: the sample's image files in prompt order (context images, query image last).

With ``data.answer_tasks``, every one-concept caption sample also gives rows of its downstream question (LSD,
LAR, or ``who``: "Who is this?" answered with the box and the name) asked after the gold caption and directly,
in the evaluation's and the assistant's layouts (:func:`answer_row`).

With ``describe`` among the types, every distinct photo of exactly one concept in those samples (memory
photos, one-concept query scenes) also becomes a row: :func:`covip.sdk.prompts.describe_messages` and the
plain description of the concept's look, cheap and dense practice at reading looks.

Held-out concepts never reach training: :func:`check_training_concepts` refuses any sample that shows a
concept whose split in the world is not ``train`` (context or query), and :func:`load_world` reads the
split from the world's ``concepts.json``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from covip.sdk import prompts
from covip.sdk.errors import DataError, InputError
from covip.training.data.schema import Sample, read_jsonl
from covip.training.data.targets import (
    caption_target,
    describe_target,
    indexed_caption_target,
    recognition_target,
    verification_target,
    who_target,
)
from covip.training.data.world import FACT_LISTS, NAMES, Concept, Facts, Look, dialogue_for, questions_for
from covip.training.gspo_data import placeholder_messages, sample_messages
from covip.training.sft_config import SftDataSection
from covip.training.sft_pointer import NAMES_COLUMN, SPANS_COLUMN

__all__ = [
    "SFT_COLUMNS",
    "World",
    "load_world",
    "world_dir",
    "ensure_world",
    "check_training_concepts",
    "fresh_identities",
    "fresh_caption_sample",
    "target_for",
    "sft_row",
    "takes_answer_rows",
    "answer_row",
    "describe_items",
    "describe_row",
    "matching_rows",
    "copy_query",
    "query_pool",
    "recognition_chat_row",
    "as_messages_row",
    "order_rows",
    "build_sft_dataset",
    "load_sft_samples",
    "load_heldout_samples",
]

log = logging.getLogger(__name__)

SFT_COLUMNS = ("prompt", "completion", "images")
CONCEPTS_FILE = "concepts.json"


@dataclass(frozen=True)
class World:
    """The concepts of a synthetic dataset (from its ``concepts.json``) and which split each belongs to."""

    root: Path
    concepts: dict[str, Concept]
    split: dict[str, str]

    def held_out(self) -> set[str]:
        """Ids of the concepts outside the training split."""
        return {cid for cid, s in self.split.items() if s != "train"}

    def compound_share(self) -> float:
        """The share of compound names ("Bori-Mochi") among the training concepts (the generator makes them once
        its single names run out, so a large world has mostly these)."""
        names = [c.name for cid, c in self.concepts.items() if self.split.get(cid) == "train"]
        return sum("-" in n for n in names) / len(names) if names else 0.0


def load_world(root: str | Path) -> World:
    """Read ``<root>/concepts.json`` (written by :func:`covip.training.data.synthesize`)."""
    root = Path(root).expanduser()
    path = root / CONCEPTS_FILE
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path} is missing: SFT learns from a synthetic world's ground truth; point data.world at "
                         "a `covip data synth` folder (or leave it null to generate one)") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{path} cannot be read as JSON ({exc})") from None
    if not isinstance(records, list):
        raise DataError(f"{path} must hold a list of concepts, got {type(records).__name__}")
    concepts: dict[str, Concept] = {}
    split: dict[str, str] = {}
    for i, rec in enumerate(records):
        try:
            cid = str(rec["id"])
            concepts[cid] = Concept(cid, str(rec["name"]), Look(**rec["look"]), Facts(**rec["facts"]),
                                    str(rec.get("dialogue", "")), ())
            split[cid] = str(rec["split"])
        except (KeyError, TypeError) as exc:
            raise DataError(f"{path}: concept #{i} is malformed ({type(exc).__name__}: {exc})") from None
    return World(root, concepts, split)


def world_dir(data: SftDataSection, output_dir: str | Path) -> Path:
    """The world folder of a config (``<output_dir>/synth`` when data.world is null)."""
    return Path(data.world).expanduser() if data.world else Path(output_dir).expanduser() / "synth"


def ensure_world(data: SftDataSection, output_dir: str | Path, *, progress: bool | None = None) -> Path:
    """The world folder, generated from ``data.synth`` first when it holds no dataset (and that is allowed)."""
    root = world_dir(data, output_dir)
    if (root / "train.jsonl").is_file() and (root / CONCEPTS_FILE).is_file():
        return root
    if not data.synthesize_if_missing:
        raise InputError(f"{root} holds no synthetic dataset (train.jsonl + concepts.json); run `covip data synth "
                         f"--out {root}` or set data.synthesize_if_missing: true")
    from covip.training.data.synth import SynthConfig, synthesize

    try:
        synth = SynthConfig(**data.synth)
    except TypeError as exc:
        raise InputError(f"config key 'data.synth': {exc}") from None
    log.info("synthesizing the SFT world into %s", root)
    synthesize(synth, root, overwrite=root.is_dir() and any(root.iterdir()), progress=progress)
    return root


def _concept_ids(sample: Sample) -> tuple[list[str], list[str]]:
    ids = sample.meta.get("concept_ids")
    shown = sample.meta.get("query_concept_ids", [])
    if not isinstance(ids, list) or not isinstance(shown, list):
        raise DataError(f"sample {sample.id!r}: meta.concept_ids / meta.query_concept_ids are missing; SFT targets "
                        "need a synthetic sample that names its concepts", sample_id=sample.id, field="meta")
    return [str(c) for c in ids], [str(c) for c in shown]


def check_training_concepts(samples: Sequence[Sample], world: World) -> None:
    """Raise DataError when a sample shows a concept that is not a training concept of ``world``."""
    for s in samples:
        ids, shown = _concept_ids(s)
        for cid in [*ids, *shown]:
            if cid not in world.split:
                raise DataError(f"sample {s.id!r}: concept {cid!r} is not in {world.root / CONCEPTS_FILE}",
                                sample_id=s.id, field="meta.concept_ids")
            if world.split[cid] != "train":
                raise DataError(f"sample {s.id!r} shows the held-out concept {cid!r} ({world.concepts[cid].name}, "
                                f"split {world.split[cid]!r}); SFT trains on training concepts only",
                                sample_id=s.id, field="meta.concept_ids")


def _known_concept_ids(sample: Sample, world: World) -> list[str]:
    """The sample's context concept ids, each checked to be a concept of ``world``."""
    ids, _ = _concept_ids(sample)
    missing = [c for c in ids if c not in world.concepts]
    if missing:
        raise DataError(f"sample {sample.id!r}: concept {missing[0]!r} is not in the world", sample_id=sample.id,
                        field="meta.concept_ids")
    return ids


_ONSETS = ("B", "D", "G", "H", "J", "K", "L", "M", "N", "P", "R", "S", "T", "V", "Y", "Z", "Ch", "Sh", "Th", "W")
_VOWELS = ("a", "e", "i", "o", "u", "ae", "eo", "ou")


def invented_name(rng: random.Random) -> str:
    """A pronounceable name of two or three syllables that no name list holds ("Kaeshi", "Temoru"): one of
    ~4.1 million (160 syllables, two or three of them), so a model that has to say it can only copy it from
    the context."""
    return "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(rng.choice((2, 3)))).capitalize()


def fresh_names(world: World, rng: random.Random, n: int, *, invented: float = 0.0) -> list[str]:
    """``n`` distinct names drawn the way the world's names are: single ones, and compound ones in the share its
    training concepts have (a caption phase that only ever copies single names learns to copy the first half of
    "Frank-Ziggy", measured in training/README.md). With ``invented`` > 0 each name, or each half of a compound
    one, is an :func:`invented_name` with that probability: a model cannot guess those from the world's
    name list, only copy them (``data.invented_names``)."""
    share = world.compound_share()

    def one() -> str:
        return invented_name(rng) if invented and rng.random() < invented else rng.choice(NAMES)

    if share == 0 and not invented:
        return rng.sample(NAMES, n)
    names: list[str] = []
    while len(names) < n:
        if share and rng.random() < share:
            first, second = (one(), one()) if invented else rng.sample(NAMES, 2)  # off: the draws as before
            if first == second:
                continue
            name = f"{first}-{second}"
        else:
            name = one()
        if name not in names:
            names.append(name)
    return names


def fresh_identities(sample: Sample, world: World, rng: random.Random, *,
                     invented: float = 0.0) -> tuple[Sample, dict[str, Concept]]:
    """``sample`` with every context concept renamed and given new facts (distinct names within the sample,
    each fact drawn from the world's fact lists), its dialogues rewritten from them; and the renamed concepts
    by id, for the target. The looks, photos and answer stay: only what the context says changes."""
    ids = _known_concept_ids(sample, world)
    names = fresh_names(world, rng, len(ids), invented=invented)
    renamed: dict[str, Concept] = {}
    for cid, name in zip(ids, names):
        c = world.concepts[cid]
        facts = Facts(**{key: rng.choice(values) for key, values in FACT_LISTS.items()})
        renamed[cid] = dataclasses.replace(c, name=name, facts=facts, dialogue=dialogue_for(name, c.noun, facts, rng))
    fresh = dataclasses.replace(sample, dialogues=[renamed[c].dialogue for c in ids], concept_names=names)
    return fresh, renamed


def fresh_caption_sample(sample: Sample, world: World, rng: random.Random, *,
                         invented: float = 0.0) -> tuple[Sample, dict[str, Concept]]:
    """A caption sample with :func:`fresh_identities` and its MCQAs asked anew about the renamed concepts (as
    the synthetic generator asks them, :func:`covip.training.data.synth.caption_questions`), so the r_caps judge
    checks a caption against what this prompt's context says; and the renamed concepts by id. GSPO's
    ``data.fresh_identities``."""
    from covip.training.data.synth import caption_questions

    if sample.sample_type != "caption":
        raise DataError(f"sample {sample.id!r}: fresh questions need a caption sample, not a {sample.sample_type}",
                        sample_id=sample.id, field="sample_type")
    fresh, renamed = fresh_identities(sample, world, rng, invented=invented)
    context = [dataclasses.replace(c, questions=questions_for(c.name, c.facts, c.dialogue, rng))
               for c in (renamed[cid] for cid in _known_concept_ids(sample, world))]
    pos, neg = caption_questions(context, sorted(int(i) for i in sample.present or ()), rng)
    return dataclasses.replace(fresh, pos_qas=pos, neg_qas=neg), renamed


def target_for(sample: Sample, world: World, rng: random.Random, *, rationale: bool = True,
               concepts: Mapping[str, Concept] | None = None, caption_style: str = "prose",
               numbering: int = 1) -> str:
    """The ground-truth answer of one sample (see :mod:`covip.training.data.targets`); ``concepts`` overrides
    the world's concepts by id (:func:`fresh_identities`). ``caption_style`` 'indexed': captions by
    :func:`indexed_caption_target`, boxed with the prompt's dialogue ``numbering``."""
    ids = _known_concept_ids(sample, world)
    if sample.sample_type == "recognition":
        return recognition_target([world.concepts[c].look for c in ids], list(sample.answer or ()),
                                  rationale=rationale)
    if sample.sample_type == "verification":
        return verification_target(str(sample.answer))
    if sample.sample_type == "caption" and caption_style == "indexed":
        return indexed_caption_target(sample.dialogues, list(sample.present or ()), numbering=numbering)
    if sample.sample_type == "caption":
        known = {**world.concepts, **(concepts or {})}
        present = [known[ids[i]] for i in sorted(sample.present or ())]
        return caption_target(present, rng)
    raise DataError(f"sample {sample.id!r}: unknown sample_type {sample.sample_type!r}", sample_id=sample.id,
                    field="sample_type")


def sft_row(sample: Sample, world: World, rng: random.Random, *, rationale: bool = True,
            pack: prompts.PromptPack | None = None, concepts: Mapping[str, Concept] | None = None,
            caption_style: str = "prose") -> dict[str, Any]:
    """The dataset row of one sample (see the module doc); ``concepts``/``caption_style`` as in
    :func:`target_for`."""
    prompt, images = placeholder_messages(sample_messages(sample, rng=rng, pack=pack))
    if [str(p) for p in images] != [str(p) for p in sample.images]:
        raise DataError(f"sample {sample.id!r}: the prompt shows its images in another order than the sample",
                        sample_id=sample.id, field="images")
    numbering = (pack or prompts.PromptPack()).dialogue_numbering
    answer = target_for(sample, world, rng, rationale=rationale, concepts=concepts, caption_style=caption_style,
                        numbering=numbering)
    return {"prompt": prompt, "completion": [{"role": "assistant", "content": [{"type": "text", "text": answer}]}],
            "images": [str(p) for p in images]}


WHO_QUESTIONS = ("Who is this?", "Who's in this photo?", "Do you know who this is?", "Which of mine is this?",
                 "Who is in the new photo?")
"""How answer rows of the 'who' task ask for the name (one drawn per row)."""


def takes_answer_rows(sample: Sample) -> bool:
    """Whether ``data.answer_tasks`` gives ``sample`` answer rows: a caption sample with one present concept
    (the downstream questions ask about the one concept in the new photo)."""
    return sample.sample_type == "caption" and len(sample.present or ()) == 1


def answer_row(sample: Sample, world: World, rng: random.Random, *, task: str, cag: bool,
               pack: prompts.PromptPack | None = None, concepts: Mapping[str, Concept] | None = None,
               caption_style: str = "prose") -> dict[str, Any]:
    """A row asking a one-concept caption sample's downstream question (``task`` 'lsd' or 'lar') in the paper
    protocol's layout, answered with the present concept's place (LSD, as ``//boxed{place}``, the paper's
    question and scorer) or action (LAR); or (``task`` 'who') one of :data:`WHO_QUESTIONS` in the layouts
    covip's assistant sends, answered with the concept's name (:func:`covip.training.data.targets.who_target`).

    ``cag``: CAG's answer pass (:func:`covip.sdk.prompts.paper_answer_messages`, the gold caption as the
    assistant's first turn; 'who': :func:`covip.sdk.prompts.answer_messages`); else the direct answer
    (:func:`covip.sdk.prompts.paper_direct_messages`; 'who': :func:`covip.sdk.prompts.direct_messages`). The
    system turns are the evaluation's (CoViP, "Downstream diagnostic tasks"; oyt9306/CoViP downstream/).
    """
    from covip.training.eval.downstream import paper_system

    if not takes_answer_rows(sample):
        raise DataError(f"sample {sample.id!r}: answer rows need a caption sample with one present concept",
                        sample_id=sample.id, field="present")
    pack = pack or prompts.DEFAULT_PACK
    j = int(sample.present[0])
    concept = {**world.concepts, **(concepts or {})}[_known_concept_ids(sample, world)[j]]
    images = list(sample.images)
    context = [prompts.ContextEntry(dialogue=d, image=img) for d, img in zip(sample.dialogues, images[:-1])]
    caption = target_for(sample, world, rng, rationale=False, concepts=concepts, caption_style=caption_style,
                         numbering=pack.dialogue_numbering) if cag else None
    if task == "who":  # an app's question, in the layouts covip.sdk.Assistant sends ('prefix' answer pass, direct)
        question = rng.choice(WHO_QUESTIONS)
        messages = (prompts.answer_messages(context, images[-1], caption, question, pack=pack) if cag
                    else prompts.direct_messages(context, images[-1], question, pack=pack))
        answer = who_target(concept.name, None if cag else j, numbering=pack.dialogue_numbering)
    else:
        question, system = pack.paper_questions[task], paper_system(task, "cag" if cag else "no_cag")
        messages = (prompts.paper_answer_messages(context, images[-1], caption, question, system=system, pack=pack)
                    if cag else prompts.paper_direct_messages(context, images[-1], question, system=system, pack=pack))
        # the place in the box the paper's LSD question asks for and the authors' scorer reads ("//boxed{place}")
        answer = f"//boxed{{{concept.facts.place}}}" if task == "lsd" else f"You were {concept.facts.action}."
    prompt, shown = placeholder_messages(messages)
    return {"prompt": prompt, "completion": [_assistant(answer)], "images": [str(p) for p in shown]}


def describe_items(samples: Sequence[Sample], world: World) -> list[tuple[str, Look]]:
    """(image path, look) of every distinct photo of exactly one concept in ``samples``, in first-seen order."""
    out: dict[str, Look] = {}
    for s in samples:
        ids, shown = _concept_ids(s)
        context = s.images[:-1] if s.sample_type != "verification" else s.images[:1]
        for path, cid in zip(context, ids):
            if cid in world.concepts:
                out.setdefault(str(path), world.concepts[cid].look)
        if len(shown) == 1 and shown[0] in world.concepts:
            out.setdefault(str(s.images[-1]), world.concepts[shown[0]].look)
    return list(out.items())


def describe_row(image: str, look: Look, pack: prompts.PromptPack | None = None) -> dict[str, Any]:
    """The dataset row that asks for a plain description of one photo (the SDK's describe prompt)."""
    prompt, images = placeholder_messages(prompts.describe_messages(image, pack=pack))
    return {"prompt": prompt, "completion": [{"role": "assistant", "content": [{"type": "text",
                                                                               "text": describe_target(look)}]}],
            "images": [str(p) for p in images]}


def query_pool(samples: Sequence[Sample]) -> dict[str, list[str]]:
    """Query photos that show exactly one concept, by concept id, in first-seen order (follow-up queries)."""
    pool: dict[str, list[str]] = {}
    for s in samples:
        _, shown = _concept_ids(s)
        if len(shown) == 1 and str(s.images[-1]) not in pool.get(shown[0], []):
            pool.setdefault(shown[0], []).append(str(s.images[-1]))
    return pool


def _assistant(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def recognition_chat_row(sample: Sample, world: World, rng: random.Random, *, pool: Mapping[str, Sequence[str]],
                         queries: int, copy_share: float = 0.0, rationale: bool = True,
                         pack: prompts.PromptPack | None = None) -> dict[str, Any]:
    """A conversational row (``messages``, ``images``) asking about ``queries`` query photos of one sample's
    concept images: the sample's own query, then follow-up turns (:func:`covip.sdk.prompts.
    recognition_followup_messages`), each a photo from ``pool`` of one concept drawn uniformly, every turn
    answered by :func:`recognition_target`. With probability ``copy_share`` a one-concept query is replaced by
    that concept's own memory photo (identical pixels). Several answers share one pass over the context.
    With one query the row is a prompt/completion row, as :func:`sft_row` makes (completion-only loss)."""
    if sample.sample_type != "recognition":
        raise InputError(f"sample {sample.id!r} is a {sample.sample_type} sample, not recognition")
    ids = _known_concept_ids(sample, world)
    context = list(sample.images[:-1])
    looks = [world.concepts[c].look for c in ids]
    present = [int(i) for i in sample.answer or ()]
    query = sample.images[-1]
    if len(present) == 1 and rng.random() < copy_share:
        query = context[present[0]]
    messages = [*prompts.recognition_messages(context, query, pack=pack),
                _assistant(recognition_target(looks, present, rationale=rationale))]
    shown = [*context, query]
    for _ in range(queries - 1):
        j = rng.randrange(len(context))
        photos = pool.get(ids[j], ())
        photo = context[j] if not photos or rng.random() < copy_share else rng.choice(list(photos))
        messages += prompts.recognition_followup_messages(photo, image_number=len(shown), pack=pack)
        messages.append(_assistant(recognition_target(looks, [j], rationale=rationale)))
        shown.append(photo)
    chat, images = placeholder_messages(messages)
    if queries == 1:
        return {"prompt": chat[:-1], "completion": chat[-1:], "images": [str(p) for p in images]}
    return {"messages": chat, "images": [str(p) for p in images]}


def as_messages_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A prompt/completion row as a conversational one (``messages`` = prompt + completion): one dataset
    holds one format, and rows with several answers need the conversational one."""
    if "messages" in row:
        return dict(row)
    return {"messages": [*row["prompt"], *row["completion"]], "images": list(row["images"])}


def _context_spans(sample: Sample, world: World, concepts: Mapping[str, Concept] | None = None) -> list[list[str]]:
    """Per context item: its concept's name, then its fact values (each stated verbatim in its dialogue)."""
    out = []
    known = {**world.concepts, **(concepts or {})}
    for cid in _known_concept_ids(sample, world):
        c = known[cid]
        out.append([c.name, c.facts.place, c.facts.time, c.facts.event, c.facts.action])
    return out


def _features(conversational: bool = False, context_spans: bool = False) -> Any:
    import datasets

    text = datasets.Value("string")
    turn = datasets.List({"role": text, "content": datasets.List({"type": text, "text": text})})
    cols = {"messages": turn} if conversational else {"prompt": turn, "completion": turn}
    cols["images"] = datasets.List(datasets.Image())
    if context_spans:
        cols[SPANS_COLUMN] = datasets.List(datasets.List(text))
        cols[NAMES_COLUMN] = datasets.List(text)
    return datasets.Features(cols)


def order_rows(groups: Mapping[str, Sequence[dict[str, Any]]], *, batch_size: int, seed: int | str,
               warmup: Sequence[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    """Rows in training order: ``warmup`` first, then batches of one type each, the batches shuffled.

    Within a type the rows are shuffled too; a type's last, partial batch stays of that type. With a
    sequential sampler every batch the trainer draws holds rows of one type (similar lengths, little padding).
    """
    rng = random.Random(f"covip-sft-order:{seed}")
    batches: list[list[dict[str, Any]]] = []
    for name in sorted(groups):
        rows = list(groups[name])
        rng.shuffle(rows)
        batches += [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]
    rng.shuffle(batches)
    return [*warmup, *(row for batch in batches for row in batch)]


def copy_query(sample: Sample) -> Sample:
    """``sample`` (one present concept) with its query photo replaced by that concept's own memory photo."""
    return dataclasses.replace(sample, images=[*sample.images[:-1], sample.images[int(sample.answer[0])]])


def matching_rows(samples: Sequence[Sample], world: World, n: int, rng: random.Random, *,
                  rationale: bool = True, pack: prompts.PromptPack | None = None,
                  queries_per_row: int = 1) -> list[dict[str, Any]]:
    """``n`` recognition rows whose query image is the present concept's own memory photo (identical pixels),
    from the one-concept recognition samples cycled in a seeded order: the matching curriculum. With
    ``queries_per_row`` > 1, conversational rows whose every query is such a copy."""
    single = [s for s in samples if s.sample_type == "recognition" and len(s.answer or ()) == 1]
    if n and not single:
        raise InputError("data.matching_warmup needs recognition samples with one present concept")
    rows: list[dict[str, Any]] = []
    while len(rows) < n:
        rng.shuffle(single)
        for s in single[:n - len(rows)]:
            if queries_per_row > 1:
                rows.append(recognition_chat_row(s, world, rng, pool={}, queries=queries_per_row, copy_share=1.0,
                                                 rationale=rationale, pack=pack))
                continue
            rows.append(sft_row(copy_query(s), world, rng, rationale=rationale, pack=pack))
    return rows


def build_sft_dataset(samples: Sequence[Sample], world: World, *, seed: int = 0, order_seed: int | None = None,
                      describe: bool = False,
                      types: Sequence[str] | None = None, batch_size: int | None = None,
                      warmup_describe: int = 0, rationale: bool = True, matching_warmup: int = 0,
                      queries_per_row: int = 1, copy_share: float = 0.0, passes: int = 1,
                      pack: prompts.PromptPack | None = None, context_spans: bool = False,
                      identities: bool = False, caption_style: str = "prose", invented_names: float = 0.0,
                      answer_tasks: Sequence[str] = (), answer_rows: int = 1) -> Any:
    """A ``datasets.Dataset`` of :func:`sft_row` rows (and, with ``describe``, :func:`describe_row` rows of the
    samples' one-concept photos), after :func:`check_training_concepts`; ``types`` limits the sample rows.

    ``seed`` draws what the rows say (query headers, target wordings, fresh identities, warm-up rows);
    ``order_seed`` (None: ``seed``) the order :func:`order_rows` gives them, the training seed's part (a
    random sampler would shuffle by the training seed too).
    With ``batch_size`` the rows come in the order of :func:`order_rows` (for a sequential sampler), after
    ``warmup_describe`` description rows (the describe items cycled in a seeded order), then
    ``matching_warmup`` rows of :func:`matching_rows`. ``queries_per_row`` > 1 or ``copy_share`` > 0 makes
    recognition rows :func:`recognition_chat_row` rows; with ``queries_per_row`` > 1 every row is
    conversational (:func:`as_messages_row`), for trl's assistant-only loss. ``passes`` > 1 repeats the
    sample rows that many times, each pass with its own draws and (with ``batch_size``) its own order.
    ``context_spans`` adds the column :data:`covip.training.sft_pointer.SPANS_COLUMN` (per context item of a
    caption row its name and fact values; [] for other rows) and :data:`covip.training.sft_pointer.NAMES_COLUMN`
    (a caption-by-index row's context names), which pointer supervision reads. ``identities``
    gives every caption row :func:`fresh_identities` (new names and facts per row and pass; ``invented_names``
    the share of them made up, :func:`fresh_names`). ``caption_style``
    as in :func:`target_for`. ``answer_tasks``: every one-concept caption sample also gives ``answer_rows``
    :func:`answer_row` rows (group ``answer``), each of a drawn task among these; the first is CAG or direct
    by a draw, the next ones alternate.
    """
    import datasets

    if not samples:
        raise InputError("no SFT samples: the training set is empty")
    check_training_concepts(samples, world)
    rng = random.Random(f"covip-sft:{seed}")
    chat = queries_per_row > 1 or copy_share > 0
    pool = query_pool(samples) if chat else {}
    items = describe_items(samples, world) if describe or warmup_describe else []
    passes_rows: list[dict[str, list[dict[str, Any]]]] = []
    for _ in range(max(1, passes)):
        groups: dict[str, list[dict[str, Any]]] = {}
        for s in samples:
            if types is None or s.sample_type in types:
                if chat and s.sample_type == "recognition":
                    row = recognition_chat_row(s, world, rng, pool=pool, queries=queries_per_row,
                                               copy_share=copy_share, rationale=rationale, pack=pack)
                else:
                    renamed = None
                    if identities and s.sample_type == "caption":
                        s, renamed = fresh_identities(s, world, rng, invented=invented_names)
                    row = sft_row(s, world, rng, rationale=rationale, pack=pack, concepts=renamed,
                                  caption_style=caption_style)
                if context_spans:
                    prose = s.sample_type == "caption" and caption_style == "prose"
                    row[SPANS_COLUMN] = _context_spans(s, world, renamed) if prose else []
                    indexed = s.sample_type == "caption" and caption_style == "indexed"
                    row[NAMES_COLUMN] = list(s.concept_names) if indexed else []
                groups.setdefault(s.sample_type, []).append(row)
                if answer_tasks and takes_answer_rows(s):
                    first = None
                    for k in range(answer_rows):
                        task = rng.choice(list(answer_tasks))
                        first = rng.random() < 0.5 if first is None else first
                        extra = answer_row(s, world, rng, task=task, cag=first if k % 2 == 0 else not first,
                                           pack=pack, concepts=renamed, caption_style=caption_style)
                        if context_spans:
                            extra[SPANS_COLUMN], extra[NAMES_COLUMN] = [], []
                        groups.setdefault("answer", []).append(extra)
        if describe:
            groups["describe"] = [describe_row(path, look, pack) for path, look in items]
        if not any(groups.values()):
            raise InputError(f"no SFT rows of the types {list(types or [])}")
        passes_rows.append(groups)
    conversational = queries_per_row > 1
    if batch_size is None:
        rows = [r for groups in passes_rows for name in sorted(groups) for r in groups[name]]
    else:
        warmup: list[dict[str, Any]] = []
        if warmup_describe:
            cycle = list(items)
            while len(warmup) < warmup_describe:
                rng.shuffle(cycle)
                warmup += [describe_row(path, look, pack) for path, look in cycle[:warmup_describe - len(warmup)]]
        warmup += matching_rows(samples, world, matching_warmup, rng, rationale=rationale, pack=pack,
                                queries_per_row=queries_per_row)
        rows = list(warmup)
        order = seed if order_seed is None else order_seed
        for i, groups in enumerate(passes_rows):
            rows += order_rows(groups, batch_size=batch_size, seed=order if i == 0 else f"{order}:{i}")
    if conversational:
        rows = [as_messages_row(r) for r in rows]
    if context_spans:
        rows = [{**r, SPANS_COLUMN: r.get(SPANS_COLUMN, []), NAMES_COLUMN: r.get(NAMES_COLUMN, [])} for r in rows]
    return datasets.Dataset.from_list(rows, features=_features(conversational, context_spans))


def _subsample(samples: list[Sample], n: int | None, seed: str) -> list[Sample]:
    if n is None or len(samples) <= n:
        return samples
    keep = sorted(random.Random(seed).sample(range(len(samples)), n))
    return [samples[i] for i in keep]


def load_sft_samples(data: SftDataSection, root: Path) -> list[Sample]:
    """The training split's samples of ``data.sample_types`` (image paths resolved), subsampled to max_samples."""
    samples = read_jsonl(root / "train.jsonl", image_root=root, check_images=True)
    types = [t for t in data.sample_types if t != "describe"] or ["caption", "recognition", "verification"]
    wanted = [s for s in samples if s.sample_type in types]
    if not wanted:
        raise InputError(f"{root / 'train.jsonl'} has no samples of the types {data.sample_types}")
    return _subsample(wanted, data.max_samples, f"covip-sft-subsample:{data.seed}")


def load_heldout_samples(root: Path, types: Sequence[str], max_per_type: int | None,
                         world: World | None = None) -> dict[str, list[Sample]]:
    """The test split's samples by type (each at most ``max_per_type``); checks they use held-out concepts only.

    ``describe`` takes the one-concept samples (any type) whose photos :func:`describe_items` describes.
    """
    samples = read_jsonl(root / "test.jsonl", image_root=root, check_images=True)
    out: dict[str, list[Sample]] = {}
    for t in types:
        if t == "describe":
            single = [s for s in samples if len(s.meta.get("query_concept_ids", [])) == 1]
            out[t] = _subsample(single, max_per_type, "covip-sft-eval:describe")
            continue
        chosen = _subsample([s for s in samples if s.sample_type == t], max_per_type, f"covip-sft-eval:{t}")
        if not chosen:
            raise InputError(f"{root / 'test.jsonl'} has no {t} samples to evaluate; raise data.synth.n_test or "
                             "change eval.sample_types")
        out[t] = chosen
    if world is not None:
        held = world.held_out()
        for items in out.values():
            for s in items:
                ids, shown = _concept_ids(s)
                leaked = [c for c in [*ids, *shown] if c not in held]
                if leaked:
                    raise DataError(f"held-out sample {s.id!r} shows the training concept {leaked[0]!r}; the "
                                    "evaluation would not measure generalization", sample_id=s.id, field="meta")
    return out


def split_counts(samples: Mapping[str, Sequence[Sample]]) -> dict[str, int]:
    """Number of samples per type (for reports)."""
    return {k: len(v) for k, v in samples.items()}
