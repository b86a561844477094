"""train_throughput.py's shapes: the model shapes it trains (tiny, mini, deep, qwen3vl-2b, qwen3vl-8b), the
covip config overrides of a run for each, and the random-weight models it builds itself (described on the meta
device, built on the run's device in place of ``load_policy``).

Split out of ``benchmarks/train_throughput.py`` (imported the way the scripts import ``_common``: the scripts'
folder is on ``sys.path``).
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

perf = time.perf_counter

SHAPES = ("tiny", "mini", "deep", "qwen3vl-2b", "qwen3vl-8b")

_MROPE = {"rope_type": "default", "rope_theta": 5_000_000.0, "mrope_section": [24, 20, 20], "mrope_interleaved": True}
LARGE_SHAPES: dict[str, dict[str, Any]] = {
    # the published Qwen/Qwen3-VL-2B-Instruct and -8B-Instruct configs; vocabulary: SmolLM2's (from the tiny preset)
    "qwen3vl-2b": {
        "hub": "Qwen/Qwen3-VL-2B-Instruct", "config": "qwen3vl-2b", "tie_word_embeddings": True,
        "text": dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                     num_key_value_heads=8, head_dim=128, max_position_embeddings=262144, rope_parameters=_MROPE),
        "vision": dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, out_hidden_size=2048,
                       num_position_embeddings=2304, deepstack_visual_indexes=[5, 11, 17])},
    "qwen3vl-8b": {
        "hub": "Qwen/Qwen3-VL-8B-Instruct", "config": "qwen3vl-8b-paper", "tie_word_embeddings": False,
        "text": dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                     num_key_value_heads=8, head_dim=128, max_position_embeddings=262144, rope_parameters=_MROPE),
        "vision": dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, out_hidden_size=4096,
                       num_position_embeddings=2304, deepstack_visual_indexes=[8, 16, 24])},
}
DEEP_SHAPE: dict[str, Any] = {
    # the tiny preset's widths with Qwen3-VL-8B's 36 decoder layers and the paper's LoRA (r64, dropout 0.05, on the
    # 7 x 36 decoder projections: 252 peft layers): per-module dispatch dominates a decode step, as on a GPU
    "hub": None, "config": "tiny-cpu", "tie_word_embeddings": False, "text": {"num_hidden_layers": 36}, "vision": {},
    "overrides": {"lora.r": 64, "lora.alpha": 128, "lora.dropout": 0.05}}
BUILT_SHAPES: dict[str, dict[str, Any]] = {**LARGE_SHAPES, "deep": DEEP_SHAPE}
"""Shapes this benchmark builds itself (random weights, no files) and hands to train_gspo in place of load_policy."""
SMALL_SYNTH = {"n_concepts": 12, "n_train": 16, "n_test": 4, "context_size": 2, "max_present": 1, "image_size": 64,
               "similarity": "attributes", "seed": 0}
LARGE_SYNTH = {"n_concepts": 20, "n_train": 24, "n_test": 4, "context_size": 4, "max_present": 2, "image_size": 448,
               "similarity": "attributes", "seed": 0}


# ----------------------------------------------------------------------------- configuration


def run_overrides(shape: str, steps: int, max_new_tokens: int, out_dir: Path, cuda: bool,
                  extra: list[str] | None = None) -> tuple[str, dict]:
    """(bundled config name, dotted overrides) of the benchmark run for ``shape``; ``extra`` (``--set KEY=VALUE``
    strings, e.g. ``model.gradient_checkpointing=true``) is applied last."""
    small = shape in ("tiny", "mini", "deep")
    base = "tiny-cpu" if small else LARGE_SHAPES[shape]["config"]
    o: dict[str, Any] = {
        "gspo.max_steps": steps, "gspo.num_train_epochs": 1, "gspo.max_completion_length": max_new_tokens,
        "data.train": None, "data.synthesize_if_missing": True,
        "data.synth": dict(SMALL_SYNTH if small else LARGE_SYNTH, n_train=max(16, 2 * steps)),
        "judge.spec": "lexical", "judge.options": {},
        "run.output_dir": str(out_dir), "run.save_steps": 0, "run.save_adapter": False, "run.merge": False,
        "run.tensorboard": False, "run.progress": False, "run.logging_steps": 1,
    }
    if shape == "mini":
        o.update({"model.name_or_path": "mini-qwen3-vl", "lora.r": 16, "lora.alpha": 32})
    elif shape == "tiny":
        o["model.name_or_path"] = "tiny-qwen3-vl"
    elif shape == "deep":
        o.update({"model.name_or_path": "random-weight tiny-qwen3-vl widths, 36 layers (built by this benchmark)",
                  **DEEP_SHAPE["overrides"]})
    else:
        o["model.name_or_path"] = f"random-weight {LARGE_SHAPES[shape]['hub']} shape (built by this benchmark)"
    if shape == "qwen3vl-8b":
        o.update({"gspo.gradient_accumulation_steps": 4, "model.max_pixels": 448 * 448})  # one GPU, 448 px photos
    if shape in ("qwen3vl-8b", "deep"):  # trl 1.x refuses a LoRA adapter on lm_head (it scores with lm_head.weight)
        from covip.training.gspo_config import DEFAULT_LORA_TARGET_REGEX

        o["lora.target_regex"] = DEFAULT_LORA_TARGET_REGEX
    if cuda:
        o.update({"run.use_cpu": False, "run.bf16": True, "model.dtype": "bfloat16"})
    else:
        o.update({"run.use_cpu": True, "run.bf16": False, "model.dtype": "float32"})
    if extra:
        from covip.sdk.support import parse_overrides

        o.update(parse_overrides(extra))
    return base, o


def large_model_config(shape: str) -> Any:
    """The transformers config of a 2B/8B shape: the real text/vision sizes on the tiny preset's token ids."""
    import transformers as tf

    from covip.sdk.models import build_tiny_vlm

    spec = BUILT_SHAPES[shape]
    cfg = json.loads((build_tiny_vlm("tiny-qwen3-vl") / "config.json").read_text())
    for key in ("architectures", "transformers_version", "dtype", "torch_dtype"):
        cfg.pop(key, None)
    cfg["text_config"].pop("layer_types", None)  # one per layer: rebuilt for the shape's layer count
    cfg["text_config"].update(copy.deepcopy(spec["text"]))
    cfg["vision_config"].update(copy.deepcopy(spec["vision"]))
    cfg["tie_word_embeddings"] = spec["tie_word_embeddings"]
    cfg["text_config"]["tie_word_embeddings"] = spec["tie_word_embeddings"]
    return tf.AutoConfig.for_model(cfg.pop("model_type"), **cfg)


