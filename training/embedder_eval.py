"""Held-out retrieval of an embedder in the synthetic world, through a real covip Memory.

The memory (:func:`retrieval_world`): ``n_concepts`` concepts with *held-out* looks (no trained model saw
them), in families of look-alikes (same kind and colours, another pattern or accessory), each remembered
with its memory photo and its dialogue, exactly as an app would (``Memory.remember``). The queries: for every
concept, ``queries_per_concept`` photos of it in a new pose, on a new backdrop, in new light. A query is
answered by ``Memory.search`` (FAISS over the embedder's vectors); recall@k is the share of queries whose
concept's memory photo is among the top k. Optional *pair* queries show two concepts at once (as the world's
query photos often do): ``pair_recall_at_k`` is the share of (query, shown concept) found in the top k.

:func:`evaluate_build` measures the trained mini weights and the baselines (``eval.baselines``: ``tiny``,
the random-weight model; ``pixels``, raw downsampled pixels) on the same memory and queries, with a 95%
interval per recall (Wilson) and an exact paired sign test of each baseline against mini.
"""

from __future__ import annotations

import math
import random
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from covip.sdk.errors import InputError
from covip.sdk.imaging import Photo
from covip.training.data.render import render_memory, render_scene
from covip.training.data.world import Concept, look_family, make_concepts

__all__ = ["RetrievalWorld", "PixelEmbedder", "retrieval_world", "evaluate_retrieval", "evaluate_build",
           "wilson_interval", "sign_test_p"]

_USER = "eval"


@dataclass(frozen=True)
class RetrievalWorld:
    """The evaluation memory and queries (all held-out concepts)."""

    concepts: tuple[Concept, ...]
    memory_photos: tuple[Image.Image, ...]
    queries: tuple[tuple[int, Image.Image], ...]
    """(concept index, query photo)."""
    pair_queries: tuple[tuple[tuple[int, int], Image.Image], ...] = ()
    """((concept index, concept index), query photo showing both)."""


def retrieval_world(n_concepts: int, queries_per_concept: int, *, image_size: int = 128, seed: int = 1,
                    pair_queries: int = 0) -> RetrievalWorld:
    """Held-out concepts (in look-alike families) with one memory photo each and new-pose query photos."""
    if n_concepts < 2 or queries_per_concept < 1:
        raise InputError(f"need at least 2 concepts and 1 query per concept, got {n_concepts}, {queries_per_concept}")
    concepts = make_concepts(n_concepts, random.Random(f"covip-embedder-eval:{seed}:world"), n_heldout=n_concepts)
    memory = tuple(render_memory(c.look, image_size, random.Random(f"covip-embedder-eval:{seed}:memory:{c.id}"))
                   for c in concepts)
    queries = tuple((i, render_scene([c.look], image_size, random.Random(f"covip-embedder-eval:{seed}:query:{c.id}:{q}")))
                    for q in range(queries_per_concept) for i, c in enumerate(concepts))
    pairs = []
    for q in range(pair_queries):
        rng = random.Random(f"covip-embedder-eval:{seed}:pair:{q}")
        i, j = rng.sample(range(n_concepts), 2)
        pairs.append(((i, j), render_scene([concepts[i].look, concepts[j].look], image_size, rng)))
    return RetrievalWorld(tuple(concepts), memory, queries, tuple(pairs))


