"""GSPO rollout settings on the CPU: trl's vLLM rollouts as a configured path, and covip's transformers rollouts.

vLLM (not installed here, and it needs a GPU): covip's ``gspo.use_vllm`` / ``vllm_*`` keys reach trl's
``GRPOConfig`` and, through trl's ``GRPOTrainer``, the arguments of trl's vLLM backend (``VLLMGeneration``,
replaced by a recorder that returns random completions, so one real GSPO step runs through the vLLM branch in
both modes); invalid values are refused naming the key; ``use_vllm`` without vllm installed fails before any
data or model is loaded, naming the pip line. The GPU commands are in training/README.md ("vLLM rollouts").

Transformers rollouts (``gspo.rollout_*``): the LoRA merge gives the unmerged model's logits and puts the base
weights back bit for bit (bf16 too, where peft's own unmerge does not); a GSPO run generates in eval mode with
the adapters merged, leaves every base weight as it was and still trains the adapters; ``rollout_compile`` reaches
trl's GenerationConfig (a static cache; transformers compiles it on GPUs only, so here it runs eagerly). A LoRA
adapter on lm_head, which trl 1.x refuses, stops the run with an error naming ``lora.target_regex``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from covip.sdk.errors import InputError, MissingExtraError
from covip.training.gspo_config import DEFAULT_LORA_TARGET_REGEX as LORA_REGEX
from covip.training.gspo_config import GspoConfig, load_config
from tests.training.conftest import tiny_gspo_config

pytest.importorskip("trl")
pytest.importorskip("peft")


def _config(tmp: Path, gspo: dict | None = None, **groups) -> GspoConfig:
    """The tiny GSPO config for one step, no saved outputs, with ``gspo`` and ``groups`` merged in."""
    run = {"merge": False, "save_adapter": False, "tensorboard": False, **groups.pop("run", {})}
    return tiny_gspo_config(tmp, gspo={"max_steps": 1, **(gspo or {})}, run=run, **groups)


def _vllm(tmp: Path, **gspo) -> GspoConfig:
    """A vLLM config (run.use_cpu false: vLLM rollouts need a GPU; nothing here starts one)."""
    return _config(tmp, {"use_vllm": True, **gspo}, run={"use_cpu": False})


def _reward(completion_ids=None, **_):
    """A reward with variance under a random policy: the share of even token ids."""
    return [sum(t % 2 == 0 for t in ids) / max(1, len(ids)) for ids in completion_ids]


# ----------------------------------------------------------------------------- vLLM: config -> trl GRPOConfig


def test_colocate_settings_reach_grpo_config(tmp_path):
    from covip.training.gspo import grpo_args

    config = _vllm(tmp_path, vllm_mode="colocate", vllm_gpu_memory_utilization=0.45, vllm_tensor_parallel_size=2,
                   vllm_max_model_length=8192, vllm_enable_sleep_mode=True)
    args = grpo_args(config, tmp_path)
    assert args.use_vllm is True and args.vllm_mode == "colocate"
    assert (args.vllm_gpu_memory_utilization, args.vllm_tensor_parallel_size) == (0.45, 2)
    assert (args.vllm_max_model_length, args.vllm_enable_sleep_mode) == (8192, True)
    assert args.vllm_server_base_url is None
    assert args.cache_implementation is None  # transformers-generate settings stay out of a vLLM run


def test_server_settings_reach_grpo_config(tmp_path):
    from covip.training.gspo import grpo_args

    url = grpo_args(_vllm(tmp_path, vllm_mode="server", vllm_server_base_url="http://10.0.0.5:8001",
                          vllm_server_timeout=600), tmp_path)
    assert (url.use_vllm, url.vllm_mode, url.vllm_server_base_url, url.vllm_server_timeout) == \
        (True, "server", "http://10.0.0.5:8001", 600.0)
    hostport = grpo_args(_vllm(tmp_path, vllm_mode="server", vllm_server_host="10.0.0.7", vllm_server_port=8011),
                         tmp_path)
    assert (hostport.vllm_server_host, hostport.vllm_server_port, hostport.vllm_server_base_url) == \
        ("10.0.0.7", 8011, None)
    defaults = grpo_args(_vllm(tmp_path, vllm_mode="server"), tmp_path)  # trl's own defaults: this machine, 8000
    assert (defaults.vllm_server_host, defaults.vllm_server_port, defaults.vllm_server_base_url) == \
        ("0.0.0.0", 8000, None)


def test_vllm_off_passes_nothing_of_it(tmp_path):
    """use_vllm false: a server URL left in a YAML (switched off with --set) is not an error and not passed."""
    from covip.training.gspo import grpo_args

    args = grpo_args(_config(tmp_path, {"vllm_server_base_url": "http://10.0.0.5:8000", "vllm_mode": "server"}),
                     tmp_path)
    assert args.use_vllm is False and args.vllm_server_base_url is None


def test_bundled_gpu_configs_switch_to_vllm(tmp_path):
    from covip.training.gspo import grpo_args

    for name in ("qwen3vl-2b", "qwen3vl-4b", "qwen3vl-8b-paper"):
        colocate = load_config(name, ["gspo.use_vllm=true", "gspo.vllm_max_model_length=8192",
                                      "gspo.gradient_accumulation_steps=4", "run.bf16=false"])
        args = grpo_args(colocate, tmp_path)
        assert (args.use_vllm, args.vllm_mode, args.vllm_max_model_length) == (True, "colocate", 8192)
        server = load_config(name, ["gspo.use_vllm=true", "gspo.vllm_mode=server", "run.bf16=false",
                                    "gspo.gradient_accumulation_steps=4",
                                    "gspo.vllm_server_base_url=http://127.0.0.1:8001"])
        assert grpo_args(server, tmp_path).vllm_server_base_url == "http://127.0.0.1:8001"


@pytest.mark.parametrize("gspo, key, words", [
    ({"vllm_mode": "remote"}, "gspo.vllm_mode", "'colocate'"),
    ({"vllm_mode": "colocate", "vllm_server_base_url": "http://10.0.0.5:8000"}, "gspo.vllm_server_base_url",
     "vllm_mode 'server' setting"),
    ({"vllm_mode": "colocate", "vllm_server_port": 8001}, "gspo.vllm_server_port", "vllm_mode 'server' setting"),
    ({"vllm_mode": "server", "vllm_server_base_url": "http://h:8000", "vllm_server_port": 8001},
     "gspo.vllm_server_base_url", "not both"),
    ({"vllm_mode": "server", "vllm_server_base_url": "10.0.0.5:8000"}, "gspo.vllm_server_base_url", "root URL"),
    ({"vllm_mode": "server", "vllm_server_base_url": "http://10.0.0.5:8000/v1"}, "gspo.vllm_server_base_url",
     "no /v1"),
    ({"vllm_mode": "server", "vllm_tensor_parallel_size": 2}, "gspo.vllm_tensor_parallel_size",
     "trl vllm-serve"),
    ({"vllm_gpu_memory_utilization": 0.0}, "gspo.vllm_gpu_memory_utilization", r"\(0, 1\]"),
    ({"vllm_gpu_memory_utilization": 1.5}, "gspo.vllm_gpu_memory_utilization", r"\(0, 1\]"),
    ({"vllm_tensor_parallel_size": 0}, "gspo.vllm_tensor_parallel_size", ">= 1"),
    ({"vllm_server_port": 70000, "vllm_mode": "server"}, "gspo.vllm_server_port", "TCP port"),
    ({"vllm_max_model_length": 8}, "gspo.vllm_max_model_length", "max_completion_length"),
    ({"rollout_compile": True}, "gspo.rollout_compile", "vLLM rollouts"),
])
def test_bad_vllm_values_are_refused_naming_the_key(tmp_path, gspo, key, words):
    with pytest.raises(InputError, match=rf"'{key}'.*{words}"):
        _vllm(tmp_path, **gspo)


def test_vllm_needs_a_gpu_run(tmp_path):
    with pytest.raises(InputError, match=r"'gspo\.use_vllm'.*need a GPU.*run\.use_cpu"):
        _config(tmp_path, {"use_vllm": True})


def test_missing_vllm_fails_before_any_loading(tmp_path, monkeypatch):
    from trl import import_utils

    from covip.training.gspo import require_vllm, train_gspo

    monkeypatch.setattr(import_utils, "is_vllm_available", lambda *a, **k: False)
    config = _vllm(tmp_path, vllm_mode="server").with_overrides(
        {"data.train": str(tmp_path / "missing.jsonl"), "model.name_or_path": str(tmp_path / "no-model")})
    with pytest.raises(MissingExtraError) as err:
        train_gspo(config)  # not a data or model error: the vLLM check comes first
    text = str(err.value)
    assert "pip install 'trl[vllm]'" in text and "'vllm'" in text and "gspo.use_vllm" in text
    assert isinstance(err.value, ImportError) and not (tmp_path / "run").exists()
    require_vllm(_config(tmp_path))  # use_vllm false: nothing to check
    monkeypatch.setattr(import_utils, "is_vllm_available", lambda *a, **k: True)
    require_vllm(config)


# ----------------------------------------------------------------------------- vLLM: through trl's GRPOTrainer


class _FakeVLLM:
    """Stands in for trl's VLLMGeneration: records its arguments, returns random completions with log-probs."""

    made: list[dict] = []

    def __init__(self, **kwargs):
        import random

        self.kwargs = kwargs
        self.syncs = self.calls = 0
        self.rng = random.Random(0)
        _FakeVLLM.made.append(self.__dict__)

        class Client:
            @staticmethod
            def get_server_info():
                return {"model_config": {"logprobs_mode": "processed_logprobs"}}

        self.vllm_client = Client()

    def sync_weights(self):
        self.syncs += 1

    def generate(self, prompts, images, num_generations, profiler=None):
        self.calls += 1
        self.images = images
        n = self.kwargs["max_completion_length"]
        completions = [[self.rng.randrange(100, 40000) for _ in range(n)] for _ in prompts]
        return prompts, completions, [[[-3.0] for _ in c] for c in completions], None


