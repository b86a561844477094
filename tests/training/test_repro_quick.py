"""``covip repro mini --quick`` with the bundled recipes, end to end: the CI check that covip's training makes the
mini model more personal.

One run (6-12 minutes on 2 CPU cores, by CPU): the quick mini embedder, the contrastive vision warm-up, SFT with
pointer supervision, two GSPO steps, and the held-out evaluation of the random initialization, the SFT model
and the SFT+GSPO model. Asserted: held-out recognition F1 after SFT above what chance gives (the permutation
null and the best constant answer) by a margin luck cannot explain, while the random initialization stays at
chance; that the warm-up taught the tower alone; and ``miniature.json`` has the fields the issue names.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("trl")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, quick_embedder):
    from covip.training.repro import run_repro
    from covip.training.repro_config import load_repro_config

    tmp = tmp_path_factory.mktemp("repro-quick")
    # a private cache (the quick embedder must not replace a full one in the user's cache): the session's, which
    # already holds the quick embedder the embedder tests built (tests/training/conftest.py)
    cache = quick_embedder[0]
    config = load_repro_config("mini", [f"run.work_dir={tmp / 'work'}", f"run.cache_dir={cache}"], quick=True)
    return tmp, run_repro(config, progress=False, results_dir=tmp / "results")


def test_quick_sft_learns_heldout_recognition_beyond_chance(quick_run):
    _, result = quick_run
    data = json.loads(result.json_path.read_text())
    (run,) = data["runs"]
    sft, random_init = run["stages"]["sft"], run["stages"]["random"]
    assert sft["recognition_n"] >= 60  # held-out samples: concepts never trained on, new pose
    assert sft["recognition_p_value"] < 0.01  # the permutation test: luck does not explain it
    assert sft["recognition_f1"] >= sft["recognition_null_f1"] + 0.15
    assert sft["recognition_f1"] >= sft["recognition_constant_f1"] + 0.05  # beats always naming one index
    assert random_init["recognition_p_value"] > 0.01  # the random initialization is at chance
    assert sft["recognition_f1"] >= random_init["recognition_f1"] + 0.15
    assert data["targets"]["sft_recognition_beats_chance"]["met"] is True


def test_quick_result_has_the_documented_fields(quick_run):
    tmp, result = quick_run
    data = json.loads(result.json_path.read_text())
    assert data["mode"] == "quick" and data["seeds"] == [0] and data["wall_s"] > 0
    for stage in ("random", "sft", "gspo"):
        assert {"acc_pos", "acc_neg", "recognition_f1"} <= set(data["stages"][stage])
        assert all(0 <= data["stages"][stage][k] <= 1 for k in ("acc_pos", "acc_neg", "recognition_f1"))
    for pol in ("acc_pos", "acc_neg"):
        diff = data["gspo_minus_sft"][pol]
        assert diff["ci95"][0] <= diff["mean"] + 1e-9 <= diff["ci95"][1] + 2e-9
    assert set(data["cag_minus_direct"]) == {"lsd", "lar", "itr"}
    retrieval = data["retrieval"]
    assert 0 <= retrieval["recall_at_1"] <= retrieval["recall_at_5"] <= 1
    assert retrieval["reused_build"]  # the build in the cache it was told to use, not the user's cache
    assert data["laptop_path"]["gguf"]["parity_ok"] and data["laptop_path"]["onnx"]["parity_ok"]
    # llama.cpp sees the 64-px photos at the trained layout (the export's image-token limits): same answers
    assert data["laptop_path"]["llamacpp_recognition"]["agreement_with_transformers"] >= 0.85
    assert result.png_path.is_file()


def test_the_contrastive_warm_up_taught_the_tower_and_left_the_language_model(quick_run):
    """The recipe's vision warm-up (contrastive memory photo vs new-pose scene pairs, no teacher) makes the
    tower retrieve held-out concepts it never saw, on the same queries before and after (a paired sign test),
    and trains the tower only: every seed's SFT starts from it."""
    from safetensors.torch import load_file

    from covip.training.embedder_eval import sign_test_p

    tmp, result = quick_run
    report = json.loads((tmp / "work" / "vision-warmup-run" / "vision_warmup.json").read_text())
    assert report["objective"] == "contrastive" and report["teacher"] is None and report["teacher_retrieval"] is None
    assert report["steps"] > 0 and report["photos"] == report["steps"] * 64  # 32 (photo, scene) pairs a step
    recorded = json.loads(result.json_path.read_text())["runs"][0]["sft"]["vision_warmup"]  # the seed says which
    assert recorded["steps"] == report["steps"] and recorded["stopped_by_time"] == report["stopped_by_time"]
    before, after = report["tower_retrieval_before"], report["tower_retrieval_after"]
    wins = sum(a < 5 <= b for a, b in zip(after["ranks"], before["ranks"]))
    losses = sum(b < 5 <= a for a, b in zip(after["ranks"], before["ranks"]))
    assert after["recall_at_5"] >= before["recall_at_5"] + 0.2 and sign_test_p(wins, losses) < 0.01, report
    warm = load_file(tmp / "work" / "vision-warmup" / "model.safetensors")
    start = load_file(Path(json.loads(result.json_path.read_text())["runs"][0]["stages"]["random"]["model"])
                      / "model.safetensors")
    language = [k for k in start if ".language_model." in k]
    assert language and all(torch_equal(warm[k], start[k]) for k in language)
    assert any(not torch_equal(warm[k], start[k]) for k in start if ".visual." in k)


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))
