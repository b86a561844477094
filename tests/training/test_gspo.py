"""GSPO training (covip.training.gspo) on the tiny Qwen3-VL, on the CPU.

* two steps with images and LoRA: adapters change, vision and base weights do not, the merged checkpoint
  is base + LoRA exactly, the LoRA regex matches no vision module (and a bad regex fails loudly);
* a real learning test: a verifiable reward the policy can raise, mean reward clearly up after 16 steps;
* ``covip train gspo --config tiny-cpu --max-steps 2`` writes adapter + merged checkpoint + logs, and the
  merged checkpoint loads in the SDK's TransformersEngine and generates;
* configs: bundled names and paths, unknown keys name the key, the paper config has the paper's numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from covip.sdk.errors import InputError
from covip.training.gspo_config import (
    DEFAULT_LORA_TARGET_REGEX,
    PAPER_LORA_TARGET_REGEX,
    GspoConfig,
    bundled_configs,
    load_config,
    resolve_config_path,
)
from tests.training.conftest import tiny_gspo_config as _config

pytest.importorskip("trl")
pytest.importorskip("peft")

REPO = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------- two steps, LoRA, images


class _Snapshot:
    """A TrainerCallback that copies every parameter at train begin and end."""

    def __new__(cls):
        from transformers import TrainerCallback

        class Snap(TrainerCallback):
            before: dict = {}
            after: dict = {}

            def on_train_begin(self, args, state, control, model=None, **kw):
                self.before = {n: p.detach().clone() for n, p in model.named_parameters()}

            def on_train_end(self, args, state, control, model=None, **kw):
                self.after = {n: p.detach().clone() for n, p in model.named_parameters()}

        return Snap()


def _token_fraction_reward(prompts=None, completions=None, completion_ids=None, **_):
    """A reward with variance under a random policy: the share of even token ids."""
    return [sum(t % 2 == 0 for t in ids) / max(1, len(ids)) for ids in completion_ids]


def test_two_gspo_steps_train_lora_only(tmp_path, synth_train, tiny_vlm_dir):
    from safetensors.torch import load_file

    from covip.training.gspo import train_gspo

    config = _config(tmp_path, data={"train": str(synth_train), "sample_types": ["recognition", "verification"]})
    snap = _Snapshot()
    result = train_gspo(config, reward_funcs=[_token_fraction_reward], callbacks=[snap])

    assert result.global_step == 2
    assert result.lora_modules and not [n for n in result.lora_modules if "visual" in n]
    assert len(result.lora_modules) == 14  # 2 layers x (q, k, v, o, gate, up, down)
    before, after = snap.before, snap.after
    assert before.keys() == after.keys()
    lora = [n for n in before if "lora_" in n]
    lora_b = [n for n in lora if "lora_B" in n]
    assert lora_b and all(not before[n].any() for n in lora_b)  # B starts at zero
    assert all(after[n].abs().sum() > 0 for n in lora_b)
    assert any(not before[n].equal(after[n]) for n in lora if "lora_A" in n)
    frozen = [n for n in before if "lora_" not in n]
    vision = [n for n in frozen if ".visual." in n]
    assert vision and len(frozen) > len(vision)
    changed = [n for n in frozen if not before[n].equal(after[n])]
    assert changed == []

    records = [json.loads(line) for line in result.metrics_path.read_text().splitlines()]
    assert [r["step"] for r in records if "reward" in r] == [1, 2]

    # merged = base + (alpha / r) * B @ A; vision weights byte-identical to the base model's
    base = load_file(str(next(tiny_vlm_dir.glob("*.safetensors"))))
    merged = load_file(str(result.merged_dir / "model.safetensors"))
    adapter = load_file(str(result.adapter_dir / "adapter_model.safetensors"))
    assert (result.adapter_dir / "adapter_config.json").is_file()
    vision_keys = [k for k in base if ".visual." in k]
    assert vision_keys and all(base[k].equal(merged[k]) for k in vision_keys)
    key = "model.language_model.layers.0.self_attn.q_proj.weight"
    a = next(v for k, v in adapter.items() if "layers.0.self_attn.q_proj.lora_A" in k)
    b = next(v for k, v in adapter.items() if "layers.0.self_attn.q_proj.lora_B" in k)
    expected = base[key] + (16 / 8) * (b @ a)
    assert not merged[key].equal(base[key])
    assert (merged[key] - expected).abs().max() < 1e-5


def test_off_policy_reuse_is_clipped_at_sequence_level(tmp_path, synth_train):
    """num_iterations=2: step 2 reuses step 1's rollouts; their sequence ratios leave [1-3e-4, 1+4e-4]."""
    from covip.training.gspo import train_gspo

    config = _config(tmp_path, data={"train": str(synth_train), "sample_types": ["recognition"]},
                     gspo={"num_iterations": 2}, run={"merge": False, "save_adapter": False, "tensorboard": False})
    result = train_gspo(config, reward_funcs=[_token_fraction_reward])
    records = [json.loads(line) for line in result.metrics_path.read_text().splitlines()]
    steps = [r for r in records if "clip_ratio/region_mean" in r]
    assert len(steps) == 2 and "reward" in steps[0] and "reward" not in steps[1]
    assert steps[0]["clip_ratio/region_mean"] == 0.0  # fresh rollouts: on-policy, ratio exactly 1
    assert steps[1]["clip_ratio/region_mean"] > 0.0  # reused rollouts: off-policy, GSPO clips