@pytest.mark.parametrize("mode, extra", [
    ("colocate", {"vllm_gpu_memory_utilization": 0.5, "vllm_max_model_length": 4096}),
    ("server", {"vllm_server_base_url": "http://10.0.0.5:8001", "vllm_server_timeout": 30}),
])
def test_a_gspo_step_runs_through_trl_vllm_branch(tmp_path, synth_train, monkeypatch, mode, extra):
    import trl.trainer.grpo_trainer as grpo_trainer
    from trl import import_utils

    from covip.training.gspo import train_gspo

    monkeypatch.setattr(import_utils, "is_vllm_available", lambda *a, **k: True)
    monkeypatch.setattr(grpo_trainer, "VLLMGeneration", _FakeVLLM)
    _FakeVLLM.made = []
    config = _vllm(tmp_path, vllm_mode=mode, rollout_merge_lora=True, **extra).with_overrides(
        {"data.train": str(synth_train), "data.sample_types": ["recognition"]})
    result = train_gspo(config, reward_funcs=[_reward])
    assert result.global_step == 1
    (made,) = _FakeVLLM.made
    kw = made["kwargs"]
    assert made["calls"] == 1 and made["syncs"] == 1  # weights pushed before the step's rollout
    assert kw["mode"] == mode and kw["max_completion_length"] == 8 and kw["logprobs"] == 0
    assert (kw["temperature"], kw["top_p"], kw["top_k"]) == (1.0, 1.0, 0)
    assert made["images"] and all(imgs for imgs in made["images"])  # the photos go to vLLM with their prompts
    if mode == "colocate":
        assert (kw["gpu_memory_utilization"], kw["max_model_length"], kw["tensor_parallel_size"]) == (0.5, 4096, 1)
        assert kw["max_num_seqs"] == 4  # per_device_train_batch_size x tp x steps_per_generation
    else:
        assert (kw["server_base_url"], kw["server_timeout"]) == ("http://10.0.0.5:8001", 30.0)


