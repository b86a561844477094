"""The synthetic world's photos (held-out looks, new poses, look-alike distractors) and the `mini` embedder.

The embedder tests share one quick build (the recipe's ``--quick`` variant, about a minute on 2 CPU cores) in a
private cache, with the quick reproduction (tests/training/conftest.py); nothing here touches the user's covip
cache.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner

from covip.sdk.errors import EmbedderError, InputError
from covip.training.data import SynthConfig, read_jsonl, synthesize
from covip.training.data.render import (
    MEMORY_BACKDROPS,
    QUERY_BACKDROPS,
    QUERY_POSES,
    REST_POSE,
    plan_memory,
    plan_query,
    render_memory,
    render_scene,
    render_sprite,
)
from covip.training.data.world import (
    KINDS,
    Look,
    is_heldout_look,
    look_families,
    look_family,
    look_key,
    look_keys,
    make_concepts,
)


# -- the world: held-out looks ---------------------------------------------------------------------------
def test_look_space_is_split_once_into_training_and_heldout_looks() -> None:
    held, train = set(look_keys(heldout=True)), set(look_keys(heldout=False))
    assert held and train and not held & train
    assert 0.2 < len(held) / (len(held) + len(train)) < 0.3
    # the split is a fixed function of the look key, not of a seed or of the other attributes
    look = Look("cat", "red", "stripes", "blue", "hat", "green", 1)
    again = Look("cat", "red", "stripes", "white", "hat", "pink", 3)
    assert is_heldout_look(look) == is_heldout_look(again) == (look_key(look) in held)


def test_world_test_concepts_have_heldout_looks_and_training_concepts_never(tmp_path: Path) -> None:
    concepts = make_concepts(40, random.Random(5), n_heldout=12)
    assert sum(is_heldout_look(c.look) for c in concepts) == 12
    config = SynthConfig(n_concepts=30, n_train=10, n_test=10, image_size=40, similarity="attributes", seed=2)
    synthesize(config, tmp_path / "w", progress=False)
    world = json.loads((tmp_path / "w" / "concepts.json").read_text())
    for c in world:
        assert is_heldout_look(Look(**c["look"])) == (c["split"] == "test"), c["id"]
    assert sum(c["split"] == "test" for c in world) == config.split_sizes()[0]


def test_mini_embedder_trains_on_training_looks_only() -> None:
    from covip.training.embedder_train import WorldPairs

    pairs = WorldPairs(300, sizes=[40], seed=0, preprocess=lambda img: __import__("torch").zeros(1), progress=False)
    assert len(pairs.looks) == 300 and not any(is_heldout_look(look) for look in pairs.looks)
    assert len({look_key(look) for look in pairs.looks}) > 200  # many different concepts, not a handful


# -- the world: look-alike families and distractors ------------------------------------------------------
@pytest.mark.parametrize("heldout", [True, False])
def test_every_concept_has_a_lookalike(heldout: bool) -> None:
    for n in (2, 3, 5, 12, 41):
        looks = look_families(n, random.Random(n), heldout=heldout)
        assert len(set(looks)) == n and all(is_heldout_look(lk) == heldout for lk in looks)
        sizes = Counter(look_family(lk) for lk in looks)
        assert min(sizes.values()) >= 2, sizes  # same kind and colour ...
        by_family: dict = {}
        for lk in looks:
            by_family.setdefault(look_family(lk), []).append(lk)
        for members in by_family.values():  # ... the same pattern/accessory colours, another pattern or accessory
            assert len({(m.pattern, m.accessory) for m in members}) == len(members)
            assert len({(m.pattern_colour, m.accessory_colour) for m in members}) == 1
    assert {lk.kind for lk in look_families(30, random.Random(0), heldout=True)} == set(KINDS)


def test_context_distractors_are_lookalikes_of_the_present_concepts(tmp_path: Path) -> None:
    config = SynthConfig(n_concepts=40, n_train=40, n_test=30, image_size=40, similarity="attributes", seed=4,
                         type_mix=(1.0, 0.0, 0.0))
    synthesize(config, tmp_path / "w", progress=False)
    world = {c["id"]: Look(**c["look"]) for c in json.loads((tmp_path / "w" / "concepts.json").read_text())}
    shared = chance = total = 0
    for split in ("train", "test"):
        samples = read_jsonl(tmp_path / "w" / f"{split}.jsonl")
        members = {c for s in samples for c in s.meta["concept_ids"]}
        for s in samples:
            present = set(s.meta["query_concept_ids"])
            families = {look_family(world[c]) for c in present}
            others = [c for c in members if c not in present]
            for c in s.meta["concept_ids"]:
                if c not in present:
                    total += 1
                    shared += look_family(world[c]) in families
                    chance += np.mean([look_family(world[o]) in families for o in others])
    assert total > 50
    # most distractors share kind and colour with a concept in the photo; a random pick would rarely
    assert shared / total >= 0.5 and shared / total >= 2 * chance / total


def test_colour_lookalikes_differ_in_body_colour_only_and_bad_modes_are_refused() -> None:
    looks = look_families(30, random.Random(2), heldout=False, lookalikes="colour")
    assert len({(lk.kind, lk.colour, lk.pattern, lk.accessory) for lk in looks}) == 30
    by_family: dict[tuple[str, str, str], list] = {}
    for lk in looks:
        by_family.setdefault((lk.kind, lk.pattern, lk.accessory), []).append(lk)
    assert all(len(members) >= 2 for members in by_family.values())
    for members in by_family.values():
        assert len({m.colour for m in members}) == len(members)
        assert all(m.pattern_colour != m.colour and m.accessory_colour != m.colour for m in members)
    with pytest.raises(InputError, match="lookalikes"):
        SynthConfig(lookalikes="shape")


# -- the world: query photos -----------------------------------------------------------------------------
def test_query_photos_take_a_new_pose_backdrop_and_light() -> None:
    assert not set(MEMORY_BACKDROPS) & set(QUERY_BACKDROPS)
    assert REST_POSE not in QUERY_POSES
    for seed in range(200):
        rng = random.Random(seed)
        memory, query = plan_memory(rng), plan_query(rng.randint(1, 4), rng)
        assert memory.backdrop in MEMORY_BACKDROPS and query.backdrop in QUERY_BACKDROPS
        assert [p.pose for p in memory.placements] == [REST_POSE] and memory.brightness == 1.0
        assert memory.cast_alpha == 0.0 and not memory.placements[0].mirror and memory.placements[0].tilt == 0.0
        assert all(p.pose in QUERY_POSES for p in query.placements)
        assert abs(query.brightness - 1.0) >= 0.15 and query.cast_alpha >= 0.08


@pytest.mark.parametrize("kind", KINDS)
def test_every_query_pose_changes_the_drawing(kind: str) -> None:
    look = Look(kind, "red", "stripes", "blue", "hat", "green", 1)
    rest = np.asarray(render_sprite(look), dtype=np.int16)
    for pose in QUERY_POSES:
        changed = np.abs(np.asarray(render_sprite(look, pose), dtype=np.int16) - rest).max(axis=-1) > 0
        assert changed.mean() > 0.01, pose  # more than 1% of the canvas differs


def test_a_query_photo_is_not_its_memory_photo_in_pixels() -> None:
    """Raw pixels cannot match a concept's query to its memory photo reliably (what the embedder must learn)."""
    from covip.training.embedder_eval import PixelEmbedder, retrieval_world

    world = retrieval_world(30, 1, image_size=64, seed=3)
    emb = PixelEmbedder()
    sims = emb.embed_images([q for _, q in world.queries]) @ emb.embed_images(list(world.memory_photos)).T
    right = np.array([sims[j, i] for j, (i, _) in enumerate(world.queries)])
    top1 = np.mean(sims.argmax(axis=1) == np.array([i for i, _ in world.queries]))
    assert top1 < 0.5 and float(right.mean()) < 0.9
    rng = random.Random(0)
    look = world.concepts[0].look
    a = np.asarray(render_memory(look, 64, rng), dtype=np.int16)
    b = np.asarray(render_scene([look], 64, rng), dtype=np.int16)
    assert np.abs(a - b).mean() > 10