def describe_on_meta(shape: str) -> dict[str, Any]:
    """Parameter count and bf16 weight bytes of a 2B/8B shape, built on the meta device (no memory used)."""
    import torch
    import transformers as tf

    config = large_model_config(shape)  # outside the meta context: it may build the tiny model on first use
    with torch.device("meta"):
        model = tf.AutoModelForImageTextToText.from_config(config, dtype=torch.bfloat16)
    n = sum(p.numel() for p in model.parameters())
    vision = sum(p.numel() for name, p in model.named_parameters() if ".visual." in f".{name}")
    return {"parameters": n, "vision_parameters": vision, "bf16_weights_gb": round(2 * n / 1e9, 2),
            "vocab_size": model.config.text_config.vocab_size}


def large_loader(shape: str, device: str) -> Any:
    """A stand-in for ``covip.training.gspo.load_policy``: the random-weight shape, built on ``device``."""

    def load_policy(config: Any) -> tuple[Any, Any, None]:
        import torch
        import transformers as tf

        from covip.sdk.models import build_tiny_vlm
        from covip.sdk.support import set_pixels

        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
                 "auto": torch.bfloat16 if config.run.bf16 else torch.float32}[config.model.dtype]
        kwargs = {"dtype": dtype}
        if config.model.attn_implementation:
            kwargs["attn_implementation"] = config.model.attn_implementation
        t0 = perf()
        with torch.device(device):
            torch.manual_seed(0)
            model = tf.AutoModelForImageTextToText.from_config(large_model_config(shape), **kwargs)
        processor = tf.AutoProcessor.from_pretrained(str(build_tiny_vlm("tiny-qwen3-vl")))
        set_pixels(processor.image_processor, config.model.min_pixels, config.model.max_pixels)
        print(f"  built {shape} on {device} in {perf() - t0:.1f} s", flush=True)
        return model, processor, None

    return load_policy
