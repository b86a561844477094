"""The three ONNX graphs of a Qwen2.5-VL / Qwen3-VL export, written with ``torch.onnx`` (and ``onnx``).

* ``vision.onnx`` (legacy TorchScript exporter, one fixed image grid): ``pixel_values``
  [patches, C*T*P*P] -> ``image_embeds`` [tokens, hidden] (the merger's output, one row per image
  placeholder token) and, for Qwen3-VL, ``deepstack_embeds`` [n_deepstack, tokens, hidden]. The vision
  tower's windowing / attention splits are data-dependent, which the dynamo exporter cannot trace; at one
  fixed grid they are constants, so the TorchScript exporter writes a static graph.
* ``embed.onnx`` (built directly with ``onnx.helper``): ``input_ids`` [batch, seq] -> ``inputs_embeds``
  [batch, seq, hidden], a single Gather over the token embedding table (an initializer).
* ``decoder.onnx`` (dynamo exporter, dynamic batch / sequence / past lengths): ``inputs_embeds``
  [batch, seq, hidden], ``attention_mask`` [batch, past+seq] (1 = attend), ``position_ids`` [3, batch, seq]
  (multimodal RoPE: temporal, height, width), for Qwen3-VL ``deepstack_embeds`` [n_deepstack, batch, seq,
  hidden] (the visual features added to the hidden states after the first decoder layers at image
  positions, zeros elsewhere), and ``past_key_values.{i}.key|value`` [batch, kv_heads, past, head_dim] ->
  ``logits`` [batch, 1, vocab] (the last position only) and ``present.{i}.key|value`` [batch, kv_heads,
  past+seq, head_dim]. The first call passes an empty past (length 0); each later call passes the presents
  of the previous one, so prefill and every decoding step are one run each.

The decoder graph wraps the model's own modules (decoder layers, rotary embedding, final norm, LM head):
each layer gets a small cache object that concatenates the past with the new keys/values, and an additive
causal + padding mask computed in the graph; attention runs with the ``eager`` implementation (plain
MatMul/Softmax, which every onnxruntime provider runs).
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from covip.sdk.errors import ExportError

__all__ = ["ModelInfo", "model_info", "export_vision", "export_embed", "export_decoder", "save_onnx",
           "SUPPORTED_MODEL_TYPES", "OPSET"]

log = logging.getLogger(__name__)

SUPPORTED_MODEL_TYPES = ("qwen3_vl", "qwen2_5_vl", "qwen2_vl")
OPSET = 18
#: models whose protobuf would pass this size are saved with their weights in a ``.data`` file next to them
EXTERNAL_DATA_BYTES = 1_800_000_000


@dataclass
class ModelInfo:
    """What the export and the engine need to know about the model's shapes."""

    model_type: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    deepstack_layers: int
    patch_size: int
    temporal_patch_size: int
    merge_size: int
    in_channels: int
    rope: dict[str, Any] = field(default_factory=dict)

    @property
    def patch_dim(self) -> int:
        return self.in_channels * self.temporal_patch_size * self.patch_size**2


def _parts(model: Any) -> tuple[Any, Any, Any]:
    """(vision tower, language model, LM head) of an HF image-text-to-text model."""
    inner = getattr(model, "model", None)
    visual = getattr(inner, "visual", None) or getattr(model, "visual", None)
    lm = getattr(inner, "language_model", None) or getattr(model, "language_model", None)
    head = getattr(model, "lm_head", None)
    if visual is None or lm is None or head is None or not hasattr(lm, "layers"):
        raise ExportError(f"{type(model).__name__} does not have the Qwen-VL layout (model.visual, "
                          "model.language_model.layers, lm_head) the ONNX exporter knows")
    return visual, lm, head


