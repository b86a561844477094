"""``covip repro mini --quick`` with the bundled recipes, end to end: the CI check that covip's training makes the
mini model more personal.

One run (about ten minutes on 2 CPU cores): the quick mini embedder, the distilled vision tower, SFT with
pointer supervision, two GSPO steps, and the held-out evaluation of the random initialization, the SFT model
and the SFT+GSPO model. Asserted: held-out recognition F1 after SFT above what chance gives (the permutation
null and the best constant answer) by a margin luck cannot explain, while the random initialization stays at
chance; and ``miniature.json`` has the fields the issue names.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("trl")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    from covip.training.repro import run_repro
    from covip.training.repro_config import load_repro_config

    tmp = tmp_path_factory.mktemp("repro-quick")
    # a private cache: the quick embedder must not replace a full one in the user's cache
    config = load_repro_config("mini", [f"run.work_dir={tmp / 'work'}", f"run.cache_dir={tmp / 'cache'}"], quick=True)
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
    assert (tmp / "cache" / "embedders").is_dir()  # built where the run was told, not in the user's cache
    assert data["laptop_path"]["gguf"]["parity_ok"] and data["laptop_path"]["onnx"]["parity_ok"]
    # llama.cpp sees the 64-px photos at the trained layout (the export's image-token limits): same answers
    assert data["laptop_path"]["llamacpp_recognition"]["agreement_with_transformers"] >= 0.85
    assert result.png_path.is_file()
