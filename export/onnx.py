"""``covip export onnx``: a tuned Qwen-VL -> ONNX graphs (vision, embeddings, decoder with KV cache), optionally
int8 / int4, with a manifest and a parity check, for :class:`covip.sdk.engines.onnx.OnnxEngine`.

Pipeline (:func:`export_onnx`):

1. resolve the input to one merged HF checkpoint (:func:`covip.export.merge.resolve_checkpoint`: LoRA
   adapters and GSPO run directories are merged with peft's ``merge_and_unload``) and load it in float32;
2. export the graphs (:mod:`covip.export.onnx_graphs`): ``vision.onnx`` at one fixed image size (default:
   the largest square <= 448 px the model's processor keeps as is; ``--image-size``), ``embed.onnx`` and
   ``decoder.onnx`` (past/present key-values, dynamic lengths);
3. ``--int8``: dynamic int8 quantization (onnxruntime ``quantize_dynamic``: MatMul weights per channel in a
   7-bit range, accurate on CPUs without VNNI too; the embedding table's Gather) of all three; ``--int4``: weight-only 4-bit ``MatMulNBits`` of the
   decoder (onnxruntime ``MatMulNBitsQuantizer``, blocks of 32) - skipped with the reason when onnxruntime
   cannot do it;
4. save the tokenizer (``tokenizer.json``, read with the ``tokenizers`` library), and write
   ``covip_export.json`` with every file's hash, the chat template and an ``onnx`` section (image size and
   preprocessing, shapes, RoPE, special token ids, graph inputs/outputs) - what the engine needs instead of
   transformers;
5. verify (:mod:`covip.export.verify_onnx`): greedy tokens of the fp32 graphs equal the HF model's on a
   text prompt and an image prompt (the same pixels), logit max-abs-diff, and for int8/int4 top-1
   agreement and size ratio. Failed fp32 parity raises :class:`~covip.sdk.errors.ExportError` and writes
   nothing.

Everything is built in a temporary sibling of the output directory and renamed into place at the end.
Importing this module registers the ONNX verifier of ``covip export verify``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from covip.sdk.errors import ExportError

__all__ = ["OnnxExportResult", "export_onnx", "default_image_size", "ONNX_FORMAT_VERSION", "FILE_NAMES"]

log = logging.getLogger(__name__)

ONNX_FORMAT_VERSION = 1
#: (kind, quant) -> file name in the export directory
FILE_NAMES: dict[tuple[str, str], str] = {
    ("onnx-vision", "fp32"): "vision.onnx",
    ("onnx-embed", "fp32"): "embed.onnx",
    ("onnx-decoder", "fp32"): "decoder.onnx",
    ("onnx-vision", "int8"): "vision-int8.onnx",
    ("onnx-embed", "int8"): "embed-int8.onnx",
    ("onnx-decoder", "int8"): "decoder-int8.onnx",
    ("onnx-decoder", "int4"): "decoder-int4.onnx",
}
DEFAULT_MAX_IMAGE_SIDE = 448
INT4_BLOCK_SIZE = 32


@dataclass
class OnnxExportResult:
    """What :func:`export_onnx` wrote: the directory, its manifest, skipped quants and the verify report."""

    out_dir: Path
    manifest: Any
    skipped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    verify: Any = None  # covip.export.verify.VerifyReport or None

    def to_dict(self) -> dict[str, Any]:
        return {"out_dir": str(self.out_dir), "files": [f.path for f in self.manifest.files],
                "image_size": (self.manifest.onnx or {}).get("image", {}).get("width"),
                "skipped": self.skipped, "notes": self.notes,
                "verify": self.verify.to_dict() if self.verify is not None else None}


def default_image_size(model_dir: str | os.PathLike[str], factor: int) -> int:
    """The largest square side <= 448 that is a multiple of ``factor`` (patch x merge) and whose pixel count
    lies inside the checkpoint's image processor [min_pixels, max_pixels] (so the HF processor keeps it as it is)."""
    from covip.export.merge import read_pixel_limits

    px = read_pixel_limits(model_dir)
    lo = (px.min_pixels if px else None) or 0
    hi = (px.max_pixels if px else None) or DEFAULT_MAX_IMAGE_SIDE**2
    side = DEFAULT_MAX_IMAGE_SIDE // factor * factor
    while side > factor and side * side > hi:
        side -= factor
    if side * side < lo:
        side = max(factor, -(-int(lo**0.5) // factor) * factor)
    return max(side, factor)


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """onnxruntime.quantization logs advice on the root logger; keep it at DEBUG under covip's logger."""

    class _Filter(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            if record.name == "root" and "pre-processing before quantization" in record.getMessage():
                log.debug("onnxruntime.quantization: %s", record.getMessage())
                return False
            return True

    flt = _Filter()
    root = logging.getLogger()
    root.addFilter(flt)
    handlers = list(root.handlers)
    for h in handlers:
        h.addFilter(flt)
    import onnxruntime.quantization  # noqa: F401 - creates its loggers

    chatty = [logging.getLogger(n) for n in list(logging.root.manager.loggerDict)
              if n.startswith("onnxruntime.quantization")] + [logging.getLogger("onnxruntime.quantization")]
    levels = [lg.level for lg in chatty]
    if not log.isEnabledFor(logging.DEBUG):  # its per-node INFO lines only at DEBUG
        for lg in chatty:
            lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        root.removeFilter(flt)
        for h in handlers:
            h.removeFilter(flt)
        for lg, level in zip(chatty, levels):
            lg.setLevel(level)


def _quantize_int8(src: Path, dst: Path, op_types: list[str]) -> list[Path]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    big = src.with_name(src.name + ".data").exists()  # weights too large for one protobuf
    try:
        with _quiet_quantizer():
            # reduce_range: 7-bit weights, because the file runs on laptops of any x86 CPU, and onnxruntime's
            # u8 x s8 kernels saturate on AVX2 CPUs without VNNI (measured: int8 top-1 agreement 0.29 there with
            # 8-bit weights, against >= 0.6 on a VNNI machine; onnxruntime's quantization docs recommend this)
            quantize_dynamic(str(src), str(dst), op_types_to_quantize=op_types, per_channel=True,
                             reduce_range=True, weight_type=QuantType.QInt8, use_external_data_format=big,
                             extra_options={"MatMulConstBOnly": True})
    except Exception as exc:  # onnxruntime.quantization raises many types
        raise ExportError(f"onnxruntime could not quantize {src.name} to int8 ({type(exc).__name__}: "
                          f"{str(exc)[:300]})") from exc
    data = dst.with_name(dst.name + ".data")
    return [dst, data] if data.exists() else [dst]


def _quantize_int4(src: Path, dst: Path) -> list[Path]:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    from covip.export.onnx_graphs import save_onnx

    with _quiet_quantizer():
        q = MatMulNBitsQuantizer(onnx.load(str(src)), bits=4, block_size=INT4_BLOCK_SIZE, is_symmetric=True)
        q.process()
    proto = q.model.model
    if not any(n.op_type == "MatMulNBits" for n in proto.graph.node):
        raise ExportError("no MatMul weight was quantized to 4 bits")
    return save_onnx(proto, dst)


def _vision_factor(model_dir: Path) -> int:
    """patch_size x spatial_merge_size of a checkpoint (the side of one image token in pixels)."""
    try:
        vc = json.loads((Path(model_dir) / "config.json").read_text()).get("vision_config") or {}
    except (OSError, ValueError) as exc:
        raise ExportError(f"cannot read {model_dir}/config.json ({exc})") from exc
    return int(vc.get("patch_size", 14)) * int(vc.get("spatial_merge_size", 2))


def _special_tokens(tok: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for name in ("bos_token", "eos_token", "unk_token", "pad_token"):
        value = getattr(tok, name, None)
        if isinstance(value, str):
            out[name] = value
    return out


def _eos_ids(model: Any, tok: Any) -> list[int]:
    """What the transformers engine stops on: generation_config eos, the tokenizer's eos and <|im_end|>."""
    eos: set[int] = set()
    gen_eos = getattr(model.generation_config, "eos_token_id", None)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    for value in (gen_eos, tok.eos_token_id, im_end):
        if isinstance(value, int):
            eos.add(value)
        elif isinstance(value, (list, tuple)):
            eos.update(v for v in value if isinstance(v, int))
    eos.discard(getattr(tok, "unk_token_id", None))
    return sorted(eos)


def _model_id(ck: Any) -> str:
    if ck.tiny is not None:
        return f"{ck.tiny.get('name', 'tiny')}-{str(ck.tiny.get('build_sha256', ''))[:12]}"
    return Path(str(ck.source.get("model") or ck.path)).name or str(ck.path)


def _save_tokenizer(processor: Any, ck_path: Path, stage: Path) -> Path:
    tok = processor.tokenizer
    target = stage / "tokenizer.json"
    backend = getattr(tok, "backend_tokenizer", None) or getattr(tok, "_tokenizer", None)
    if backend is not None and hasattr(backend, "save"):
        backend.save(str(target))
    elif (ck_path / "tokenizer.json").is_file():
        shutil.copyfile(ck_path / "tokenizer.json", target)
    else:
        raise ExportError("the model's tokenizer has no tokenizer.json (a fast tokenizer); the ONNX engine reads "
                          "the tokenizer with the `tokenizers` library and needs one")
    from tokenizers import Tokenizer

    probe = "<|im_start|>user\nhello<|im_end|>"
    if Tokenizer.from_file(str(target)).encode(probe).ids != tok(probe)["input_ids"]:
        raise ExportError("the saved tokenizer.json does not tokenize like the model's tokenizer")
    return target


def export_onnx(model: str | os.PathLike[str], out: str | os.PathLike[str], *, int8: bool = False,
                int4: bool = False, image_size: int | None = None, base: str | None = None, verify: bool = True,
                verify_tokens: int = 16, overwrite: bool = False, progress: bool = True) -> OnnxExportResult:
    """Export ``model`` (merged checkpoint, LoRA adapter, GSPO run dir, 'tiny', hub id) to ``out``.

    ``image_size``: the fixed square input side of the vision graph (a multiple of patch x merge, e.g. 96
    for the tiny Qwen3-VL: grid 1x6x6, 9 image tokens); None picks :func:`default_image_size`. Photos of
    other sizes are stretched to it by the engine. ``verify``: run the parity checks (an fp32 failure raises
    :class:`ExportError` and nothing is written).
    """
    from covip.export.manifest import add_files, new_manifest, publish_export, write_manifest
    from covip.export.merge import read_chat_template, resolve_checkpoint
    from covip.sdk.support import require

    torch = require("torch", feature="ONNX export", extra="export")
    tf = require("transformers", feature="ONNX export", extra="export")
    onnx = require("onnx", feature="ONNX export", extra="export")
    require("onnxscript", feature="ONNX export (the dynamo exporter)", extra="export")
    ort = require("onnxruntime", feature="ONNX export (quantization and verification)", extra="onnx")
    require("tokenizers", feature="ONNX export", extra="onnx")

    from covip.export import onnx_graphs as graphs

    dest = Path(out).expanduser().absolute()
    if dest.exists() and not (dest.is_dir() and not any(dest.iterdir())) and not overwrite:
        raise ExportError(f"{dest} exists and is not empty; pass --overwrite or choose another --out")
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1):
        raise ExportError(f"--image-size must be a positive integer, got {image_size!r}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    steps = 5 + int(int8) + int(int4) + int(verify)
    from covip.sdk.progress import progress_bar

    bar = progress_bar(total=steps, desc="covip export onnx", unit="step", enabled=bool(progress), leave=False)
    try:
        stage = work / "out"
        stage.mkdir()
        scratch = work / "scratch"
        scratch.mkdir()
        bar.set_postfix_str("resolving / merging the checkpoint")
        ck = resolve_checkpoint(model, base=base, work_dir=work / "merge")
        factor = _vision_factor(ck.path)
        if image_size is not None and image_size % factor:  # refuse before loading anything heavy
            lower, upper = max(factor, image_size // factor * factor), -(-image_size // factor) * factor
            raise ExportError(f"--image-size {image_size} is not a multiple of patch x merge = {factor} for this "
                              f"model; use {lower} or {upper}")
        from covip.sdk.support import quiet_progress

        try:
            processor = tf.AutoProcessor.from_pretrained(str(ck.path))
            with quiet_progress(tf):
                hf = tf.AutoModelForImageTextToText.from_pretrained(str(ck.path), dtype=torch.float32).eval()
        except (OSError, ValueError, KeyError) as exc:
            raise ExportError(f"cannot load {ck.path} ({type(exc).__name__}: {str(exc)[:300]})") from exc
        info = graphs.model_info(hf)
        graphs.use_eager_attention(hf)
        side = image_size if image_size is not None else default_image_size(ck.path, factor)
        grid = (1, side // info.patch_size, side // info.patch_size)
        bar.update(1)

        files: list[tuple[str, str, str]] = []

        def add(paths: list[Path], kind: str, quant: str) -> None:
            files.extend((p.name, kind, quant) for p in paths)

        bar.set_postfix_str(f"exporting the vision encoder at {side}x{side}")
        add(graphs.export_vision(hf, info, grid, stage / FILE_NAMES["onnx-vision", "fp32"], scratch),
            "onnx-vision", "fp32")
        bar.update(1)
        bar.set_postfix_str("exporting the token embeddings")
        add(graphs.export_embed(hf, stage / FILE_NAMES["onnx-embed", "fp32"]), "onnx-embed", "fp32")
        bar.update(1)
        bar.set_postfix_str("exporting the decoder (with KV cache)")
        add(graphs.export_decoder(hf, info, stage / FILE_NAMES["onnx-decoder", "fp32"], scratch),
            "onnx-decoder", "fp32")
        bar.update(1)

        skipped: dict[str, str] = {}
        notes: list[str] = []
        if int8:
            bar.set_postfix_str("quantizing to int8")
            for kind, ops in (("onnx-vision", ["MatMul"]), ("onnx-embed", ["Gather"]),
                              ("onnx-decoder", ["MatMul"])):
                add(_quantize_int8(stage / FILE_NAMES[kind, "fp32"], stage / FILE_NAMES[kind, "int8"], ops),
                    kind, "int8")
            bar.update(1)
        if int4:
            bar.set_postfix_str("quantizing the decoder to int4 (MatMulNBits)")
            try:
                add(_quantize_int4(stage / FILE_NAMES["onnx-decoder", "fp32"],
                                   stage / FILE_NAMES["onnx-decoder", "int4"]), "onnx-decoder", "int4")
            except Exception as exc:  # noqa: BLE001 - any failure of the optional 4-bit path is reported
                skipped["int4"] = (f"onnxruntime's MatMulNBitsQuantizer could not quantize this decoder "
                                   f"({type(exc).__name__}: {str(exc)[:300]}); int4 is unsupported here")
                log.warning("skipping int4: %s", skipped["int4"])
            bar.update(1)

        bar.set_postfix_str("writing the tokenizer and the manifest")
        tok_path = _save_tokenizer(processor, ck.path, stage)
        if ck.tiny is not None:
            (stage / "covip_tiny.json").write_text(json.dumps(ck.tiny, indent=2, sort_keys=True) + "\n")
        tok = processor.tokenizer
        ip = getattr(processor, "image_processor", None)
        section = _onnx_section(hf, info, tok, ip, side, grid, tok_path, ck, ort.__version__,
                                onnx.__version__, torch.__version__)
        source = dict(ck.source)
        source["model"] = str(model) if not Path(os.fspath(model)).exists() else str(
            Path(os.fspath(model)).expanduser().absolute())
        template = read_chat_template(ck.path) or getattr(processor, "chat_template", None)
        manifest = new_manifest(source=source, chat_template=template, meaningless=ck.meaningless, onnx=section)
        add_files(manifest, stage, files)
        write_manifest(stage, manifest)
        del hf
        bar.update(1)

        report = None
        if verify:
            from covip.export.verify import hf_reference, verify_export
            from covip.export.verify_onnx import onnx_cases

            bar.set_postfix_str("verifying parity with the HF model")
            reference = hf_reference(ck.path, cases=onnx_cases(ck.path, side), max_new_tokens=verify_tokens)
            report = verify_export(stage, ck.path, max_new_tokens=verify_tokens, kinds=["onnx"],
                                   reference=reference, progress=False)
            bar.update(1)
            if not report.parity_ok:
                raise ExportError(f"ONNX parity check failed; nothing was written to {dest}:\n{report.summary()}")
            if not report.passed:
                log.warning("quantized ONNX graphs agree poorly with the HF model:\n%s", report.summary())
            manifest.onnx["verification"] = _verification_summary(report)
            write_manifest(stage, manifest)

        publish_export(stage, dest, work, manifest, report)
        return OnnxExportResult(out_dir=dest, manifest=manifest, skipped=skipped, notes=notes, verify=report)
    finally:
        bar.close()
        shutil.rmtree(work, ignore_errors=True)


def _verification_summary(report: Any) -> dict[str, Any]:
    return {"parity_ok": report.parity_ok, "passed": report.passed, "files": [
        {"path": f.path, "quant": f.quant, "greedy_equal": f.greedy_equal, "top1_agreement": f.top1_agreement,
         "max_abs_diff": f.max_abs_diff, "size_ratio": f.size_ratio} for f in report.files]}


def _onnx_section(hf: Any, info: Any, tok: Any, ip: Any, side: int, grid: tuple[int, int, int],
                  tok_path: Path, ck: Any, ort_version: str, onnx_version: str, torch_version: str) -> dict[str, Any]:
    from covip.export.onnx_graphs import OPSET, kv_names
    from covip.sdk.export_manifest import sha256_file

    cfg = hf.config

    def tid(name: str) -> int | None:
        value = getattr(cfg, name, None)
        return int(value) if isinstance(value, int) else None

    resample = int(getattr(ip, "resample", 3) or 3)
    past, present = kv_names(info.num_layers)
    dec_inputs = ["inputs_embeds", "attention_mask", "position_ids"]
    if info.deepstack_layers:
        dec_inputs.append("deepstack_embeds")
    return {
        "format": ONNX_FORMAT_VERSION,
        "model_type": info.model_type,
        "model_id": _model_id(ck),
        "opset": OPSET,
        "image": {
            "width": side, "height": side, "grid_thw": list(grid),
            "tokens_per_image": grid[0] * grid[1] * grid[2] // info.merge_size**2,
            "patch_size": info.patch_size, "temporal_patch_size": info.temporal_patch_size,
            "merge_size": info.merge_size,
            "image_mean": [float(x) for x in getattr(ip, "image_mean", [0.5, 0.5, 0.5])],
            "image_std": [float(x) for x in getattr(ip, "image_std", [0.5, 0.5, 0.5])],
            "rescale_factor": float(getattr(ip, "rescale_factor", 1 / 255)),
            "resample": {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}.get(resample, "bicubic"),
            "note": f"the vision graph takes exactly one {side}x{side} image; photos of other sizes are "
                    "stretched to it (PIL resampling)",
        },
        "text": {
            "hidden_size": info.hidden_size, "num_layers": info.num_layers, "num_heads": info.num_heads,
            "num_kv_heads": info.num_kv_heads, "head_dim": info.head_dim, "vocab_size": info.vocab_size,
            "deepstack_layers": info.deepstack_layers, "rope": info.rope,
            "mrope_section": info.rope.get("mrope_section"),
            "mrope_interleaved": bool(info.rope.get("mrope_interleaved", False)),
        },
        "tokens": {
            "image_token_id": tid("image_token_id"), "video_token_id": tid("video_token_id"),
            "vision_start_token_id": tid("vision_start_token_id"),
            "vision_end_token_id": tid("vision_end_token_id"),
            "image_token": getattr(tok, "image_token", None) or "<|image_pad|>",
            "eos_token_ids": _eos_ids(hf, tok),
            "special_tokens": _special_tokens(tok),
        },
        "tokenizer": {"path": tok_path.name, "sha256": sha256_file(tok_path), "bytes": tok_path.stat().st_size,
                      "vocab_size": len(tok),
                      "clean_up_tokenization_spaces": bool(getattr(tok, "clean_up_tokenization_spaces", False))},
        "graphs": {
            "vision": {"inputs": ["pixel_values"],
                       "outputs": ["image_embeds"] + (["deepstack_embeds"] if info.deepstack_layers else [])},
            "embed": {"inputs": ["input_ids"], "outputs": ["inputs_embeds"]},
            "decoder": {"inputs": dec_inputs + past, "outputs": ["logits", *present],
                        "logits": "last position only"},
        },
        "exporter": {"torch": torch_version, "onnx": onnx_version, "onnxruntime": ort_version},
    }


def _register() -> None:
    try:
        from covip.export.verify import register_verifier
        from covip.export.verify_onnx import verify_onnx
    except ImportError:  # pragma: no cover - the verify module is part of covip.export
        return
    register_verifier("onnx", verify_onnx)


_register()
