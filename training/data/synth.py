"""Offline synthetic CoViP data: a small procedurally drawn world of personal concepts, as covip Samples.

:func:`synthesize` builds, from one seed and a :class:`SynthConfig`:

1. ``n_concepts`` concepts (:mod:`.world`): a distinct look (kind, colour, pattern, accessory) drawn with
   Pillow (:mod:`.render`), a name, four facts, a six-turn dialogue stating them, and 3 MCQAs about them.
   Concepts are split into train and test with NO concept in both (``test_fraction`` of them are test);
   test concepts have held-out looks (:func:`~.world.is_heldout_look`) that no trained model ever sees,
   and looks come in families of look-alikes (same kind and colours, another pattern or accessory).
2. A similarity between concepts, used to pick *distractors* (context concepts absent from the query
   image) that look like the present ones, as the authors did with CLIP ViT-L/14:

   * ``similarity='clip'`` (default): cosine similarity of image embeddings of each concept's reference
     render (upright on a grey card) from ``embedder`` (default ``'tiny'``, the built-in open_clip model
     with random weights; pass e.g. ``'ViT-B-32/laion2b_s34b_b79k'`` for a meaningful one). Embeddings are
     mean-centred over the world's concepts before the cosine: random-weight embeddings all point nearly
     the same way (raw cosines ~0.9999), and centring leaves only what tells the concepts apart;
   * ``similarity='attributes'``: Jaccard overlap of the look attributes (kind, colour, pattern,
     accessory, ...); machine-independent and needs no torch.

   For a sample with present set P, a candidate's score is its highest similarity to a member of P; the
   distractors are drawn at random from the ``needed + distractor_slack`` best-scoring candidates of the
   same split. The report gives the mean score of the chosen distractors and of all candidates (what a
   random choice would average), so "distractors are more similar than random" is measured, not assumed.
3. Samples of the three types, per split, mixed by ``type_mix`` (caption, recognition, verification):

   * caption: ``context_size`` context items (memory photo + dialogue) in random order, 1..``max_present``
     of them present in a query scene drawn with a new pose, scale, background and light; ``pos_qas`` are
     the present concepts' questions, ``neg_qas`` the distractors' (answer D);
   * recognition: the same kind of context and query, ``answer`` = the present indices (``\\boxed{[...]}``);
   * verification: one concept's memory photo and a query scene that holds it (``yes``) or holds only
     look-alike concepts (``no``); ``concept_names`` = the concept's name.

Output folder (written into a temporary sibling and renamed into place, so it is complete or absent)::

    images/concepts/<concept id>.png   one memory photo per concept (the context image)
    images/<split>/<sample id>.png     one query scene per sample
    train.jsonl, test.jsonl            covip Samples (image paths relative to the folder)
    capeval_test.json                  the test caption samples in the authors' CapEval layout
    testset.jsonl                      the same samples in the authors' test-set JSONL layout
    train_official.json                the train samples in the authors' training-JSON layout
    downstream_{lsd,lar,itr}.jsonl     (``n_downstream > 0``) downstream diagnostic samples from the test
                                       concepts' facts (:mod:`.downstream`; query scenes in images/downstream/)
    concepts.json                      the world: looks, facts, dialogues, questions, split
    manifest.json                      config, counts and similarity statistics

Deterministic: the same config gives byte-identical files (with ``similarity='clip'`` on the same machine
and torch build; float rounding in other builds can change a near-tie between distractor candidates).
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from covip.sdk.errors import InputError
from covip.sdk.support import ConfigMixin
from covip.training.data.downstream import DEFAULT_QUESTIONS, TASKS, DownstreamSample, write_downstream
from covip.training.data.loaders import (
    capeval_entry_from_sample,
    write_capeval,
    write_testset_jsonl,
    write_training_json,
)
from covip.training.data.render import png_bytes, render_memory, render_reference, render_scene
from covip.training.data.schema import (
    MCQA,
    SAMPLE_TYPES,
    Sample,
    atomic_write_text,
    swap_into_place,
    write_jsonl,
)
from covip.training.data.world import (
    CODE_WORDS,
    FACT_LISTS,
    LOOKALIKES,
    Concept,
    Look,
    attribute_similarity,
    is_heldout_look,
    make_concepts,
    planted_instruction,
    question_about,
)
from covip.training.judges.base import normalize_text

log = logging.getLogger(__name__)

__all__ = ["SynthConfig", "SynthReport", "synthesize", "concept_similarity", "caption_questions", "SIMILARITIES",
           "OUTPUT_FILES", "DOWNSTREAM_FILES"]

SIMILARITIES = ("clip", "attributes")
OUTPUT_FILES = {
    "train": "train.jsonl", "test": "test.jsonl", "capeval": "capeval_test.json", "testset": "testset.jsonl",
    "train_official": "train_official.json", "concepts": "concepts.json", "manifest": "manifest.json",
}
DOWNSTREAM_FILES = {f"downstream_{task}": f"downstream_{task}.jsonl" for task in TASKS}
_MANIFEST_KIND = "covip-synth"


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class SynthConfig(ConfigMixin):
    """What :func:`synthesize` builds (every field has a ``help`` text, used by the CLI)."""

    n_concepts: int = field(default=40, metadata=_help("Concepts in the world (train + test)."))
    n_train: int = field(default=200, metadata=_help("Training samples (all types)."))
    n_test: int = field(default=60, metadata=_help("Test samples (all types)."))
    test_fraction: float = field(default=0.3, metadata=_help("Share of concepts held out for the test split."))
    max_present: int = field(default=4, metadata=_help("Most concepts visible in one query image."))
    context_size: int = field(default=5, metadata=_help("Context items (concepts) per caption/recognition sample."))
    image_size: int = field(default=128, metadata=_help("Side of every image, pixels."))
    seed: int = field(default=0, metadata=_help("Random seed; the same seed gives the same files."))
    type_mix: tuple[float, float, float] = field(
        default=(0.6, 0.25, 0.15), metadata=_help("Shares of caption, recognition and verification samples."))
    similarity: str = field(default="clip", metadata=_help("Distractor similarity: 'clip' or 'attributes'."))
    embedder: str = field(default="tiny", metadata=_help("Embedder spec for similarity='clip'."))
    distractor_slack: int = field(
        default=2, metadata=_help("Distractors are drawn from the needed+slack most similar candidates."))
    n_downstream: int = field(
        default=0, metadata=_help("Downstream samples per task (LSD, LAR, ITR) from the test concepts; 0 = none."))
    lookalikes: str = field(default="detail", metadata=_help(
        "How look-alike concepts differ: 'detail' (pattern and/or accessory, same body colour; the hard default) "
        "or 'colour' (body colour, same pattern and accessory; an easier world)."))

    def __post_init__(self) -> None:
        ints = ("n_concepts", "n_train", "n_test", "max_present", "context_size", "image_size", "seed",
                "distractor_slack", "n_downstream")
        for name in ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise InputError(f"SynthConfig.{name} must be an integer, got {value!r}")
        for name in ("n_concepts", "max_present", "context_size"):
            if getattr(self, name) < 1:
                raise InputError(f"SynthConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("n_train", "n_test", "distractor_slack", "n_downstream"):
            if getattr(self, name) < 0:
                raise InputError(f"SynthConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.image_size < 32:
            raise InputError(f"SynthConfig.image_size must be >= 32, got {self.image_size}")
        if self.max_present > self.context_size:
            raise InputError(f"SynthConfig.max_present ({self.max_present}) cannot exceed context_size "
                             f"({self.context_size})")
        if not 0.0 < self.test_fraction < 1.0:
            raise InputError(f"SynthConfig.test_fraction must be between 0 and 1, got {self.test_fraction}")
        mix = tuple(self.type_mix)
        if len(mix) != 3 or any((not isinstance(w, (int, float))) or w < 0 for w in mix) or sum(mix) <= 0:
            raise InputError(f"SynthConfig.type_mix must be 3 non-negative shares, got {self.type_mix!r}")
        object.__setattr__(self, "type_mix", tuple(float(w) for w in mix))
        if self.lookalikes not in LOOKALIKES:
            raise InputError(f"SynthConfig.lookalikes must be one of {list(LOOKALIKES)}, got {self.lookalikes!r}")
        if self.similarity not in SIMILARITIES:
            raise InputError(f"SynthConfig.similarity must be one of {list(SIMILARITIES)}, got {self.similarity!r}")
        n_test_c, n_train_c = self.split_sizes()
        for split, n in (("train", n_train_c), ("test", n_test_c)):
            if n <= self.context_size:
                raise InputError(
                    f"the {split} split gets {n} concepts but needs more than context_size={self.context_size} "
                    f"(raise n_concepts, currently {self.n_concepts}, or change test_fraction)")

    def split_sizes(self) -> tuple[int, int]:
        """(test concepts, train concepts)."""
        n_test = max(1, round(self.n_concepts * self.test_fraction))
        return n_test, self.n_concepts - n_test

    def to_dict(self) -> dict[str, Any]:
        """JSON-able config."""
        out = asdict(self)
        out["type_mix"] = list(self.type_mix)
        return out


@dataclass(frozen=True)
class SynthReport:
    """What :func:`synthesize` wrote."""

    out_dir: Path
    files: dict[str, str]
    concepts: dict[str, int]
    counts: dict[str, dict[str, int]]
    n_images: int
    similarity: str
    mean_distractor_similarity: float
    mean_random_similarity: float
    elapsed_s: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-able report."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["out_dir"] = str(self.out_dir)
        return out


def _rng(seed: int, tag: str) -> random.Random:
    return random.Random(f"covip-synth:{seed}:{tag}")


def concept_similarity(looks: Sequence[Look], *, measure: str = "clip", embedder: Any = "tiny",
                       image_size: int = 128) -> np.ndarray:
    """The (n, n) similarity matrix used to choose distractors (see the module doc for the measures)."""
    if measure == "attributes":
        n = len(looks)
        return np.array([[attribute_similarity(looks[i], looks[j]) for j in range(n)] for i in range(n)])
    if measure != "clip":
        raise InputError(f"similarity measure must be one of {list(SIMILARITIES)}, got {measure!r}")
    from covip.sdk.vision import Embedder, make_embedder

    own = not isinstance(embedder, Embedder)
    emb = make_embedder(embedder) if own else embedder
    try:
        vectors = emb.embed_images([render_reference(look, image_size) for look in looks], progress=False)
    finally:
        if own:
            emb.close()
    v = np.asarray(vectors, dtype=np.float64)
    v = v - v.mean(axis=0, keepdims=True)
    v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    return v @ v.T


def _split_counts(n: int, mix: Sequence[float]) -> dict[str, int]:
    total = sum(mix)
    raw = [n * w / total for w in mix]
    counts = [int(r) for r in raw]
    order = sorted(range(3), key=lambda i: (-(raw[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    return dict(zip(SAMPLE_TYPES, counts))


class _Builder:
    """Builds one split's samples (images rendered into ``root``)."""

    def __init__(self, split: str, members: list[int], concepts: list[Concept], sim: np.ndarray,
                 config: SynthConfig, root: Path, concept_paths: dict[int, str]) -> None:
        self.split, self.members, self.concepts, self.sim = split, members, concepts, sim
        self.config, self.root, self.concept_paths = config, root, concept_paths
        self.rng = _rng(config.seed, f"samples:{split}")
        self.scores: list[tuple[float, float]] = []  # (chosen distractors, all candidates) per sample

    def _distractors(self, present: list[int], needed: int) -> list[int]:
        candidates = [c for c in self.members if c not in present]
        score = {c: max(self.sim[c, p] for p in present) for c in candidates}
        ranked = sorted(candidates, key=lambda c: (-score[c], c))
        pool = ranked[: needed + self.config.distractor_slack]
        chosen = self.rng.sample(pool, needed)
        if chosen:
            self.scores.append((float(np.mean([score[c] for c in chosen])),
                                float(np.mean([score[c] for c in candidates]))))
        return chosen

    def _query(self, sample_id: str, shown: list[int]) -> str:
        rel = f"images/{self.split}/{sample_id}.png"
        img = render_scene([self.concepts[c].look for c in shown], self.config.image_size,
                           _rng(self.config.seed, f"scene:{sample_id}"))
        (self.root / rel).write_bytes(png_bytes(img))
        return rel

    def contextual(self, stype: str, index: int) -> Sample:
        """A caption or recognition sample."""
        cfg = self.config
        sid = f"{self.split}-{stype}-{index:05d}"
        k = self.rng.randint(1, cfg.max_present)
        present = self.rng.sample(self.members, k)
        context = present + self._distractors(present, cfg.context_size - k)
        self.rng.shuffle(context)
        positions = sorted(context.index(c) for c in present)
        images = [self.concept_paths[c] for c in context] + [self._query(sid, present)]
        meta = {"concept_ids": [self.concepts[c].id for c in context],
                "query_concept_ids": [self.concepts[c].id for c in present], "similarity": cfg.similarity}
        common = dict(id=sid, images=images, dialogues=[self.concepts[c].dialogue for c in context],
                      concept_names=[self.concepts[c].name for c in context], split=self.split, meta=meta)
        if stype == "recognition":
            return Sample(sample_type="recognition", answer=positions, **common)
        pos, neg = caption_questions([self.concepts[c] for c in context], positions, self.rng)
        return Sample(sample_type="caption", present=positions, pos_qas=pos, neg_qas=neg, **common)

    def verification(self, index: int) -> Sample:
        """A yes/no sample: is the concept of image 1 in image 2?"""
        sid = f"{self.split}-verification-{index:05d}"
        target = self.rng.choice(self.members)
        yes = self.rng.random() < 0.5
        extra = self._distractors([target], self.rng.randint(0, 1) if yes else self.rng.randint(1, 2))
        shown = [target, *extra] if yes else extra
        concept = self.concepts[target]
        meta = {"concept_ids": [concept.id], "query_concept_ids": [self.concepts[c].id for c in shown],
                "similarity": self.config.similarity}
        return Sample(id=sid, sample_type="verification", images=[self.concept_paths[target], self._query(sid, shown)],
                      dialogues=[concept.dialogue], concept_names=[concept.name], answer="yes" if yes else "no",
                      split=self.split, meta=meta)

    def downstream(self, index: int) -> list[DownstreamSample]:
        """One LSD, one LAR and one ITR sample sharing a context and a query scene of one concept."""
        cfg = self.config
        target = self.rng.choice(self.members)
        context = [target, *self._distractors([target], cfg.context_size - 1)]
        self.rng.shuffle(context)
        j = context.index(target)
        concept = self.concepts[target]
        query = self._query(f"ds-{index:05d}", [target])
        images = tuple(self.concept_paths[c] for c in context)
        dialogues = [self.concepts[c].dialogue for c in context]
        code = self.rng.choice(CODE_WORDS)
        planted = list(dialogues)
        planted[j] = f"{dialogues[j]}\n{planted_instruction(concept.name, code, self.rng)}"
        meta = {"target_index": j, "target_concept_id": concept.id,
                "concept_ids": [self.concepts[c].id for c in context]}
        answers = {"lsd": concept.facts.place, "lar": concept.facts.action, "itr": code}
        return [DownstreamSample(f"{task}-{index:05d}", task, images,
                                 tuple(planted if task == "itr" else dialogues), query, DEFAULT_QUESTIONS[task],
                                 (answers[task],), meta, concept.facts.action if task == "lar" else None)
                for task in TASKS]