# -- the mini embedder -----------------------------------------------------------------------------------
def test_mini_spec_without_a_build_names_the_build_command(tmp_path: Path, monkeypatch) -> None:
    from covip.sdk.vision import make_embedder, parse_embedder_spec

    monkeypatch.setenv("COVIP_CACHE", str(tmp_path / "empty-cache"))
    assert parse_embedder_spec("mini").is_mini and parse_embedder_spec("MINI").model == "mini"
    with pytest.raises(EmbedderError, match="covip train embedder --config mini-cpu"):
        make_embedder("mini")
    with pytest.raises(EmbedderError, match="does not exist"):
        make_embedder("mini", pretrained=str(tmp_path / "nope.safetensors"))
    with make_embedder("mini", pretrained="random") as rand:  # the architecture alone, flagged meaningless
        assert rand.meaningless and rand.dim == 128
    assert not (tmp_path / "empty-cache").exists()  # asking wrote nothing


def test_recipe_errors_name_the_key(tmp_path: Path) -> None:
    from covip.training.embedder_config import load_embedder_config

    config = load_embedder_config("mini-cpu")
    assert config.trainer.objective == "image" and config.quick
    with pytest.raises(InputError, match="trainer.objective"):
        load_embedder_config("mini-cpu", ["trainer.objective=words"])
    with pytest.raises(InputError, match="trainer.nope"):
        load_embedder_config("mini-cpu", ["trainer.nope=1"])
    with pytest.raises(InputError, match="data.render_sizes"):
        load_embedder_config("mini-cpu", ["data.render_sizes=[10**9]"])
    with pytest.raises(InputError, match="no embedder recipe"):
        load_embedder_config("no-such-recipe")
    (tmp_path / "notes.yaml").write_text("just a line of text\n")
    with pytest.raises(InputError, match="must be a mapping"):  # any file that is no recipe: a clear error
        load_embedder_config(tmp_path / "notes.yaml")