# ----------------------------------------------------------------------------- transformers rollouts


def _tiny_lora(dtype, lm_head: bool = False, tie: bool = False):
    import peft
    import torch
    import transformers as tf

    from covip.sdk.models import build_tiny_vlm

    torch.manual_seed(0)
    model = tf.AutoModelForImageTextToText.from_pretrained(str(build_tiny_vlm("tiny-qwen3-vl")), dtype=dtype)
    if tie:  # as Qwen3-VL-2B/4B do (tie_word_embeddings)
        model.lm_head.weight = model.get_input_embeddings().weight
    model = peft.get_peft_model(model, peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.1, target_modules=(
        LORA_REGEX + "|lm_head" if lm_head else LORA_REGEX)))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)  # a trained adapter (B starts at zero)
    return model


def test_lora_merge_matches_the_adapters_and_restores_the_base_exactly():
    import torch

    from covip.training.gspo import LoraRolloutMerge

    model = _tiny_lora(torch.float32).eval()
    ids = torch.tensor([[1, 400, 401, 402, 403, 404]])
    merge = LoraRolloutMerge(model)
    assert merge.reason_off is None and len(merge.layers) == 14
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    q = merge.layers[0][1].get_base_layer().weight
    q_base = q.detach().clone()
    with torch.no_grad():
        want = model(input_ids=ids).logits
        with merge.merged():
            got = model(input_ids=ids).logits
            assert not q.equal(q_base) and merge.layers[0][1].disable_adapters  # merged, adapters bypassed
        after = model(input_ids=ids).logits
    assert (got - want).abs().max() < 1e-4 and torch.equal(after, want)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert merge.copy_bytes == sum(m.get_base_layer().weight.numel() * 4 for _, m in merge.layers)