def model_info(model: Any) -> ModelInfo:
    cfg = model.config
    model_type = getattr(cfg, "model_type", "")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ExportError(f"the ONNX exporter supports {', '.join(SUPPORTED_MODEL_TYPES)} models, not "
                          f"{model_type!r}")
    tc = getattr(cfg, "text_config", cfg)
    vc = cfg.vision_config
    heads = int(tc.num_attention_heads)
    head_dim = int(getattr(tc, "head_dim", None) or tc.hidden_size // heads)
    rope = dict(getattr(tc, "rope_parameters", None) or getattr(tc, "rope_scaling", None) or {})
    rope.setdefault("rope_theta", getattr(tc, "rope_theta", rope.get("rope_theta")))
    vision_patch = int(vc.patch_size)
    return ModelInfo(
        model_type=model_type, hidden_size=int(tc.hidden_size), num_layers=int(tc.num_hidden_layers),
        num_heads=heads, num_kv_heads=int(tc.num_key_value_heads), head_dim=head_dim,
        vocab_size=int(tc.vocab_size),
        deepstack_layers=len(getattr(vc, "deepstack_visual_indexes", None) or []),
        patch_size=vision_patch, temporal_patch_size=int(getattr(vc, "temporal_patch_size", 2)),
        merge_size=int(getattr(vc, "spatial_merge_size", 2)), in_channels=int(getattr(vc, "in_channels", 3)),
        rope={k: v for k, v in rope.items() if isinstance(v, (int, float, str, bool, list))},
    )


def use_eager_attention(model: Any) -> None:
    """Plain MatMul/Softmax attention everywhere (what the graphs are traced with)."""
    setter = getattr(model, "set_attn_implementation", None)
    try:
        if callable(setter):
            setter("eager")
    except (ValueError, TypeError, AttributeError):
        pass
    for sub in model.modules():
        cfg = getattr(sub, "config", None)
        if cfg is not None and hasattr(cfg, "_attn_implementation"):
            try:
                cfg._attn_implementation = "eager"
            except (AttributeError, ValueError):
                pass


# ----------------------------------------------------------------------------- saving


def save_onnx(proto: Any, path: Path) -> list[Path]:
    """Save a ModelProto (checked), its weights inline or, when large, in ``<name>.data``. Returns the files."""
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    data = path.with_name(path.name + ".data")
    if data.exists():
        data.unlink()
    big = _weight_bytes(proto) > EXTERNAL_DATA_BYTES
    if big:
        onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=1024)
    else:
        onnx.save_model(proto, str(path))
    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"the exported graph {path.name} does not pass onnx.checker ({exc})") from exc
    return [path, data] if big else [path]


def _weight_bytes(proto: Any) -> int:
    return sum(len(t.raw_data) or t.ByteSize() for t in proto.graph.initializer)


def _load_full(path: Path) -> Any:
    import onnx

    return onnx.load(str(path), load_external_data=True)


# ----------------------------------------------------------------------------- vision