def caption_questions(context: Sequence[Concept], positions: Sequence[int],
                      rng: random.Random) -> tuple[list[MCQA], list[MCQA]]:
    """The MCQAs of a caption sample whose context shows ``context`` (in order) and whose new photo shows the
    concepts at ``positions``: each context concept's questions for its position, made answerable by a faithful
    caption (:func:`_unambiguous`); the present concepts' as ``pos_qas``, the others' (answer D) as ``neg_qas``.
    The r_caps questions of CoViP's caption samples (the authors' data: 3 per concept)."""
    pos: list[MCQA] = []
    neg: list[MCQA] = []
    for j, concept in enumerate(context):
        stated = _Stated(v for i in positions if i != j for v in vars(context[i].facts).values())
        for q in concept.questions:
            qa = _unambiguous(q, j, stated, concept, rng, negative=j not in positions)
            (neg if j not in positions else pos).append(qa.as_negative() if j not in positions else qa)
    return pos, neg


class _Stated:
    """Fact values a faithful caption of the present concepts states, matched as the lexical judge matches."""

    def __init__(self, values: Any) -> None:
        self.text = " " + " | ".join(normalize_text(v) for v in values) + " "

    def __contains__(self, value: str) -> bool:
        return f" {normalize_text(value)} " in self.text


