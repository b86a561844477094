"""``covip repro mini``: the reproduction's statistics, its recipe, and a whole run on the tiny VLM.

* statistics: paired differences and seed means with the two-level bootstrap, on counts whose answer is known;
* recipe: the bundled ``mini`` recipe and its quick variant load; bad values (an attacker's sizes, a path as a
  result name, a recipe outside the bundle) are refused with the key named;
* end to end: two seeds of SFT then GSPO on a tiny world, the three models evaluated on held-out concepts; the
  result document agrees with the per-question judgments it was computed from, and RESULTS.md renders it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from covip.sdk.errors import InputError
from covip.training.repro_config import ReproConfig, load_repro_config
from covip.training.repro_stats import (
    accuracy,
    bootstrap_difference,
    bootstrap_mean,
    check_targets,
    counts_from_judgments,
)


def _counts(rights: list[tuple[int, int]], neg: tuple[int, int] = (1, 1)) -> dict:
    """Per-sample counts from (positive right, positive questions) pairs; every sample gets one negative."""
    return {f"s{i}": (r, n, *neg) for i, (r, n) in enumerate(rights)}


# ----------------------------------------------------------------------------------------------- statistics


def test_counts_from_judgments_tally_each_sample_by_polarity():
    rows = [{"sample_id": "a", "polarity": "pos", "right": True}, {"sample_id": "a", "polarity": "pos", "right": False},
            {"sample_id": "a", "polarity": "neg", "right": True}, {"sample_id": "b", "polarity": "neg", "right": False}]
    counts = counts_from_judgments(rows)
    assert counts == {"a": (1, 2, 1, 1), "b": (0, 0, 0, 1)}
    assert accuracy(counts, "pos") == 0.5 and accuracy(counts, "neg") == 0.5
    assert accuracy({"b": (0, 0, 0, 1)}, "pos") is None  # no positive questions: no Acc+


def test_a_change_every_sample_shows_has_a_tight_interval_and_none_has_zero():
    before = [_counts([(0, 2)] * 30), _counts([(0, 2)] * 30)]
    after = [_counts([(2, 2)] * 30), _counts([(2, 2)] * 30)]
    up = bootstrap_difference(before, after, "pos", n_boot=300)
    assert up["mean"] == 1.0 and up["ci95"] == [1.0, 1.0] and up["per_seed"] == [1.0, 1.0]
    same = bootstrap_difference(before, before, "pos", n_boot=300)
    assert same["mean"] == 0.0 and same["ci95"] == [0.0, 0.0]
    assert bootstrap_difference(before, after, "neg", n_boot=300)["mean"] == 0.0


def test_the_interval_carries_seed_noise_and_sample_noise():
    # seed 0 gains on every sample, seed 1 on none: the mean is in between and the interval spans both
    before = [_counts([(0, 1)] * 40), _counts([(0, 1)] * 40)]
    after = [_counts([(1, 1)] * 40), _counts([(0, 1)] * 40)]
    d = bootstrap_difference(before, after, "pos", n_boot=2000, seed=1)
    assert d["mean"] == pytest.approx(0.5)
    assert d["ci95"][0] <= 0.05 and d["ci95"][1] >= 0.95  # resampling seeds reaches both extremes
    # one seed, half the samples gain: a sampling interval around 0.5 that excludes 0 and 1
    one = bootstrap_difference([_counts([(0, 1)] * 40)], [_counts([(1, 1)] * 20 + [(0, 1)] * 20)], "pos",
                               n_boot=2000)
    assert one["mean"] == pytest.approx(0.5) and 0.2 < one["ci95"][0] < 0.5 < one["ci95"][1] < 0.8


def test_differences_pair_the_same_samples_and_refuse_mismatched_runs():
    with pytest.raises(ValueError, match="one run per seed"):
        bootstrap_difference([_counts([(0, 1)])], [], "pos")
    with pytest.raises(ValueError, match="share no held-out sample"):
        bootstrap_difference([{"x": (0, 1, 0, 1)}], [{"y": (1, 1, 0, 1)}], "pos")


def test_the_seed_mean_sits_inside_its_interval():
    runs = [_counts([(1, 2)] * 20), _counts([(2, 2)] * 10 + [(0, 2)] * 10)]
    m = bootstrap_mean(runs, "pos", n_boot=1000)
    assert m["per_seed"] == [0.5, 0.5] and m["mean"] == 0.5
    assert m["ci95"][0] <= 0.5 <= m["ci95"][1] and m["ci95"][0] > 0.1


def test_targets_are_judged_on_the_figures_and_missing_figures_are_not_met():
    stages = {"random": {"acc_pos": 0.1}, "sft": {"acc_pos": 0.31}}
    diff = {"acc_pos": {"mean": 0.06, "ci95": [0.01, 0.1]}, "acc_neg": {"mean": -0.02}}
    t = check_targets(stages, diff, {"lsd": 0.1, "lar": None})
    assert t["sft_acc_pos_3x_random"]["met"] is True
    assert t["gspo_acc_pos_plus_0.05"]["met"] is True
    assert t["gspo_acc_neg_within_0.01"]["met"] is False  # Acc- fell by 0.02
    assert t["cag_beats_direct_once"]["met"] is True
    lower = check_targets(stages, {"acc_pos": {"mean": 0.06, "ci95": [-0.01, 0.1]}}, {})
    assert lower["gspo_acc_pos_plus_0.05"]["met"] is False  # the interval reaches 0
    assert lower["gspo_acc_neg_within_0.01"]["met"] is None and lower["cag_beats_direct_once"]["met"] is None
    assert check_targets({"random": {"acc_pos": 0.0}, "sft": {"acc_pos": 0.0}}, {}, {})[
        "sft_acc_pos_3x_random"]["met"] is False  # 0 >= 3 * 0 is no learning
    # Acc+ 0.02 against a random init's 0 meets "3x", but recognition at its null says nobody was recognized
    chance = check_targets({"random": {"acc_pos": 0.0}, "sft": {"acc_pos": 0.02}}, {}, {}, [0.001, 0.6])
    assert chance["sft_acc_pos_3x_random"]["met"] is True and chance["sft_recognition_beats_chance"]["met"] is False
    assert check_targets(stages, diff, {}, [0.001, 0.01])["sft_recognition_beats_chance"]["met"] is True
    assert check_targets(stages, diff, {})["sft_recognition_beats_chance"]["met"] is None


# ----------------------------------------------------------------------------------------------- recipe


def test_the_bundled_recipe_and_its_quick_variant():
    full = load_repro_config("mini")
    assert full.mode == "full" and full.stages.recipe == "mini-cpu" and len(full.stages.seeds) == 3
    assert full.run.result_name == "miniature"
    quick = load_repro_config("mini", quick=True)
    assert quick.mode == "quick" and quick.stages.sft_quick and len(quick.stages.seeds) == 1
    assert quick.eval.capeval_samples < full.eval.capeval_samples
    assert ReproConfig.from_dict(full.to_dict(), source=full.source) == full  # round trip


@pytest.mark.parametrize("key,value,needle", [
    ("stages.seeds", [0, 0], "must not repeat"),
    ("stages.seeds", list(range(17)), "1 to 16 seeds"),
    ("stages.seeds", [10**12], "0..2\\*\\*31"),
    ("stages.warmup_seed", -1, "stages.warmup_seed"),
    ("eval.capeval_samples", 10**9, "eval.capeval_samples"),
    ("eval.downstream_tasks", ["lsd", "rm -rf"], "eval.downstream_tasks"),
    ("eval.bootstrap", 10**9, "eval.bootstrap"),
    ("eval.downstream_answer_tokens", 10**9, "eval.downstream_answer_tokens"),
    ("run.result_name", "../../home/x", "run.result_name"),
    ("run.torch_threads", 10**6, "run.torch_threads"),
])
def test_bad_values_are_refused_with_the_key_named(key, value, needle):
    with pytest.raises(InputError, match=needle):
        load_repro_config("mini", {key: value})


def test_only_bundled_names_or_real_files_are_recipes(tmp_path):
    with pytest.raises(InputError, match="no repro recipe"):
        load_repro_config("../repro/mini")  # a bundled name is a name, not a path into the package
    with pytest.raises(InputError, match="must be a mapping of groups in /etc/passwd"):
        load_repro_config("/etc/passwd")  # a real file that is no recipe
    with pytest.raises(InputError, match="unknown repro config key 'stagez'"):
        bad = tmp_path / "bad.yaml"
        bad.write_text("stagez: {}\n")
        load_repro_config(bad)


def test_committed_seed_records_are_of_the_recipe_as_it_is_now(tmp_path):
    """`covip repro mini --resume` reuses a committed seed record (benchmarks/results/miniature-seeds/) only
    while the recipe hashes to its key; RESULTS.md quotes those records, so they must be of the committed recipe.
    (A reworded description once made seed 0's two-hour record unusable; descriptions no longer count.)"""
    from covip.training import repro

    records = sorted((Path(__file__).resolve().parents[2] / "benchmarks/results/miniature-seeds").glob("seed-*.json"))
    assert records
    config = load_repro_config("mini", {"run.work_dir": str(tmp_path / "work")})
    work = Path(config.run.work_dir).expanduser().resolve()
    for record in records:
        seed = int(record.stem.split("-")[1])
        key = repro._seed_key(config, repro._sft_config(config, work, seed), work, seed)
        stages = tuple(json.loads(record.read_text())["counts"])
        assert repro._finished_seed(record, key, stages) is not None, (
            f"{record.name} is not of the recipe as it is now: run `covip repro mini --seeds {seed} --resume` "
            "again, or undo the recipe change")
    assert not (tmp_path / "work").exists()  # computing a key builds nothing


def test_a_reworded_description_or_an_option_left_off_keeps_a_finished_runs_hash():
    from covip.training.sft import config_hash
    from covip.training.sft_config import NEUTRAL_WHEN_OFF, SftConfig

    base = SftConfig.from_dict({"description": "one wording", "trainer": {"pointer_loss": 1.0}})
    reworded = SftConfig.from_dict({"description": "another wording", "trainer": {"pointer_loss": 1.0}})
    assert config_hash(base) == config_hash(reworded)
    assert "value_probe" in base.to_dict()["trainer"] and "value_probe" not in base.identity()["trainer"]
    assert {"data.invented_names", "trainer.value_probe", "data.answer_tasks", "data.answer_rows"} <= set(NEUTRAL_WHEN_OFF)
    assert not {"answer_tasks", "answer_rows"} & set(base.identity()["data"])
    for key, on in (("trainer.value_probe", 1.0), ("data.invented_names", 0.5), ("trainer.max_steps", 7),
                    ("data.answer_tasks", ["lsd"])):
        extra = {"data.fresh_identities": True} if key == "data.invented_names" else {}
        changed = base.with_overrides({key: on, **extra})
        assert config_hash(changed) != config_hash(base.with_overrides(extra)), key  # a setting that trains otherwise


# ----------------------------------------------------------------------------------------------- end to end

TINY_RECIPE = """
name: tiny-repro
sft:
  model: {{name_or_path: "{model}", dtype: float32, gradient_checkpointing: false}}
  data:
    synth: {{n_concepts: 12, n_train: 16, n_test: 12, context_size: 2, max_present: 1, image_size: 64,
            similarity: attributes, type_mix: [0.5, 0.5, 0.0], n_downstream: 2, seed: 0}}
    sample_types: [recognition]
  vision_warmup: {{enabled: true, objective: attributes, max_time_s: 3, num_train_epochs: 1,
                  per_device_train_batch_size: 8}}
  trainer: {{max_steps: 2, per_device_train_batch_size: 2}}
  eval: {{enabled: false, max_new_tokens: 8, permutations: 100}}
  run: {{progress: false, logging_steps: 1}}
model: {{name_or_path: tiny, dtype: float32, gradient_checkpointing: false}}
lora: {{enabled: true, r: 8, alpha: 16, dropout: 0.0}}
judge: {{spec: lexical}}
gspo: {{num_generations: 2, per_device_train_batch_size: 2, max_steps: 1, max_completion_length: 8,
        learning_rate: 1.0e-2}}
run: {{save_steps: 0, progress: false, logging_steps: 1}}
"""


@pytest.fixture(scope="module")
def tiny_repro(tmp_path_factory, tiny_vlm_dir):
    from covip.training.repro import run_repro

    tmp = tmp_path_factory.mktemp("repro")
    recipe = tmp / "tiny-recipe.yaml"
    recipe.write_text(TINY_RECIPE.format(model=tiny_vlm_dir))
    config = ReproConfig.from_dict({
        "stages": {"recipe": str(recipe), "seeds": [0, 1]},
        "eval": {"capeval_samples": 3, "recognition_samples": 3, "downstream_samples": 1, "bootstrap": 200,
                 "embedder": None, "max_new_tokens": 8, "laptop_samples": 2},
        "run": {"work_dir": str(tmp / "work"), "torch_threads": 1, "cache_dir": str(tmp / "cache")}})
    return tmp, run_repro(config, progress=False, results_dir=tmp / "results")


def test_a_run_trains_both_stages_per_seed_and_evaluates_three_models(tiny_repro, tiny_vlm_dir):
    tmp, result = tiny_repro
    data = json.loads(result.json_path.read_text())
    assert data["mode"] == "full" and data["seeds"] == [0, 1] and data["wall_s"] > 0
    assert set(data["stages"]) == {"random", "sft", "gspo"}
    for stage in data["stages"].values():
        assert {"acc_pos", "acc_neg", "recognition_f1"} <= set(stage)
    run0 = data["runs"][0]
    assert run0["stages"]["random"]["model"] == str(tiny_vlm_dir)
    assert run0["stages"]["sft"]["model"] == str(tmp / "work" / "seed-0" / "sft" / "model")
    assert run0["stages"]["gspo"]["model"] == str(tmp / "work" / "seed-0" / "gspo" / "merged")
    assert run0["sft"]["steps"] == 2 and run0["gspo"]["steps"] == 1
    # the vision warm-up ran once, and both seeds' SFT started from it (the random stage did not)
    warm = tmp / "work" / "vision-warmup"
    for seed in (0, 1):
        sft_yaml = (tmp / "work" / f"seed-{seed}" / "sft" / "config.yaml").read_text()
        assert f"name_or_path: {warm}" in sft_yaml and not (tmp / "work" / f"seed-{seed}" / "sft" / "vision_warmup").exists()
    from safetensors.torch import load_file

    tower = {k: v for k, v in load_file(warm / "model.safetensors").items() if "visual" in k}
    before = load_file(Path(tiny_vlm_dir) / "model.safetensors")
    assert tower and any(not (v == before[k]).all() for k, v in tower.items())  # the warm-up trained the tower
    assert set(data["cag_minus_direct"]) == {"lsd", "lar", "itr"} and data["cag_model"] == "gspo"
    for task in ("lsd", "lar", "itr"):  # the downstream answers kept to eval.downstream_answer_tokens (64)
        path = tmp / "work" / "seed-0" / "eval" / "downstream" / task / f"answers_{task}.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        assert rows and all(r["answer_tokens"] <= 64 for r in rows)
    # the laptop path: the first seed's final model exported with parity, and llama.cpp answered held-out samples
    lap = data["laptop_path"]
    assert lap["gguf"]["parity_ok"] and lap["onnx"]["parity_ok"]
    assert (tmp / "work" / "export" / "gguf" / "covip_export.json").is_file()
    assert lap["llamacpp_recognition"]["n"] == 2 and 0 <= lap["llamacpp_recognition"]["agreement_with_transformers"] <= 1
    # the first seed's final model is installed for `covip demo --model mini` (into the run's cache_dir)
    from covip.sdk.models.mini import find_mini_model

    installed = find_mini_model(tmp / "cache")
    assert data["installed"] == str(installed.folder) and installed.record["source"]["seed"] == 0
    assert installed.record["source"]["stage"] == "gspo" and installed.prompt_pack is None
    merged = tmp / "work" / "seed-0" / "gspo" / "merged"
    assert (installed.model_dir / "model.safetensors").read_bytes() == (merged / "model.safetensors").read_bytes()
    assert set(data["targets"]) == {"sft_acc_pos_3x_random", "sft_recognition_beats_chance", "gspo_acc_pos_plus_0.05",
                                    "gspo_acc_neg_within_0.01", "cag_beats_direct_once"}


def test_the_figures_agree_with_the_judgments_they_come_from(tiny_repro):
    tmp, result = tiny_repro
    data = json.loads(result.json_path.read_text())
    test_ids = {json.loads(line)["id"] for line in (tmp / "work" / "world" / "test.jsonl").read_text().splitlines()}
    per_seed: dict[str, list[float]] = {"sft": [], "gspo": []}
    for seed, run in zip(data["seeds"], data["runs"]):
        for stage in ("sft", "gspo"):
            path = tmp / "work" / f"seed-{seed}" / "eval" / stage / "capeval" / "judgments.jsonl"
            rows = [json.loads(line) for line in path.read_text().splitlines()]
            assert rows and {r["sample_id"] for r in rows} <= test_ids  # held-out samples only
            pos = [r["right"] for r in rows if r["polarity"] == "pos"]
            assert run["stages"][stage]["acc_pos"] == pytest.approx(sum(pos) / len(pos))
            per_seed[stage].append(sum(pos) / len(pos))
    mean = sum(per_seed["sft"]) / 2
    assert data["stages"]["sft"]["acc_pos"] == pytest.approx(mean)
    diff = data["gspo_minus_sft"]["acc_pos"]
    expected = [g - s for g, s in zip(per_seed["gspo"], per_seed["sft"])]
    assert diff["per_seed"] == pytest.approx(expected)
    assert diff["ci95"][0] <= diff["mean"] + 1e-9 and diff["mean"] - 1e-9 <= diff["ci95"][1]


def test_the_result_renders_into_results_md_and_a_png(tiny_repro):
    from PIL import Image

    from covip.sdk.bench import render_results_md

    tmp, result = tiny_repro
    with Image.open(result.png_path) as im:
        assert im.format == "PNG" and im.size[0] > 600
    text = render_results_md(result.json_path.parent, tmp / "RESULTS.md")
    assert "## miniature" in text and "| SFT+GSPO |" in text and "SFT+GSPO - SFT, Acc+" in text
    assert "Targets (full mode)" in text and "Laptop path" in text and "(cannot tabulate" not in text
    rec = json.loads(result.json_path.read_text())["laptop_path"]["llamacpp_recognition"]
    # the agreement is a share; the sentence counts the samples that agree
    assert f"same answer as transformers on {round(rec['agreement_with_transformers'] * rec['n'])} of them" in text


def test_the_cli_prints_the_recipe_and_refuses_bad_seeds(tmp_path):
    from click.testing import CliRunner

    from covip.sdk.cli.main import cli

    runner = CliRunner()
    shown = runner.invoke(cli, ["repro", "mini", "--quick", "--seeds", "3,4", "--work-dir", str(tmp_path),
                                "--print-config"])
    assert shown.exit_code == 0, shown.output
    assert "- 3\n  - 4" in shown.output and str(tmp_path) in shown.output and "sft_quick: true" in shown.output
    bad = runner.invoke(cli, ["repro", "mini", "--seeds", "zero"])
    assert bad.exit_code == 2 and "--seeds takes comma-separated integers" in bad.output


def test_a_seed_run_on_its_own_starts_from_the_same_vision_warm_up(tiny_repro):
    """Seeds run one per session (`--seeds 1 --resume`) start from the tower `--seeds 0,1` gave every seed: the
    warm-up is trained with stages.warmup_seed, not with the first seed of the run, so it is reused, not
    retrained (a retrained one would overwrite the tower seed 0's finished run started from)."""
    from covip.training.repro import _sft_config, _shared_warmup

    tmp, result = tiny_repro
    config = ReproConfig.from_dict(json.loads(result.json_path.read_text())["config"])
    work = Path(config.run.work_dir)
    warm = work / "vision-warmup" / "model.safetensors"
    stamp = warm.stat().st_mtime_ns
    alone = config.with_overrides({"stages.seeds": [1]})
    assert _shared_warmup(alone, _sft_config(alone, work, 1), work) == (work / "vision-warmup", True)
    assert warm.stat().st_mtime_ns == stamp  # reused, not trained again with seed 1
    assert json.loads((work / "vision-warmup.key.json").read_text())["seed"] == 0
    assert config.identity()["stages"].get("warmup_seed") is None  # the default leaves seed records' keys as they were
    assert config.with_overrides({"stages.warmup_seed": 3}).identity()["stages"]["warmup_seed"] == 3


# Last in this file: it reruns the module's run in place (the tests above read that run's outputs first).
def test_resume_reuses_finished_seeds_and_sft_phases_of_the_same_recipe(tiny_repro):
    from covip.training.repro import run_repro

    tmp, result = tiny_repro
    config = ReproConfig.from_dict(json.loads(result.json_path.read_text())["config"])
    work = Path(config.run.work_dir)
    stamps = {p: p.stat().st_mtime_ns for p in (work / "seed-0" / "sft" / "result.json",
                                                 work / "seed-0" / "gspo" / "result.json",
                                                 work / "seed-1" / "gspo" / "result.json")}
    again = run_repro(config, progress=False, results_dir=tmp / "resumed", resume=True)
    before, after = json.loads(result.json_path.read_text()), again.data
    assert after["runs"] == json.loads(json.dumps(before["runs"]))  # both seeds reused as they were
    assert after["stages"] == before["stages"] and after["laptop_path"] == before["laptop_path"]
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())  # nothing trained again
    # another evaluation: the seed is redone, but its SFT (the same config) is not trained again
    changed = config.with_overrides({"stages.seeds": [0], "eval.capeval_samples": 2, "eval.laptop_path": False})
    stale = work / "seed-0" / "gspo" / "checkpoint-999"  # an earlier, longer GSPO run's checkpoint
    stale.mkdir()
    (stale / "adapter_model.safetensors").write_bytes(b"old")
    redone = run_repro(changed, progress=False, results_dir=tmp / "changed", resume=True)
    assert not stale.exists()  # the seed's GSPO folder holds only the checkpoints of the run it records
    assert redone.data["runs"][0]["stages"]["sft"]["capeval_samples"] == 2
    # the reused SFT is marked and its recorded time counts in the seed's wall time (what the seed costs)
    first_sft = before["runs"][0]["sft"]
    redone_sft = redone.data["runs"][0]["sft"]
    assert all(p["reused"] for p in redone_sft["phases"])  # (a recipe with `then:` phases lists each)
    assert redone_sft["reused_s"] >= first_sft["train_s"] > 0
    assert redone.data["runs"][0]["wall_s"] > redone_sft["reused_s"]
    assert redone.data["wall_s"] >= redone.data["runs"][0]["wall_s"] - 0.05  # and in the run's (a seed's: to 0.1 s)
    assert (work / "seed-0" / "sft" / "result.json").stat().st_mtime_ns == stamps[work / "seed-0" / "sft" / "result.json"]
    assert (work / "seed-0" / "gspo" / "result.json").stat().st_mtime_ns != stamps[work / "seed-0" / "gspo" / "result.json"]