class PixelEmbedder:
    """A baseline "embedder": the photo shrunk to ``side`` x ``side`` pixels, centred and L2-normalized.

    It tells how much raw pixels alone retrieve; with new poses, backdrops and light they should not.
    """

    meaningless = False

    def __init__(self, side: int = 16) -> None:
        self.side = side
        self.dim = side * side * 3
        self.model_id = f"pixels-{side}"

    def embed_images(self, images: Sequence[Image.Image | Photo], *, batch_size: int = 32,
                     progress: bool | None = None) -> np.ndarray:
        """(n, dim) float32 unit rows."""
        rows = []
        for img in images:
            pil = img.image if isinstance(img, Photo) else img
            v = np.asarray(pil.convert("RGB").resize((self.side, self.side), Image.Resampling.BOX), np.float32)
            v = v.reshape(-1) - v.mean()
            rows.append(v / max(float(np.linalg.norm(v)), 1e-12))
        return np.stack(rows).astype(np.float32) if rows else np.zeros((0, self.dim), np.float32)

    def close(self) -> None:
        """Nothing to release."""

    def __enter__(self) -> PixelEmbedder:
        """Use in a ``with`` block."""
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Nothing to release."""


def evaluate_retrieval(embedder: Any, world: RetrievalWorld, *, ks: Sequence[int] = (1, 5),
                       progress: bool | None = None) -> dict[str, Any]:
    """Remember the world's memory photos in a fresh covip Memory with ``embedder``, search with every query.

    Returns ``recall_at_<k>`` per k, ``mrr``, ``lookalike_share_of_top1_misses`` (how many wrong top-1 hits
    are a look-alike of the right concept), ``n_queries``, ``n_memories`` and the per-query ``ranks``
    (0 = the right memory came first).
    """
    from covip.sdk import Memory
    from covip.sdk.progress import progress_bar

    concepts = world.concepts
    family = {c.name: look_family(c.look) for c in concepts}
    ranks: list[int] = []
    lookalike_misses = misses = 0
    name = getattr(embedder, "model_id", type(embedder).__name__)
    # one batched pass per side (what an app's bulk import does); storage and search are the Memory's own
    memory_vecs = embedder.embed_images(list(world.memory_photos), progress=progress)
    query_vecs = embedder.embed_images([q for _, q in world.queries], progress=progress)
    pair_vecs = embedder.embed_images([q for _, q in world.pair_queries], progress=progress)
    pair_ranks: list[int] = []
    with tempfile.TemporaryDirectory(prefix="covip-embedder-eval-") as home, \
            Memory.open(Path(home) / "home", embedder=embedder) as mem:
        mem.add_user(_USER)
        for c, photo, vec in zip(concepts, world.memory_photos, memory_vecs):
            mem.remember(_USER, photo, c.dialogue, [c.name], embedding=vec, model_id=name)
        pairs = zip(world.queries, query_vecs)
        for (i, _query), vec in progress_bar(pairs, total=len(world.queries), desc=f"retrieval {name}",
                                             unit="query", enabled=progress):
            hits = mem.search(_USER, embedding=vec, model_id=name, k=len(concepts))
            order = [h.concepts[0] if h.concepts else "" for h in hits]
            right = concepts[i].name
            rank = order.index(right) if right in order else len(concepts)
            ranks.append(rank)
            if rank > 0 and order:
                misses += 1
                lookalike_misses += family.get(order[0]) == family[right]
        for (shown, _query), vec in zip(world.pair_queries, pair_vecs):
            hits = mem.search(_USER, embedding=vec, model_id=name, k=len(concepts))
            order = [h.concepts[0] if h.concepts else "" for h in hits]
            for i in shown:
                pair_ranks.append(order.index(concepts[i].name) if concepts[i].name in order else len(concepts))
    r = np.array(ranks)
    out: dict[str, Any] = {f"recall_at_{k}": round(float(np.mean(r < k)), 4) for k in ks}
    out.update(mrr=round(float(np.mean(1.0 / (r + 1))), 4),
               lookalike_share_of_top1_misses=round(lookalike_misses / misses, 4) if misses else None,
               n_queries=len(ranks), n_memories=len(concepts), ranks=[int(x) for x in r])
    if pair_ranks:
        pr = np.array(pair_ranks)
        out.update({f"pair_recall_at_{k}": round(float(np.mean(pr < k)), 4) for k in ks})
        out["n_pair_queries"] = len(world.pair_queries)
    return out


def wilson_interval(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a binomial share."""
    if n == 0:
        return (0.0, 1.0)
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4))


def sign_test_p(wins: int, losses: int) -> float:
    """One-sided exact sign test: P(at least ``wins`` of ``wins + losses`` fair coin flips), ties dropped."""
    n = wins + losses
    if n == 0:
        return 1.0
    return float(sum(math.comb(n, j) for j in range(wins, n + 1)) / 2 ** n)


def _hits(ranks: Sequence[int], k: int) -> list[bool]:
    return [r < k for r in ranks]


def evaluate_build(config: Any, weights: str | Path, *, progress: bool | None = None) -> dict[str, Any]:
    """Held-out retrieval of the mini weights and of ``config.eval.baselines`` on one memory (see module doc)."""
    from covip.sdk.vision import EmbedderConfig, make_embedder

    e = config.eval
    start = time.perf_counter()
    world = retrieval_world(e.n_concepts, e.queries_per_concept, image_size=e.image_size, seed=e.seed,
                            pair_queries=e.pair_queries)
    results: dict[str, dict[str, Any]] = {}
    device = "cpu" if config.run.device == "cpu" else "auto"
    with make_embedder(EmbedderConfig(model="mini", pretrained=str(weights), device=device)) as emb:
        results["mini"] = evaluate_retrieval(emb, world, progress=progress)
    for spec in e.baselines:
        base = PixelEmbedder() if spec == "pixels" else make_embedder(spec, device=device)
        with base:
            results[spec] = evaluate_retrieval(base, world, progress=progress)
    n = len(world.queries)
    for name, res in results.items():
        for k in (1, 5):
            res[f"recall_at_{k}_ci95"] = wilson_interval(sum(_hits(res["ranks"], k)), n)
        if name != "mini":
            mine, theirs = _hits(results["mini"]["ranks"], 5), _hits(res["ranks"], 5)
            wins = sum(a and not b for a, b in zip(mine, theirs))
            losses = sum(b and not a for a, b in zip(mine, theirs))
            res["mini_vs_this_at_5"] = {"mini_only_hits": wins, "this_only_hits": losses,
                                        "sign_test_p": sign_test_p(wins, losses)}
    return {"world": {"n_concepts": e.n_concepts, "queries_per_concept": e.queries_per_concept,
                      "pair_queries": e.pair_queries,
                      "image_size": e.image_size, "seed": e.seed, "heldout_looks": True,
                      "n_families": len({look_family(c.look) for c in world.concepts}),
                      "chance_recall_at_1": round(1 / e.n_concepts, 4),
                      "chance_recall_at_5": round(min(1.0, 5 / e.n_concepts), 4)},
            "embedders": results, "recall_at_1": results["mini"]["recall_at_1"],
            "recall_at_5": results["mini"]["recall_at_5"], "eval_s": round(time.perf_counter() - start, 2)}