def _unambiguous(qa: MCQA, j: int, stated: _Stated, concept: Concept, rng: random.Random, *,
                 negative: bool) -> MCQA:
    """``qa`` for context position ``j``, such that a faithful caption can answer it right.

    A caption that states the other present concepts' facts also "states" any option equal to one of them:
    such wrong options are re-drawn (from the same fact list, never a value of the dialogue). A negative
    question whose true answer a present concept shares would be "answered" by a faithful caption: it is
    asked about another of the concept's facts instead (kept as is only when every fact is shared).
    """
    truth = qa.options[qa.fact_answer or qa.correct]
    dialogue = concept.dialogue
    if negative and truth in stated:
        asked = {q.options[q.correct] for q in concept.questions}
        for kind, value in sorted(vars(concept.facts).items()):
            if value not in asked and value not in stated:
                qa = question_about(concept.name, concept.facts, dialogue, kind, rng, qa.id)
                truth = value
                break
    options = dict(qa.options)
    kind = next((k for k, values in FACT_LISTS.items() if truth in values), None)
    used = {normalize_text(v) for v in options.values()}
    lowered = dialogue.lower()
    for letter in "ABC":
        if options[letter] == truth or options[letter] not in stated or kind is None:
            continue
        pool = [v for v in FACT_LISTS[kind]
                if v not in stated and normalize_text(v) not in used and v.lower() not in lowered]
        options[letter] = rng.choice(pool)
        used.add(normalize_text(options[letter]))
    return MCQA(qa.id, qa.question, options, qa.correct, j, qa.fact_answer)


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"output path {out_dir} exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        manifest = out_dir / OUTPUT_FILES["manifest"]
        is_synth = manifest.is_file() and _MANIFEST_KIND in manifest.read_text(encoding="utf-8", errors="replace")
        if not overwrite:
            raise InputError(f"output folder {out_dir} is not empty; pass overwrite=True (--force) to replace "
                             "an earlier synthetic dataset")
        if not is_synth:
            raise InputError(f"output folder {out_dir} is not empty and holds no covip synthetic dataset "
                             f"({OUTPUT_FILES['manifest']}); refusing to replace it")