def test_full_finetuning_keeps_the_vision_tower_frozen(tmp_path, synth_train):
    from covip.training.gspo import train_gspo

    config = _config(tmp_path, data={"train": str(synth_train), "sample_types": ["recognition"]},
                     lora={"enabled": False}, gspo={"max_steps": 1, "learning_rate": 1e-3},
                     run={"tensorboard": False})
    snap = _Snapshot()
    result = train_gspo(config, reward_funcs=[_token_fraction_reward], callbacks=[snap])
    assert result.adapter_dir is None and result.lora_modules == [] and (result.merged_dir / "config.json").is_file()
    changed = {n for n in snap.before if not snap.before[n].equal(snap.after[n])}
    vision = {n for n in snap.before if ".visual." in n}
    assert vision and not changed & vision
    assert "model.language_model.layers.0.self_attn.q_proj.weight" in changed


def test_lora_regex_never_touches_the_vision_tower(tiny_vlm_dir):
    from transformers import AutoModelForImageTextToText

    from covip.training.gspo import check_lora_targets, vision_prefixes
    from covip.training.gspo_config import VISION_MODULE_NAMES

    model = AutoModelForImageTextToText.from_pretrained(tiny_vlm_dir)
    assert vision_prefixes(model, VISION_MODULE_NAMES) == ["model.visual"]
    matched = check_lora_targets(model, DEFAULT_LORA_TARGET_REGEX, VISION_MODULE_NAMES)
    assert matched and all(n.startswith("model.language_model.layers.") for n in matched)
    for regex in (r"model\.visual\.blocks\.0\.attn\.qkv", r".*(q_proj|attn\.qkv)"):
        with pytest.raises(InputError, match="vision-tower"):
            check_lora_targets(model, regex, VISION_MODULE_NAMES)
    with pytest.raises(InputError, match="matches no module"):
        check_lora_targets(model, r"nothing\.here", VISION_MODULE_NAMES)


# ----------------------------------------------------------------------------- learning signal


def test_gspo_learns_a_verifiable_reward(tmp_path, tiny_vlm_dir):
    """16 GSPO steps raise the share of 'good' tokens from ~0.5 to ~0.9.

    The tiny model's random lm_head rows are so small (std 0.02, RMS-normed hidden states) that no hidden
    state can move a logit by more than ~1.3: its next-token distribution is uniform over 49k tokens and
    LoRA on the decoder layers cannot change it. Scaling lm_head by 15 gives it the peaked distribution of
    a trained LM (what the method assumes); LoRA then has to learn to steer the hidden states. 'Good' tokens
    are those whose lm_head row points along a fixed random direction (half the vocabulary).
    """
    import datasets
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from covip.sdk import prompts
    from covip.training.gspo import train_gspo
    from covip.training.gspo_data import placeholder_messages

    model_dir = tmp_path / "peaked"
    model = AutoModelForImageTextToText.from_pretrained(tiny_vlm_dir)
    with torch.no_grad():
        model.lm_head.weight.mul_(15.0)
    model.save_pretrained(model_dir)
    AutoProcessor.from_pretrained(tiny_vlm_dir).save_pretrained(model_dir)
    direction = torch.randn(model.lm_head.weight.shape[1], generator=torch.Generator().manual_seed(0))
    good = set((model.lm_head.weight.detach() @ direction > 0).nonzero().flatten().tolist())
    assert 0.4 < len(good) / model.lm_head.weight.shape[0] < 0.6

    image = tmp_path / "red.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(image)
    prompt, images = placeholder_messages(prompts.describe_messages(str(image)))
    dataset = datasets.Dataset.from_list([{"prompt": prompt, "images": images}] * 8)
    dataset = dataset.cast_column("images", datasets.List(datasets.Image()))

    def good_share(prompts=None, completions=None, completion_ids=None, **_):
        return [sum(t in good for t in ids) / max(1, len(ids)) for ids in completion_ids]

    config = _config(tmp_path, model={"name_or_path": str(model_dir)},
                     gspo={"num_generations": 8, "per_device_train_batch_size": 8, "max_steps": 16,
                           "learning_rate": 5e-3, "lr_scheduler_type": "constant"},
                     run={"seed": 1, "merge": False, "save_adapter": False, "tensorboard": False})
    result = train_gspo(config, train_dataset=dataset, reward_funcs=[good_share])
    history = result.reward_history
    assert len(history) == 16
    first, last = sum(history[:3]) / 3, sum(history[-4:]) / 4
    assert first < 0.7, history
    assert last > first + 0.2 and last > 0.75, history


