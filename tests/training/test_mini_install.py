"""Installing a trained mini model (covip.training.mini_install) and `covip demo --model mini` on it.

The model installed here is the tiny random-weight Qwen3-VL (a trained mini model takes an hour to build):
what is tested is the install, the demo set (held-out concepts only) and the demo's naming count, which a
user reads as the model's personalization rate.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from covip.sdk.errors import InputError, NotFoundError
from covip.sdk.models.mini import find_mini_model

pytest.importorskip("transformers")
pytest.importorskip("open_clip")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    from covip.training.data import SynthConfig, synthesize

    out = tmp_path_factory.mktemp("mini-world") / "world"
    synthesize(SynthConfig(n_concepts=12, n_train=8, n_test=12, context_size=2, max_present=1, image_size=64,
                           similarity="attributes", seed=0), out, progress=False)
    return out


@pytest.fixture(scope="module")
def pack() -> Path:
    from covip.training.config_io import pack_path
    from covip.training.sft_config import load_sft_config

    recipe = load_sft_config("mini-cpu")
    return pack_path(recipe.data.prompt_pack, recipe.source)


def test_install_copies_the_model_and_draws_the_demo_from_held_out_concepts(tmp_path, world, pack, tiny_vlm_dir):
    from covip.training.mini_install import install_mini

    cache = tmp_path / "cache"
    got = install_mini(tiny_vlm_dir, world, pack, cache_dir=cache, n_demo=5, source={"seed": 0})
    concepts = json.loads((world / "concepts.json").read_text())
    held_out = {c["name"]: c for c in concepts if c["split"] == "test"}
    assert got.concepts and len(got.concepts) <= 5
    for c in got.concepts:
        assert c.name in held_out  # never a concept the model trained on
        assert c.memory_photo.read_bytes() == (world / held_out[c.name]["image"]).read_bytes()
        assert c.new_photo.read_bytes() != c.memory_photo.read_bytes()  # a new photo, not the remembered one
        assert c.dialogue == held_out[c.name]["dialogue"] and c.kind in ("person", "pet", "object")
    assert (got.model_dir / "config.json").read_bytes() == (tiny_vlm_dir / "config.json").read_bytes()
    assert got.prompt_pack.read_text() == pack.read_text()
    assert got.record["source"]["seed"] == 0 and got.record["source"]["world_dir"] == str(world.resolve())
    assert find_mini_model(cache).record == got.record


def test_bad_installs_are_refused_and_keep_the_earlier_one(tmp_path, world, pack, tiny_vlm_dir):
    from covip.training.mini_install import install_mini

    cache = tmp_path / "cache"
    with pytest.raises(NotFoundError):
        find_mini_model(cache)
    first = install_mini(tiny_vlm_dir, world, pack, cache_dir=cache, n_demo=2)
    attempts = [
        ((tmp_path / "nowhere", world, pack), {}, "no config.json"),
        ((world, world, pack), {}, "no config.json"),  # a world is not a model
        ((tiny_vlm_dir, tmp_path / "no-world", pack), {}, "is missing"),
        ((tiny_vlm_dir, world, pack), {"n_demo": 10**9}, "1-64 concepts"),
        ((tiny_vlm_dir, world, pack), {"n_demo": 0}, "1-64 concepts"),
        ((tiny_vlm_dir, world, tmp_path / "no-pack.toml"), {}, "no-pack.toml"),
    ]
    for args, kwargs, needle in attempts:
        with pytest.raises(InputError, match=needle):
            install_mini(*args, cache_dir=cache, **kwargs)
        assert find_mini_model(cache).record == first.record
    assert not [p for p in cache.joinpath("models").iterdir() if p.name.startswith(".")]  # no temp folder left


def test_a_tampered_world_is_refused_before_anything_is_copied(tmp_path, world, pack, tiny_vlm_dir):
    """A world names its photos relative to itself: one pointing outside (``../``, absolute, the user's
    own files) or a garbled test sample is refused with the line, and no earlier install is touched."""
    import shutil

    from covip.training.mini_install import demo_rows, install_mini

    cache = tmp_path / "cache"
    first = install_mini(tiny_vlm_dir, world, pack, cache_dir=cache, n_demo=2)
    secret = tmp_path / "secret.txt"
    secret.write_text("not a photo")
    concepts = json.loads((world / "concepts.json").read_text())
    held_out = next(i for i, c in enumerate(concepts) if c["split"] == "test" and c["name"] == first.concepts[0].name)
    tampered_photos = ["../../secret.txt", str(secret), "", None, "images/none.png"]
    for n, bad in enumerate(tampered_photos):
        copy = tmp_path / f"world-{n}"
        shutil.copytree(world, copy)
        changed = [dict(c) for c in concepts]
        changed[held_out]["image"] = bad
        (copy / "concepts.json").write_text(json.dumps(changed))
        with pytest.raises(InputError, match=r"line \d+ is not a test sample"):
            install_mini(tiny_vlm_dir, copy, pack, cache_dir=cache, n_demo=2)
        assert find_mini_model(cache).record == first.record
    garbled = tmp_path / "world-garbled"
    shutil.copytree(world, garbled)
    (garbled / "test.jsonl").write_text("{not json\n" + (world / "test.jsonl").read_text())
    with pytest.raises(InputError, match="line 1 is not a test sample"):
        demo_rows(garbled)


def test_install_mini_then_demo_model_mini_prints_the_naming_rate(tmp_path, world, tiny_vlm_dir, monkeypatch):
    from covip.sdk.cli import cli

    monkeypatch.setenv("COVIP_CACHE", str(tmp_path / "cache"))
    runner = CliRunner()
    missing = runner.invoke(cli, ["demo", "--model", "mini", "--embedder", "tiny"])
    assert missing.exit_code != 0 and "covip repro mini" in missing.stderr
    res = runner.invoke(cli, ["train", "install-mini", "--model", str(tiny_vlm_dir), "--world", str(world),
                              "--demo-concepts", "3", "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.stderr
    n = len(json.loads(res.stdout)["demo"])
    res = runner.invoke(cli, ["demo", "--model", "mini", "--embedder", "tiny", "--max-tokens", "4", "--json",
                              "--home", str(tmp_path / "home")], catch_exceptions=False)
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["model_spec"] == "mini" and "naming rate with CAG" in res.stderr
    assert {r["mode"] for r in doc["runs"]} == {"cag", "direct"} and len(doc["runs"]) == 2 * n
    for mode in ("cag", "direct"):
        runs = [r for r in doc["runs"] if r["mode"] == mode]
        assert doc["naming"][mode]["n"] == n
        assert doc["naming"][mode]["named"] == sum(r["right"] for r in runs) / n
        assert all(r["right"] == (r["named"] == r["concept"]) for r in runs)
        assert all(len(r["memories"]) == min(3, n) for r in runs)  # three dialogues, as the model trained on