def test_seed_records_beside_the_results_let_another_work_folder_resume(tiny_repro):
    """Seeds trained in separate sessions or checkouts: each finished seed's record (figures and per-sample CapEval
    tallies) lies beside the results, and --resume in a fresh work folder reuses it instead of training again."""
    from covip.training.repro import run_repro

    tmp, result = tiny_repro
    records = tmp / "results" / "miniature-seeds"
    assert sorted(p.name for p in records.iterdir()) == ["seed-0.json", "seed-1.json"]
    first = json.loads((records / "seed-0.json").read_text())
    assert set(first["counts"]) == {"random", "sft", "gspo"} and first["run"]["wall_s"] > 0
    config = ReproConfig.from_dict(json.loads(result.json_path.read_text())["config"])
    fresh = config.with_overrides({"run.work_dir": str(tmp / "elsewhere")})
    again = run_repro(fresh, progress=False, results_dir=tmp / "results", resume=True)
    before = json.loads(result.json_path.read_text())
    assert again.data["runs"] == before["runs"] and again.data["stages"] == before["stages"]
    assert again.data["gspo_minus_sft"]["acc_pos"]["per_seed"] == before["gspo_minus_sft"]["acc_pos"]["per_seed"]
    assert not any((tmp / "elsewhere").glob("seed-*"))  # nothing trained or evaluated there
    assert again.data["installed"] is None  # the models' world is not in the fresh folder: not installed from there
    assert again.data["wall_s"] >= sum(r["wall_s"] for r in before["runs"])  # the reused seeds' time counts
    # seed 0 trained on another machine (its model is not here), seed 1 here: the demo gets seed 1's model
    import shutil

    from covip.sdk.models.mini import find_mini_model

    moved = tmp / "moved-results"
    shutil.copytree(records, moved / "miniature-seeds")
    record = json.loads((moved / "miniature-seeds" / "seed-0.json").read_text())
    record["run"]["stages"]["gspo"]["model"] = str(tmp / "another-machine" / "merged")
    (moved / "miniature-seeds" / "seed-0.json").write_text(json.dumps(record))
    shutil.copytree(tmp / "work" / "world", tmp / "with-world" / "world")
    mixed = run_repro(config.with_overrides({"run.work_dir": str(tmp / "with-world")}), progress=False,
                      results_dir=moved, resume=True)
    installed = find_mini_model(tmp / "cache")
    assert mixed.data["installed"] == str(installed.folder) and installed.record["source"]["seed"] == 1