def test_bf16_merge_restores_bit_for_bit_where_peft_unmerge_does_not():
    import torch

    from covip.training.gspo import LoraRolloutMerge

    model = _tiny_lora(torch.bfloat16)
    base = {n: p.detach().clone() for n, p in model.named_parameters() if "base_layer" in n}
    merge = LoraRolloutMerge(model)
    for _ in range(3):
        with merge.merged():
            pass
    assert all(torch.equal(p, base[n]) for n, p in model.named_parameters() if n in base)
    model.merge_adapter()
    model.unmerge_adapter()  # peft's way (trl's vLLM weight sync does this): bf16 rounding stays in the weights
    assert any(not torch.equal(p, base[n]) for n, p in model.named_parameters() if n in base)


def test_merge_refuses_a_tied_lm_head():
    import torch

    from covip.training.gspo import LoraRolloutMerge

    with pytest.raises(InputError, match="rollout_merge_lora.*lm_head.*tied"):
        LoraRolloutMerge(_tiny_lora(torch.float32, lm_head=True, tie=True))
    assert LoraRolloutMerge(_tiny_lora(torch.float32, lm_head=True)).reason_off is None  # untied (8B): merged


def _recording_trainer(seen: list):
    """A GRPOTrainer subclass (under covip's) that records the policy's state when trl's rollout runs."""
    import trl

    class Recording(trl.GRPOTrainer):
        def _generate_single_turn(self, *args, **kwargs):
            model = self.accelerator.unwrap_model(self.model_wrapped)
            layer = next(m for n, m in model.named_modules() if n.endswith("layers.0.self_attn.q_proj"))
            seen.append({"training": model.training, "adapters_off": bool(layer.disable_adapters),
                         "merged_weight": layer.get_base_layer().weight.detach().clone(),
                         "disable_compile": self.generation_config.disable_compile,
                         "cache": self.generation_config.cache_implementation,
                         "max_cache_len": getattr(self.generation_config, "max_cache_len", None)})
            return super()._generate_single_turn(*args, **kwargs)

    return Recording