def synthesize(config: SynthConfig, out_dir: str | Path, *, embedder: Any = None, overwrite: bool = False,
               progress: bool | None = None) -> SynthReport:
    """Build the synthetic dataset of ``config`` into ``out_dir`` (see the module doc); returns a report.

    ``embedder`` (an :class:`~covip.sdk.vision.Embedder`) overrides ``config.embedder`` for
    ``similarity='clip'``; ``progress`` False shows no progress, None or True a bar on a terminal and plain
    lines otherwise (:mod:`covip.sdk.progress`).
    """
    from covip.sdk.progress import progress_bar

    if not isinstance(config, SynthConfig):
        raise InputError(f"synthesize() takes a SynthConfig, got {type(config).__name__}")
    start = time.perf_counter()
    out_dir = Path(out_dir).expanduser().resolve()
    _prepare_out_dir(out_dir, overwrite)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    n_test_c, _ = config.split_sizes()
    concepts = make_concepts(config.n_concepts, _rng(config.seed, "world"), n_heldout=n_test_c,
                             lookalikes=config.lookalikes)
    test_side = [is_heldout_look(c.look) for c in concepts]  # test concepts have held-out looks only
    members = {"test": [i for i, t in enumerate(test_side) if t], "train": [i for i, t in enumerate(test_side) if not t]}
    sim = concept_similarity([c.look for c in concepts], measure=config.similarity,
                             embedder=embedder if embedder is not None else config.embedder,
                             image_size=config.image_size)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the dataset is an ordinary folder
    try:
        subs = ["images/concepts", "images/train", "images/test"] + ["images/downstream"] * bool(config.n_downstream)
        for sub in subs:
            (tmp / sub).mkdir(parents=True, exist_ok=True)
        total = len(concepts) + config.n_train + config.n_test + config.n_downstream
        bar = progress_bar(total=total, desc="covip data synth", unit="item", enabled=progress)
        concept_paths: dict[int, str] = {}
        for i, c in enumerate(concepts):
            rel = f"images/concepts/{c.id}.png"
            img = render_memory(c.look, config.image_size, _rng(config.seed, f"memory:{c.id}"))
            (tmp / rel).write_bytes(png_bytes(img))
            concept_paths[i] = rel
            bar.update(1)
        samples: dict[str, list[Sample]] = {}
        scores: list[tuple[float, float]] = []
        counts: dict[str, dict[str, int]] = {}
        for split, n in (("train", config.n_train), ("test", config.n_test)):
            builder = _Builder(split, members[split], concepts, sim, config, tmp, concept_paths)
            counts[split] = _split_counts(n, config.type_mix)
            out: list[Sample] = []
            for stype in SAMPLE_TYPES:
                for i in range(counts[split][stype]):
                    out.append(builder.verification(i) if stype == "verification" else builder.contextual(stype, i))
                    bar.update(1)
            samples[split] = out
            scores += builder.scores
        downstream: dict[str, list[DownstreamSample]] = {task: [] for task in TASKS}
        if config.n_downstream:
            builder = _Builder("downstream", members["test"], concepts, sim, config, tmp, concept_paths)
            for i in range(config.n_downstream):
                for sample in builder.downstream(i):
                    downstream[sample.task].append(sample)
                bar.update(1)
            for task, items in downstream.items():
                write_downstream(tmp / DOWNSTREAM_FILES[f"downstream_{task}"], items)
        bar.close()
        split_of = {concepts[i].id: s for s, idx in members.items() for i in idx}
        _write_outputs(tmp, config, concepts, split_of, samples)
        mean_d = float(np.mean([s[0] for s in scores])) if scores else float("nan")
        mean_r = float(np.mean([s[1] for s in scores])) if scores else float("nan")
        report = SynthReport(
            out_dir=out_dir, files={**OUTPUT_FILES, **(DOWNSTREAM_FILES if config.n_downstream else {})},
            concepts={k: len(v) for k, v in members.items()}, counts=counts,
            n_images=len(concepts) + config.n_train + config.n_test + config.n_downstream,
            similarity=config.similarity,
            mean_distractor_similarity=round(mean_d, 6), mean_random_similarity=round(mean_r, 6), elapsed_s=0.0)
        manifest = {"kind": _MANIFEST_KIND, "config": config.to_dict(),
                    **{k: v for k, v in report.to_dict().items() if k not in ("out_dir", "elapsed_s")}}
        atomic_write_text(tmp / OUTPUT_FILES["manifest"], json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        swap_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    elapsed = time.perf_counter() - start
    log.info("wrote %d samples and %d images to %s in %.1fs", config.n_train + config.n_test, report.n_images,
             out_dir, elapsed)
    return SynthReport(**{**{f.name: getattr(report, f.name) for f in fields(report)}, "elapsed_s": round(elapsed, 3)})


def _write_outputs(root: Path, config: SynthConfig, concepts: list[Concept], split_of: dict[str, str],
                   samples: dict[str, list[Sample]]) -> None:
    write_jsonl(root / OUTPUT_FILES["train"], samples["train"])
    write_jsonl(root / OUTPUT_FILES["test"], samples["test"])
    test_captions = [s for s in samples["test"] if s.sample_type == "caption"]
    write_capeval(root / OUTPUT_FILES["capeval"], [capeval_entry_from_sample(s) for s in test_captions])
    write_testset_jsonl(root / OUTPUT_FILES["testset"], test_captions)
    write_training_json(root / OUTPUT_FILES["train_official"], samples["train"])
    world = [{**c.to_dict(), "split": split_of[c.id], "image": f"images/concepts/{c.id}.png"} for c in concepts]
    atomic_write_text(root / OUTPUT_FILES["concepts"], json.dumps(world, indent=1, ensure_ascii=False) + "\n")