# ----------------------------------------------------------------------------- the CLI


def test_cli_tiny_cpu_writes_adapter_merged_and_logs(tmp_path):
    from click.testing import CliRunner

    from covip.sdk.cli.main import cli
    from covip.sdk.engines import GenerationConfig, TransformersEngine, TransformersEngineConfig
    from covip.training.cli import register

    if "train" not in cli.commands:
        register(cli)
    out = tmp_path / "run"
    res = CliRunner().invoke(cli, ["train", "gspo", "--config", "tiny-cpu", "--output", str(out), "--max-steps", "2",
                                   "--set", "run.torch_threads=1", "--set", "gspo.max_completion_length=12",
                                   "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["global_step"] == 2
    assert (out / "synth" / "train.jsonl").is_file()  # synthesized on the fly
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    merged = out / "merged"
    assert (merged / "config.json").is_file() and (merged / "covip_gspo.json").is_file()
    assert (out / "checkpoint-2" / "trainer_state.json").is_file()
    metrics = [json.loads(line) for line in (out / "logs" / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in metrics if "reward" in m]
    assert [m["step"] for m in steps] == [1, 2]
    assert all("covip/over_length" in m and "covip/degenerate" in m for m in steps)
    samples = [json.loads(line) for line in (out / "logs" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 8 and {s["step"] for s in samples} == {1, 2}
    assert all({"reward", "sample_type", "r_vis", "r_caps_pos", "r_caps_neg", "completion"} <= set(s) for s in samples)
    assert list((out / "logs" / "tensorboard").glob("events.out.tfevents.*"))

    # resume from checkpoint-2 and go one step further
    res = CliRunner().invoke(cli, ["train", "gspo", "--config", "tiny-cpu", "--output", str(out), "--max-steps", "3",
                                   "--resume", "--set", "run.torch_threads=1", "--set", "gspo.max_completion_length=12",
                                   "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["global_step"] == 3
    metrics = [json.loads(line) for line in (out / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "reward" in m] == [1, 2, 3]  # the resumed run appends

    # a new run into the same folder is refused: it would silently replace the one there
    again = CliRunner().invoke(cli, ["train", "gspo", "--config", "tiny-cpu", "--output", str(out), "--max-steps", "1"])
    assert again.exit_code != 0 and "already holds a run" in again.output and "--force" in again.output
    assert json.loads((out / "result.json").read_text())["global_step"] == 3  # nothing was touched

    with TransformersEngine(TransformersEngineConfig(model=str(merged), device="cpu")) as engine:
        from covip.sdk import prompts

        image = next((out / "synth" / "images" / "concepts").glob("*.png"))
        gen = engine.generate(prompts.describe_messages(str(image)), GenerationConfig(max_new_tokens=4))
        assert engine.meaningless and gen.text


def test_resume_needs_a_checkpoint(tmp_path):
    from covip.training.gspo import train_gspo

    config = _config(tmp_path, run={"resume_from_checkpoint": True})
    with pytest.raises(InputError, match="no checkpoint"):
        train_gspo(config)


# ----------------------------------------------------------------------------- configs


def test_bundled_configs_load_by_name_and_path():
    names = set(bundled_configs())
    assert {"tiny-cpu", "qwen3vl-8b-paper", "qwen3vl-2b", "qwen3vl-4b"} <= names
    for name in names:
        config = load_config(name)
        assert config.name == name and config.description
        assert config.gspo.importance_sampling_level == "sequence" and config.gspo.loss_type == "grpo"
        # every bundled config runs on trl 1.x, which refuses the authors' lm_head adapter (see the next test)
        assert config.lora.target_regex == DEFAULT_LORA_TARGET_REGEX
    path = resolve_config_path("tiny-cpu")
    assert load_config(str(path)).to_dict() == load_config("tiny-cpu.yaml").to_dict()
    assert path.parent == REPO / "training" / "configs"
    with pytest.raises(InputError, match="bundled configs"):
        load_config("no-such-config")


def test_a_runs_saved_config_runs_again_from_its_folder(tmp_path):
    """`covip train gspo --config runs/x/config.yaml` reruns a run: the saved config keeps the bundled recipe's
    relative pack name (part of the recorded hash), which still finds the bundled pack from the run folder."""
    from covip.sdk.prompts import load_pack
    from covip.training.config_io import pack_path

    bundled = load_config("mini-cpu")
    saved = tmp_path / "run" / "config.yaml"
    saved.parent.mkdir()
    saved.write_text(bundled.to_yaml(), encoding="utf-8")
    again = load_config(str(saved))
    assert again.data.prompt_pack == bundled.data.prompt_pack == "packs/mini-short.toml"
    found = pack_path(again.data.prompt_pack, again.source)
    assert found.resolve() == pack_path(bundled.data.prompt_pack, bundled.source).resolve()
    assert load_pack(found) == load_pack(pack_path(bundled.data.prompt_pack, bundled.source))
    # a pack that exists nowhere stays unresolved, so loading it says which file is missing
    assert not pack_path("packs/no-such-pack.toml", again.source).exists()
    with pytest.raises(InputError, match="no-such-pack"):
        load_pack(pack_path("packs/no-such-pack.toml", again.source))


def test_paper_config_has_the_paper_numbers():
    c = load_config("qwen3vl-8b-paper")
    assert c.model.name_or_path == "Qwen/Qwen3-VL-8B-Instruct"
    g = c.gspo
    assert (g.num_generations, g.per_device_train_batch_size, g.learning_rate, g.num_train_epochs) == (4, 1, 5e-6, 2)
    assert (g.max_completion_length, g.temperature, g.beta, g.epsilon, g.epsilon_high) == (512, 1.0, 0.0, 3e-4, 4e-4)
    assert g.importance_sampling_level == "sequence"
    assert (c.lora.enabled, c.lora.r, c.lora.alpha, c.lora.dropout) == (True, 64, 128, 0.05)
    assert c.run.bf16 and c.lora.freeze_vision
    assert c.judge.spec.startswith("http://") and "Qwen3-30B-A3B-Instruct" in c.judge.spec and "FP8" in c.judge.spec
    assert (c.judge.temperature, c.judge.top_p, c.judge.top_k) == (0.7, 0.8, 20)
    from covip.training.gspo import make_judge_from_config

    judge = make_judge_from_config(c)  # builds the client only; nothing is sent
    assert type(judge).__name__ == "HttpJudge" and judge.config.model == "Qwen/Qwen3-30B-A3B-Instruct-2507-FP8"
    assert (judge.config.temperature, judge.config.top_p, judge.config.top_k) == (0.7, 0.8, 20)
    c.check_batch(world_size=4)  # 4 GPUs x 1 x 1 = one group per step
    with pytest.raises(InputError, match="gradient_accumulation_steps to 4"):
        c.check_batch(world_size=1)


def test_trl_arguments_are_gspo(tmp_path):
    from covip.training.gspo import grpo_args

    args = grpo_args(load_config("qwen3vl-8b-paper", {"run.bf16": False, "run.use_cpu": True,
                                                       "gspo.gradient_accumulation_steps": 4}), tmp_path)
    assert args.importance_sampling_level == "sequence" and args.loss_type == "grpo"
    assert (args.epsilon, args.epsilon_high, args.beta, args.num_generations) == (3e-4, 4e-4, 0.0, 4)
    assert (args.learning_rate, args.num_train_epochs, args.max_completion_length, args.temperature) == \
        (5e-6, 2, 512, 1.0)
    assert args.remove_unused_columns is False
    # trl 0.24/0.25 cut prompts at 512 tokens by default; covip never lets it (newer trl has no such setting)
    assert getattr(args, "max_prompt_length", None) is None


def test_paper_lora_adapts_lm_head_with_the_authors_parameter_count():
    """The authors' 8B log: 184,573,952 trainable parameters = PAPER_LORA_TARGET_REGEX (decoder projections +
    lm_head); the paper config runs the projections alone (174,587,904), because trl 1.x refuses an lm_head
    adapter. Counted on the Qwen3-VL-8B language model's shape (hidden 4096, MLP 12288, 36 layers, 32/8 heads of
    128, vocabulary 151,936) on the meta device."""
    import peft
    import torch
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    from covip.training.gspo import check_lora_targets
    from covip.training.gspo_config import VISION_MODULE_NAMES

    runnable = load_config("qwen3vl-8b-paper")
    c = load_config("qwen3vl-8b-paper", [f"lora.target_regex={PAPER_LORA_TARGET_REGEX}"])
    text = dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=False,
                rope_parameters={"rope_type": "default", "rope_theta": 5e6, "mrope_section": [24, 20, 20],
                                 "mrope_interleaved": True})
    vision = dict(depth=1, hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=4096)
    with torch.device("meta"):
        model = Qwen3VLForConditionalGeneration(Qwen3VLConfig(text_config=text, vision_config=vision,
                                                              tie_word_embeddings=False))
        matched = check_lora_targets(model, c.lora.target_regex, VISION_MODULE_NAMES)
        assert len(matched) == 7 * 36 + 1 and "lm_head" in matched
        lora = peft.get_peft_model(model, peft.LoraConfig(r=c.lora.r, lora_alpha=c.lora.alpha,
                                                          target_modules=c.lora.target_regex))
        assert sum(p.numel() for p in lora.parameters() if p.requires_grad) == 184_573_952
        lora.unload()
        assert len(check_lora_targets(model, runnable.lora.target_regex, VISION_MODULE_NAMES)) == 7 * 36
        lora = peft.get_peft_model(model, peft.LoraConfig(r=runnable.lora.r, lora_alpha=runnable.lora.alpha,
                                                          target_modules=runnable.lora.target_regex))
        assert sum(p.numel() for p in lora.parameters() if p.requires_grad) == 174_587_904


def test_unknown_and_bad_keys_name_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("gspo:\n  lerning_rate: 1e-5\n")
    with pytest.raises(InputError, match=r"'gspo\.lerning_rate'.*bad\.yaml"):
        load_config(bad)
    with pytest.raises(InputError, match="'optimizer'"):
        GspoConfig.from_dict({"optimizer": {}})
    with pytest.raises(InputError, match=r"'gspo\.num_generations'"):
        GspoConfig.from_dict({"gspo": {"num_generations": "many"}})
    with pytest.raises(InputError, match=r"'gspo\.num_generations'.*>= 2"):
        GspoConfig.from_dict({"gspo": {"num_generations": 1}})
    with pytest.raises(InputError, match=r"'lora\.rank'"):
        load_config("tiny-cpu", ["lora.rank=4"])
    with pytest.raises(InputError, match="group.key=value"):
        load_config("tiny-cpu", ["nonsense"])


def test_values_are_typed_and_overrides_apply(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"gspo": {"learning_rate": "5e-6", "num_generations": "6"},
                                    "run": {"bf16": "true"}}))
    config = load_config(path, {"gspo.max_steps": 3})
    assert config.gspo.learning_rate == 5e-6 and isinstance(config.gspo.learning_rate, float)
    assert config.gspo.num_generations == 6 and config.run.bf16 is True and config.gspo.max_steps == 3
    assert config.source == str(path)
    again = GspoConfig.from_dict(yaml.safe_load(config.to_yaml()))
    assert again.to_dict() == config.to_dict()
    assert load_config("tiny-cpu", ["data.sample_types=caption,recognition"]).data.sample_types == \
        ["caption", "recognition"]


def test_accelerate_configs():
    zero2 = yaml.safe_load((REPO / "training" / "accelerate" / "zero2.yaml").read_text())
    assert zero2["distributed_type"] == "DEEPSPEED" and zero2["deepspeed_config"]["zero_stage"] == 2
    # precision comes from the covip config's run.bf16 (an accelerate-level bf16 would override an fp32 run)
    assert zero2["mixed_precision"] == "no" and 4 <= zero2["num_processes"] <= 6
    ddp = yaml.safe_load((REPO / "training" / "accelerate" / "multi_gpu.yaml").read_text())
    assert ddp["distributed_type"] == "MULTI_GPU" and "deepspeed_config" not in ddp
    from accelerate.commands.config.config_args import load_config_from_file

    for name in ("zero2.yaml", "multi_gpu.yaml"):  # accelerate itself accepts them
        assert load_config_from_file(str(REPO / "training" / "accelerate" / name)).num_processes == 4


def test_dataset_rows_follow_the_prompt_builders(synth_train):
    from covip.sdk import prompts
    from covip.training.data import read_jsonl
    from covip.training.gspo_data import build_dataset, sample_messages

    samples = read_jsonl(synth_train, image_root=synth_train.parent, check_images=True)
    ds = build_dataset(samples, seed=3)
    assert len(ds) == len(samples)
    for sample, row in zip(samples, ds):
        n_placeholders = sum(p["type"] == "image" for m in row["prompt"] for p in m["content"])
        assert n_placeholders == len(row["images"]) == len(sample.images)
        assert row["sample_type"] == sample.sample_type
        text = "".join(p["text"] or "<image>" for p in row["prompt"][0]["content"])
        if sample.sample_type == "caption":
            assert prompts.CAPTION_INSTRUCTION in text and "===== Dialogue 1 =====" in text
            assert len(row["pos_qas"]) == len(sample.pos_qas) and row["pos_qas"][0]["answer"] in "ABC"
            assert all(q["answer"] == "D" for q in row["neg_qas"])
        elif sample.sample_type == "recognition":
            assert prompts.RECOGNITION_INSTRUCTION in text and row["present"] == list(sample.present)
        else:
            assert row["answer"] in ("yes", "no")
        expected = prompts.render_text(sample_messages(sample, rng=None))
        if sample.sample_type != "caption":  # captions draw their query header
            assert prompts.render_text([{"role": "user", "content": [
                {"type": p["type"], "text": p["text"]} for p in row["prompt"][0]["content"]]}]) == expected
    assert row["images"][0].size == (64, 64)  # decoded by datasets for trl


def test_dataset_columns_feed_the_covip_reward(tmp_path, synth_train):
    """What trl passes to the reward (every column but the prompt) is what CoViPReward reads."""
    from covip.training.data import read_jsonl
    from covip.training.gspo_data import build_dataset
    from covip.training.gspo_logging import LoggedReward
    from covip.training.judges import LexicalJudge
    from covip.training.judges.lexical import question_subjects
    from covip.training.rewards import CoViPReward

    ds = build_dataset(read_jsonl(synth_train, image_root=synth_train.parent))
    rows = [ds[i] for i in range(len(ds))]
    texts = []
    for r in rows:  # a perfect answer per type: the present concept named with its facts, the indices, yes/no
        if r["sample_type"] == "caption":
            names = sorted({n for q in r["pos_qas"] for n in question_subjects(q["question"])})
            texts.append(f"Here you are with {' and '.join(names)}: "
                         + "; ".join(q["options"][q["answer"]] for q in r["pos_qas"]) + ".")
        elif r["sample_type"] == "recognition":
            texts.append(f"Answer: \\boxed{{{r['present']}}}")
        else:
            texts.append(f"{r['answer'].capitalize()}.")
    columns = {k: [r[k] for r in rows] for k in rows[0] if k != "prompt"}
    reward = LoggedReward(CoViPReward(LexicalJudge(), max_completion_tokens=64), tmp_path / "samples.jsonl")
    scores = reward(prompts=None, completions=[[{"role": "assistant", "content": t}] for t in texts],
                    completion_ids=[[0] * 20] * len(rows), **columns)
    logged = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert {r["sample_type"] for r in rows} == {"caption", "recognition", "verification"}
    for row, score, rec in zip(rows, scores, logged):
        assert rec["sample_id"] == row["sample_id"] and rec["reward"] == score
        if row["sample_type"] == "caption":
            assert rec["r_caps_pos"] == pytest.approx(len(row["present"])) and rec["r_caps_neg"] > -1
        else:
            assert score == 1.0, (row["sample_type"], rec)


def test_fresh_identities_ask_the_reward_about_what_the_prompt_says(tmp_path, synth_train):
    """data.fresh_identities: every caption prompt names its concepts anew and states new facts, and the r_caps
    questions ask about those; a caption of the world's own names and facts no longer earns the reward."""
    from covip.training.data import read_jsonl
    from covip.training.gspo_data import build_dataset, training_world
    from covip.training.judges import LexicalJudge
    from covip.training.judges.lexical import question_subjects
    from covip.training.rewards import CoViPReward

    config = _config(tmp_path, data={"train": str(synth_train), "fresh_identities": True})
    world = training_world(config.data, tmp_path)
    samples = read_jsonl(synth_train, image_root=synth_train.parent)
    plain = build_dataset(samples, seed=1).to_list()
    fresh = build_dataset(samples, seed=1, world=world).to_list()
    again = build_dataset(samples, seed=1, world=world).to_list()
    assert [r["prompt"] for r in fresh] == [r["prompt"] for r in again]  # seeded
    reward = CoViPReward(LexicalJudge(), max_completion_tokens=64)

    def perfect(row):  # the present concepts named with the facts their questions ask about
        names = sorted({n for q in row["pos_qas"] for n in question_subjects(q["question"])})
        return f"Here you are with {' and '.join(names)}: " + "; ".join(
            q["options"][q["answer"]] for q in row["pos_qas"]) + "."

    captions = 0
    for sample, old, new in zip(samples, plain, fresh):
        if sample.sample_type != "caption":
            assert new == old  # recognition and verification prompts are untouched
            continue
        captions += 1
        text = "".join(p["text"] or "" for m in new["prompt"] for p in m["content"])
        asked = {n for q in new["pos_qas"] + new["neg_qas"] for n in question_subjects(q["question"])}
        assert asked and all(n in text for n in asked)  # the questions name the prompt's concepts
        for q in new["pos_qas"]:  # each true answer is what the prompt's dialogue states
            truth = q["options"][q["answer"]]
            assert truth in text or truth[:1].upper() + truth[1:] in text
        assert all(q["answer"] == "D" for q in new["neg_qas"]) and len(new["pos_qas"]) == len(old["pos_qas"])
        assert len(new["neg_qas"]) == len(old["neg_qas"])
        ids = sample.meta["concept_ids"]
        assert not {world.concepts[c].name for c in ids} & asked  # the world's names are gone
        columns = {k: [r[k] for r in (new, new)] for k in new if k != "prompt"}
        good, stale = reward(prompts=None, completions=[[{"role": "assistant", "content": t}]
                                                        for t in (perfect(new), perfect(old))],
                             completion_ids=[[0] * 20] * 2, **columns)
        assert good > stale  # remembering the training world's names and facts no longer pays
    assert captions >= 2

    (synth_train.parent / "elsewhere").mkdir(exist_ok=True)
    lone = synth_train.parent / "elsewhere" / "train.jsonl"
    lone.write_text(synth_train.read_text())
    with pytest.raises(InputError, match="fresh_identities needs the synthetic world's concepts.json"):
        training_world(config.with_overrides({"data.train": str(lone)}).data, tmp_path)
    assert training_world(config.with_overrides({"data.fresh_identities": False}).data, tmp_path) is None
    with pytest.raises(InputError, match="data.invented_names.*fresh_identities"):
        config.with_overrides({"data.fresh_identities": False, "data.invented_names": 0.5})
    off = config.with_overrides({"data.fresh_identities": False})
    assert "fresh_identities" not in off.identity()["data"] and "invented_names" not in off.identity()["data"]
    assert config.identity()["data"]["fresh_identities"] is True  # on: another recipe


def test_a_run_where_every_completion_was_penalized_says_why(tmp_path):
    from covip.training.cli import all_penalized_note

    samples = tmp_path / "samples.jsonl"
    rows = [{"reward": -1.0, "over_length": True}] * 3 + [{"reward": -1.0, "over_length": False}]
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    note = all_penalized_note(samples, 12)
    assert "3 of 4 hit the 12-token cap" in note and "gradient is 0" in note
    samples.write_text("".join(json.dumps(r) + "\n" for r in [*rows, {"reward": 0.5, "over_length": False}]))
    assert all_penalized_note(samples, 12) is None  # some learning signal: nothing to explain
    assert all_penalized_note(None, 12) is None and all_penalized_note(tmp_path / "missing.jsonl", 12) is None