@pytest.mark.parametrize("damage", ["key", "counts", "tally", "stage"])
def test_a_record_of_another_recipe_or_with_broken_tallies_is_not_reused(tmp_path, damage):
    from covip.training.repro import _finished_seed

    good = {"key": "k", "run": {"seed": 0}, "counts": {"random": {"a": [1, 2, 0, 1]}, "sft": {"a": [2, 2, 1, 1]}}}
    assert _finished_seed(_write(tmp_path / "good.json", good), "k", ("random", "sft")) is not None
    bad = json.loads(json.dumps(good))
    if damage == "key":
        bad["key"] = "another recipe"
    elif damage == "counts":
        bad["counts"] = [1, 2, 3]
    elif damage == "tally":
        bad["counts"]["sft"]["a"] = [2, -1, 1, 1]
    else:
        del bad["counts"]["sft"]
    assert _finished_seed(_write(tmp_path / "bad.json", bad), "k", ("random", "sft")) is None
    (tmp_path / "torn.json").write_text('{"key": "k", "run": {')
    assert _finished_seed(tmp_path / "torn.json", "k", ("random", "sft")) is None


def _write(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_a_phase_or_warm_up_stopped_by_its_time_cap_is_called_out():
    """A time cap that binds trains fewer steps than the recipe: the printed summary says which seed and phase (or
    warm-up)."""
    from covip.training.repro_cli import summary_text
    from covip.training.repro_report import time_capped

    phases = [{"name": "mini-cpu", "global_step": 1000, "train_s": 700.0, "stopped_by_time": False},
              {"name": "mini-cpu-captions", "global_step": 1670, "train_s": 9000.0, "stopped_by_time": True}]
    data = {"mode": "full", "seeds": [0, 1], "wall_s": 1.0, "stages": {}, "runs": [
        {"seed": 0, "sft": {"steps": 2670, "stopped_by_time": True, "phases": phases}},
        {"seed": 1, "sft": {"steps": 600, "stopped_by_time": True, "phases": []}}]}
    lines = time_capped(data)
    assert len(lines) == 2 and "seed 0: SFT phase mini-cpu-captions stopped by its time cap at step 1670" in lines[0]
    assert "seed 1" in lines[1] and "at step 600" in lines[1]
    assert "WARNING: seed 0: SFT phase mini-cpu-captions" in summary_text(data)
    data["runs"] = [{"seed": 0, "sft": {"steps": 1000, "stopped_by_time": False, "phases": phases[:1]}}]
    assert time_capped(data) == [] and "WARNING" not in summary_text(data)
    # the shared vision warm-up is bounded by steps too; a cap that binds it is called out the same way
    data["runs"][0]["sft"]["vision_warmup"] = {"steps": 470, "train_s": 300.0, "stopped_by_time": True}
    assert time_capped(data) == ["seed 0: the vision warm-up stopped by its time cap at step 470, short of the "
                                 "recipe's steps (a slower or loaded machine); its figures are not the recipe's: "
                                 "raise vision_warmup.max_time_s and run the seed again"]
    data["runs"][0]["sft"]["vision_warmup"]["stopped_by_time"] = False
    assert time_capped(data) == []
