"""engines.py's overhead section: covip's engine against the loop a user would write on the raw runtime (raw
llama-cpp-python, a bare onnxruntime greedy loop), both in one worker, alternating calls; its rows and headline.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from _common import loadavg, median
from _engines_measure import TEXT_PROMPT, fmt, manifest_files, open_engine, perf, ratio, summarize

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
            path = path / manifest_files(path, spec["quant"], ("gguf-text",))[0]["path"]
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
        graphs = {f["kind"]: d / f["path"] for f in manifest_files(d, spec["quant"], ("onnx-embed", "onnx-decoder"))}
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
