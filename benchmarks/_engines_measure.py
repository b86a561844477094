"""engines.py's measuring side: the prompts, RSS and weight-byte readings, the bandwidth copy, opening an engine in
a worker (covip's engines, or the minimal SmolLM2 loop on transformers) and the medians of its runs.

Split out of ``benchmarks/engines.py`` (imported the way the scripts import ``_common``: the scripts' folder is on
``sys.path``); the modules ``_engines_prepare``, ``_engines_raw`` and ``_engines_compile`` build on it.
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import time
import timeit
from pathlib import Path
from typing import Any

from _common import median

perf = time.perf_counter

_CONTEXT = ("Bori, a small white dog, ran along Haeundae beach in July 2024 and chased the foam until sunset. Mom wore "
            "her red scarf at the Gyeongbokgung palace gate last October and laughed at the guards. The blue bike "
            "leaned on the fence of the cabin in Gapyeong while Dad fixed the gate in his green jacket. ")
TEXT_PROMPT = ("Here are some of my memories. " + _CONTEXT * 3
               + "Write a long, detailed story that connects all of these memories, one paragraph per memory.")
IMAGE_PROMPT = "Describe this photo in detail: who is in it, where it was taken and what is happening."
BASELINE = "transformers fp32"


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


def manifest_files(export_dir: Path, quant: str | None, kinds: tuple[str, ...]) -> list[dict]:
    files = json.loads((export_dir / "covip_export.json").read_text())["files"]
    return [f for f in files if f["kind"] in kinds and (quant is None or f["quant"] == quant)]


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


def summarize(runs: list[list]) -> dict:
    """Medians over runs ([prompt_tokens, completion_tokens, prefill_s, decode_s, finish])."""
    pf = [r[0] / r[2] for r in runs if r[2] > 0]
    dc = [(r[1] - 1) / r[3] for r in runs if r[3] > 0 and r[1] > 1]
    return {"prefill_tok_s": median(pf), "decode_tok_s": median(dc),
            "prefill_tok_s_range": [min(pf), max(pf)] if pf else None,
            "decode_tok_s_range": [min(dc), max(dc)] if dc else None,
            "prompt_tokens": median([r[0] for r in runs]), "completion_tokens": median([r[1] for r in runs]),
            "prefill_s": median([r[2] for r in runs]), "decode_s": median([r[3] for r in runs]), "n_runs": len(runs)}


def fmt(x: Any, spec: str = "{:.1f}") -> str:
    return "-" if x is None else spec.format(x)