def test_quick_build_retrieves_heldout_concepts_far_better_than_the_random_embedder(quick_embedder) -> None:
    _, config, build = quick_embedder
    ret = build.record["retrieval"]
    mini, tiny = ret["embedders"]["mini"], ret["embedders"]["tiny"]
    assert not build.reused and build.weights.is_file()
    assert mini["n_queries"] == tiny["n_queries"] == config.eval.n_concepts * config.eval.queries_per_concept
    assert ret["world"]["heldout_looks"]
    # paired exact sign test over the same queries: a lucky random embedder cannot explain the difference
    vs = tiny["mini_vs_this_at_5"]
    assert vs["sign_test_p"] < 1e-3, vs
    assert mini["recall_at_5"] >= tiny["recall_at_5"] + 0.25 and mini["recall_at_5"] > 2 * ret["world"][
        "chance_recall_at_5"]
    assert build.record["train"]["steps"] == config.trainer.max_steps


def test_sdk_loads_the_cached_build_and_a_second_build_reuses_it(quick_embedder, monkeypatch) -> None:
    from covip.sdk.vision import make_embedder
    from covip.training.embedder_eval import evaluate_retrieval, retrieval_world
    from covip.training.embedder_train import build_mini_embedder

    cache, config, build = quick_embedder
    monkeypatch.setenv("COVIP_CACHE", str(cache))
    before = build.weights.stat().st_mtime_ns
    again = build_mini_embedder(config, progress=False)
    assert again.reused and again.weights == build.weights and build.weights.stat().st_mtime_ns == before
    with make_embedder("mini", device="cpu") as emb:
        assert not emb.meaningless and emb.model_id.startswith("open_clip/covip-mini/file-")
        ret = evaluate_retrieval(emb, retrieval_world(config.eval.n_concepts, config.eval.queries_per_concept,
                                                      image_size=config.eval.image_size, seed=config.eval.seed))
    assert ret["ranks"] == build.record["retrieval"]["embedders"]["mini"]["ranks"]  # the same weights, same answers


