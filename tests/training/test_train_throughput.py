"""benchmarks/train_throughput.py without training: the step split from marks and spans, the KV-cache reading of
the forward log, the run configs of every shape (with ``--set`` overrides and the trl-rollouts comparison run's),
the deep shape's model, and the refusal of the 2B/8B shapes on a CPU."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytest.importorskip("trl")


@pytest.fixture(scope="module")
def tt():
    path = ROOT / "benchmarks" / "train_throughput.py"
    spec = importlib.util.spec_from_file_location("train_throughput", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_throughput"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("train_throughput", None)


def test_step_split_from_marks_and_spans(tt):
    rec = tt.Recorder(cuda=False)
    rec.events = [("train_begin", 0.0), ("step_begin", 1.0), ("pre_optimizer", 8.0), ("post_optimizer", 8.5),
                  ("step_end", 9.0), ("step_begin", 12.5), ("step_end", 14.0)]
    rec.spans = [("training_step", 1.0, 7.9), ("prepare", 1.0, 4.0), ("rollout", 1.0, 3.0), ("generate", 1.5, 2.5),
                 ("reward", 3.0, 3.5), ("forward", 4.0, 5.0), ("backward", 5.0, 7.5),
                 ("baseline", 9.0, 12.0),  # run from the callback after step 1: not part of any step figure
                 ("training_step", 12.5, 13.0)]
    rec.generations = [{"t0": 1.5, "tokens": 64, "completion_tokens": 60, "prompt_len": 100,
                        "kv_cache_used": True, "model_training": True}]
    rec.loss_batches = [{"t": 4.0, "positions": 400, "completion_tokens": 60}]
    one, two = tt.step_splits(rec)
    assert one["step_s"] == 8.0 and one["between_steps_s"] == 1.0 and two["between_steps_s"] == 0.5
    assert (one["rollout_s"], one["generate_s"], one["reward_s"], one["prepare_s"]) == (2.0, 1.0, 0.5, 3.0)
    assert one["rollout_overhead_s"] == 1.0 and one["rollout_phase_other_s"] == 0.5
    assert (one["forward_s"], one["backward_s"]) == (1.0, 2.5) and one["train_other_s"] == pytest.approx(0.4)
    assert one["optimizer_s"] == pytest.approx(1.1) and one["optimizer_step_s"] == 0.5
    assert one["rollout_tok_s"] == 32.0 and one["generate_tok_s"] == 64.0 and one["rollout_kv_cache_used"]
    assert (one["loss_positions"], one["loss_completion_tokens"]) == (400, 60)
    assert two["rollout_tokens"] == 0 and two["rollout_tok_s"] is None and two["rollout_kv_cache_used"] is None


def test_kv_cache_is_read_from_the_forward_lengths(tt):
    import torch

    assert tt.forward_summary([(528, 0), (1, 528), (1, 529)])["kv_cache_used"]
    assert not tt.forward_summary([(528, 0), (529, 0), (530, 0)])["kv_cache_used"]  # the whole sequence again
    assert tt.completion_lengths(torch.tensor([[5, 2, 7], [5, 6, 7]]), [2, 0]) == [2, 3]


def test_every_shape_has_a_valid_run_config(tt, tmp_path):
    from covip.training.gspo_config import load_config

    for shape in tt.SHAPES:
        for cuda in (False, True):
            base, overrides = tt.run_overrides(shape, 3, 32, tmp_path / "run", cuda)
            config = load_config(base, overrides)
            assert config.judge.spec == "lexical" and not config.run.merge and config.run.save_steps == 0
            assert config.gspo.max_steps == 3 and config.gspo.max_completion_length == 32
            assert config.run.use_cpu is not cuda and config.data.synthesize_if_missing
    assert load_config(*tt.run_overrides("qwen3vl-8b", 1, 8, tmp_path, True)).gspo.gradient_accumulation_steps == 4


def test_set_overrides_and_the_trl_comparison_settings(tt, tmp_path):
    from covip.training.gspo_config import DEFAULT_LORA_TARGET_REGEX, load_config

    base, o = tt.run_overrides("tiny", 2, 16, tmp_path, False, ["model.gradient_checkpointing=true", "gspo.top_k=20"])
    config = load_config(base, o)
    assert config.model.gradient_checkpointing and config.gspo.top_k == 20
    assert config.gspo.rollout_eval_mode and config.gspo.rollout_merge_lora  # tiny-cpu's (covip's) rollouts
    trl_like = load_config(base, {**o, **tt.TRL_ROLLOUTS}).gspo
    assert not (trl_like.rollout_eval_mode or trl_like.rollout_merge_lora or trl_like.rollout_compile)
    # trl 1.x refuses LoRA on lm_head: the 8B shape adapts the decoder projections (the paper config adds lm_head)
    for shape in ("deep", "qwen3vl-8b"):
        regex = load_config(*tt.run_overrides(shape, 1, 8, tmp_path, True)).lora.target_regex
        assert regex == DEFAULT_LORA_TARGET_REGEX
    deep = load_config(*tt.run_overrides("deep", 1, 8, tmp_path, False))
    assert (deep.lora.r, deep.lora.alpha, deep.lora.dropout) == (64, 128, 0.05) and deep.run.use_cpu


def test_deep_shape_is_the_tiny_widths_at_36_layers(tt):
    info = tt.describe_on_meta("deep")
    cfg = tt.large_model_config("deep")
    assert cfg.text_config.num_hidden_layers == 36 and cfg.text_config.hidden_size == 64
    assert 5e6 < info["parameters"] < 10e6 and info["vocab_size"] == 49156  # mostly embeddings + lm_head


def test_large_shapes_are_refused_on_a_cpu(tt, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert tt.main(["--shape", "qwen3vl-8b", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--allow-cpu-large" in err and "7.93 B parameters" in err  # 8B with the SmolLM2 vocabulary
    assert not (tmp_path / "train_throughput.json").exists()