def export_vision(model: Any, info: ModelInfo, grid: tuple[int, int, int], out: Path, work: Path) -> list[Path]:
    """The vision tower at one image grid (t, h, w in patches) -> ``out``."""
    import torch

    visual, _, _ = _parts(model)
    grid_t = torch.tensor([list(grid)], dtype=torch.long)
    deepstack = info.deepstack_layers > 0

    class Vision(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.visual = visual

        def forward(self, pixel_values: Any) -> Any:
            res = self.visual(pixel_values, grid_thw=grid_t, return_dict=True)
            if deepstack:
                return res.pooler_output, torch.stack(list(res.deepstack_features), 0)
            return res.pooler_output

    n_patches = grid[0] * grid[1] * grid[2]
    example = torch.randn(n_patches, info.patch_dim, dtype=torch.float32)
    names = ["image_embeds", "deepstack_embeds"] if deepstack else ["image_embeds"]
    tmp = work / "vision.onnx"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings: the grid is a constant on purpose
        try:
            torch.onnx.export(Vision().eval(), (example,), str(tmp), dynamo=False, input_names=["pixel_values"],
                              output_names=names, opset_version=OPSET, do_constant_folding=True)
        except Exception as exc:  # torch.onnx raises many types
            raise ExportError(f"torch.onnx could not export the vision encoder at grid {grid} "
                              f"({type(exc).__name__}: {str(exc)[:400]})") from exc
    return save_onnx(_load_full(tmp), out)


# ----------------------------------------------------------------------------- embeddings


def export_embed(model: Any, out: Path) -> list[Path]:
    """The token embedding table as a one-Gather graph."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    table = model.get_input_embeddings().weight.detach().float().cpu().numpy()
    weight = numpy_helper.from_array(np.ascontiguousarray(table), name="embed_tokens.weight")
    node = helper.make_node("Gather", ["embed_tokens.weight", "input_ids"], ["inputs_embeds"], axis=0)
    graph = helper.make_graph(
        [node], "covip_embed",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("inputs_embeds", TensorProto.FLOAT, ["batch", "seq", table.shape[1]])],
        initializer=[weight])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="covip")
    proto.ir_version = min(proto.ir_version, onnx.IR_VERSION)
    return save_onnx(proto, out)


# ----------------------------------------------------------------------------- decoder


def kv_names(num_layers: int) -> tuple[list[str], list[str]]:
    """(past input names, present output names), key then value per layer."""
    past = [f"past_key_values.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]
    present = [f"present.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]
    return past, present


def export_decoder(model: Any, info: ModelInfo, out: Path, work: Path) -> list[Path]:
    """The language model with KV cache in and out (see the module docstring) -> ``out``."""
    import torch

    _, lm, head = _parts(model)
    deepstack = info.deepstack_layers > 0

    class _LayerCache:
        """What an HF attention layer calls ``cache.update`` on: past + new keys/values."""

        def __init__(self, key: Any, value: Any) -> None:
            self.key, self.value = key, value

        def update(self, key: Any, value: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
            self.key = torch.cat([self.key, key], dim=2)
            self.value = torch.cat([self.value, value], dim=2)
            return self.key, self.value

    class Decoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lm, self.head = lm, head

        def forward(self, inputs_embeds: Any, attention_mask: Any, position_ids: Any, deepstack_embeds: Any,
                    past: list[Any]) -> Any:
            seq = inputs_embeds.shape[1]
            total = attention_mask.shape[1]
            cos, sin = self.lm.rotary_emb(inputs_embeds, position_ids)
            q_pos = torch.arange(seq, device=inputs_embeds.device).view(1, 1, seq, 1) + (total - seq)
            k_pos = torch.arange(total, device=inputs_embeds.device).view(1, 1, 1, total)
            allowed = (k_pos <= q_pos) & attention_mask.bool()[:, None, None, :]
            mask = torch.where(allowed, 0.0, torch.finfo(torch.float32).min).to(inputs_embeds.dtype)
            hidden = inputs_embeds
            presents: list[Any] = []
            for i, layer in enumerate(self.lm.layers):
                cache = _LayerCache(past[2 * i], past[2 * i + 1])
                hidden = layer(hidden, position_embeddings=(cos, sin), attention_mask=mask, cache=cache)
                if isinstance(hidden, tuple):
                    hidden = hidden[0]
                presents += [cache.key, cache.value]
                if deepstack_embeds is not None and i < deepstack_embeds.shape[0]:
                    hidden = hidden + deepstack_embeds[i]
            hidden = self.lm.norm(hidden)
            return self.head(hidden[:, -1:, :]), presents

    class NoDeepstack(torch.nn.Module):
        def __init__(self, dec: Any) -> None:
            super().__init__()
            self.dec = dec

        def forward(self, inputs_embeds: Any, attention_mask: Any, position_ids: Any, past: list[Any]) -> Any:
            return self.dec(inputs_embeds, attention_mask, position_ids, None, past)

    # example sizes > 1 so that torch.export keeps every dimension symbolic
    b, s, p = 2, 5, 3
    h = info.hidden_size
    emb = torch.randn(b, s, h)
    mask = torch.ones(b, p + s, dtype=torch.long)
    pos = torch.arange(p, p + s).view(1, 1, s).expand(3, b, s).contiguous()
    past = [torch.randn(b, info.num_kv_heads, p, info.head_dim) for _ in range(2 * info.num_layers)]
    past_names, present_names = kv_names(info.num_layers)
    auto = torch.export.Dim.AUTO
    dyn: dict[str, Any] = {"inputs_embeds": {0: auto, 1: auto}, "attention_mask": {0: auto, 1: auto},
                           "position_ids": {1: auto, 2: auto}, "past": [{0: auto, 2: auto} for _ in past]}
    if deepstack:
        module: Any = Decoder().eval()
        args: tuple[Any, ...] = (emb, mask, pos, torch.zeros(info.deepstack_layers, b, s, h), past)
        dyn["deepstack_embeds"] = {1: auto, 2: auto}
        in_names = ["inputs_embeds", "attention_mask", "position_ids", "deepstack_embeds", *past_names]
    else:
        module = NoDeepstack(Decoder()).eval()
        args = (emb, mask, pos, past)
        in_names = ["inputs_embeds", "attention_mask", "position_ids", *past_names]
    tmp = work / "decoder.onnx"
    trace_log = logging.getLogger("torch.__trace")  # torch.export's structured trace: very chatty, not ours
    was_disabled, trace_log.disabled = trace_log.disabled, True
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(module, args, str(tmp), dynamo=True, dynamic_shapes=dyn, input_names=in_names,
                              output_names=["logits", *present_names], opset_version=OPSET, optimize=True,
                              external_data=True, verbose=False, report=False)
        except Exception as exc:  # torch.export / onnxscript raise many types
            raise ExportError(f"torch.onnx could not export the decoder ({type(exc).__name__}: "
                              f"{str(exc)[:500]})") from exc
        finally:
            trace_log.disabled = was_disabled
    proto = _load_full(tmp)
    _name_dims(proto, info.num_layers, deepstack)
    files = save_onnx(proto, out)
    for f in (tmp, tmp.with_name(tmp.name + ".data")):
        if f.exists():
            os.remove(f)
    return files


def _name_dims(proto: Any, num_layers: int, deepstack: bool) -> None:
    """Readable names for the decoder's symbolic dimensions (batch, seq, past, total) on its inputs/outputs."""
    past_names, present_names = kv_names(num_layers)
    names: dict[str, dict[int, str]] = {
        "inputs_embeds": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "total"},
        "position_ids": {1: "batch", 2: "seq"}, "logits": {0: "batch"},
    }
    if deepstack:
        names["deepstack_embeds"] = {1: "batch", 2: "seq"}
    for n in past_names:
        names[n] = {0: "batch", 2: "past"}
    for n in present_names:
        names[n] = {0: "batch", 2: "total"}
    for vi in list(proto.graph.input) + list(proto.graph.output):
        for axis, label in names.get(vi.name, {}).items():
            dims = vi.type.tensor_type.shape.dim
            if axis < len(dims) and not dims[axis].HasField("dim_value"):
                dims[axis].dim_param = label