def test_cli_reports_the_cached_build_and_writes_the_results(quick_embedder, tmp_path: Path) -> None:
    from covip.training.cli import register

    cache, _, build = quick_embedder
    group = click.Group("covip")
    register(group)
    results = tmp_path / "results" / "mini_embedder.json"
    args = ["train", "embedder", "--quick", "--set", f"run.cache_dir={cache}", "--results", str(results),
            "--no-progress"]
    out = CliRunner().invoke(group, [*args, "--json"])
    assert out.exit_code == 0, out.output
    record = json.loads(out.output)
    assert record["reused"] and record["weights"] == str(build.weights)
    summary = json.loads(results.read_text())
    assert set(summary["retrieval"]) == {"recall_at_1", "recall_at_5"}
    assert summary["retrieval"]["recall_at_5"] == build.record["retrieval"]["recall_at_5"]
    assert "tiny" in summary["embedders"] and summary["train_s"] > 0 and summary["config"]["trainer"]
    text = CliRunner().invoke(group, args)
    assert text.exit_code == 0 and "reused" in text.output and "recall@5" in text.output


def test_build_refuses_a_folder_that_is_not_a_build(tmp_path: Path) -> None:
    from covip.training.embedder_config import load_embedder_config
    from covip.training.embedder_train import build_mini_embedder

    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    config = load_embedder_config("mini-cpu", quick=True)
    with pytest.raises(InputError, match="refusing"):
        build_mini_embedder(config, out_dir=target, progress=False)
    assert (target / "notes.txt").read_text() == "keep me"


# -- the VLM's own vision tower, distilled from the embedder -----------------------------------------------
# (the recipe's contrastive warm-up, without a teacher, is checked on the quick reproduction's run: test_repro_quick)
def test_distilling_the_embedder_teaches_the_vlm_tower_to_retrieve_heldout_concepts(quick_embedder, monkeypatch,
                                                                                    tmp_path: Path) -> None:
    import transformers

    from covip.sdk.models import build_tiny_vlm
    from covip.sdk.vision import make_embedder
    from covip.training.embedder_eval import sign_test_p
    from covip.training.sft_distill import distill_vision

    cache, _, _ = quick_embedder
    monkeypatch.setenv("COVIP_CACHE", str(cache))
    folder = build_tiny_vlm("mini-qwen3-vl")
    model = transformers.AutoModelForImageTextToText.from_pretrained(folder)
    processor = transformers.AutoProcessor.from_pretrained(folder)
    visual_before = {k: v.clone() for k, v in model.model.visual.state_dict().items()}
    lm_before = {k: v.clone() for k, v in model.model.language_model.state_dict().items()}
    with make_embedder("mini", device="cpu") as teacher:
        report = distill_vision(model, processor, teacher, output_dir=str(tmp_path / "d"), max_time_s=None,
                                max_steps=250, learning_rate=1e-3, batch_size=16, image_size=128, seed=0,
                                use_cpu=True, eval_concepts=30, queries_per_concept=2, progress=False)
    before, after = report["tower_retrieval_before"], report["tower_retrieval_after"]
    assert report["steps"] == 250 and report["photos"] == 4000
    # the same held-out queries before and after: a paired sign test on "right memory in the top 5"
    wins = sum(a < 5 <= b for a, b in zip(after["ranks"], before["ranks"]))
    losses = sum(b < 5 <= a for a, b in zip(after["ranks"], before["ranks"]))
    assert after["recall_at_5"] >= before["recall_at_5"] + 0.2 and sign_test_p(wins, losses) < 0.01, report
    # the tower changed and the language model did not (the warm-up trains the tower only)
    assert any(not torch_equal(v, model.model.visual.state_dict()[k]) for k, v in visual_before.items())
    assert all(torch_equal(v, model.model.language_model.state_dict()[k]) for k, v in lm_before.items())


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))