def test_gspo_rollouts_run_merged_in_eval_mode_and_leave_the_base_alone(tmp_path, synth_train, monkeypatch):
    import trl
    from transformers import TrainerCallback

    from covip.training.gspo import train_gspo

    seen: list = []
    monkeypatch.setattr(trl, "GRPOTrainer", _recording_trainer(seen))

    class Snap(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kw):
            self.before = {n: p.detach().clone() for n, p in model.named_parameters()}

        def on_train_end(self, args, state, control, model=None, **kw):
            self.after = {n: p.detach().clone() for n, p in model.named_parameters()}
            self.training = model.training

    snap = Snap()
    config = _config(tmp_path, {"rollout_merge_lora": True, "max_steps": 2},
                     data={"train": str(synth_train), "sample_types": ["recognition"]}, lora={"dropout": 0.05})
    assert config.gspo.rollout_eval_mode  # the default
    result = train_gspo(config, reward_funcs=[_reward], callbacks=[snap])
    assert result.global_step == 2 and len(seen) == 2
    assert all(not s["training"] and s["adapters_off"] for s in seen)  # eval mode, LoRA merged and bypassed
    assert snap.training  # back in train mode for the loss
    key = next(n for n in snap.before if n.endswith("layers.0.self_attn.q_proj.base_layer.weight"))
    assert not seen[1]["merged_weight"].equal(snap.before[key])  # step 2 generated with step 1's adapter merged
    frozen = [n for n in snap.before if "lora_" not in n]
    assert frozen and all(snap.before[n].equal(snap.after[n]) for n in frozen)  # base restored exactly
    assert any(not snap.before[n].equal(snap.after[n]) for n in snap.before if "lora_B" in n)


def test_trl_behaviour_is_one_switch_away(tmp_path, synth_train, monkeypatch):
    """rollout_eval_mode false, rollout_merge_lora false: trl's own rollouts (train mode, adapters unmerged)."""
    import trl

    from covip.training.gspo import train_gspo

    seen: list = []
    monkeypatch.setattr(trl, "GRPOTrainer", _recording_trainer(seen))
    config = _config(tmp_path, {"rollout_eval_mode": False, "rollout_merge_lora": False},
                     data={"train": str(synth_train), "sample_types": ["recognition"]})
    train_gspo(config, reward_funcs=[_reward])
    assert [(s["training"], s["adapters_off"], s["disable_compile"], s["cache"]) for s in seen] == \
        [(True, False, True, None)]


def test_rollout_compile_reaches_trl_generation_config(tmp_path, synth_train, monkeypatch):
    import trl

    from covip.training.gspo import train_gspo

    seen: list = []
    monkeypatch.setattr(trl, "GRPOTrainer", _recording_trainer(seen))
    config = _config(tmp_path, {"rollout_compile": True, "rollout_max_cache_len": 2048},
                     data={"train": str(synth_train), "sample_types": ["recognition"]})
    assert train_gspo(config, reward_funcs=[_reward]).global_step == 1  # a static cache, eager on the CPU
    assert [(s["disable_compile"], s["cache"], s["max_cache_len"]) for s in seen] == [(False, "static", 2048)]
    with pytest.raises(InputError, match="rollout_max_cache_len.*rollout_compile"):
        _config(tmp_path, {"rollout_max_cache_len": 2048})


def test_lm_head_lora_refused_by_trl_names_the_key(tmp_path, synth_train):
    """trl 1.x scores with lm_head.weight directly and refuses an lm_head adapter (the paper config adapts it, as the
    authors' older trl allowed): covip's error names lora.target_regex and the regex that works."""
    import inspect

    import trl

    from covip.training.gspo import train_gspo
    from covip.training.gspo_config import DEFAULT_LORA_TARGET_REGEX, PAPER_LORA_TARGET_REGEX

    if "lm_head" not in inspect.getsource(trl.GRPOTrainer.__init__):
        pytest.skip("this trl trains an lm_head adapter")
    config = _config(tmp_path, data={"train": str(synth_train), "sample_types": ["recognition"]},
                     lora={"target_regex": PAPER_LORA_TARGET_REGEX})
    with pytest.raises(InputError, match=r"'lora\.target_regex'.*lm_head") as err:
        train_gspo(config, reward_funcs=[_reward])
    assert DEFAULT_LORA_TARGET_REGEX in str(err.value)
