"""engines.py's static cache + torch.compile section: TransformersEngine eager against
TransformersEngine(compile=True) on the same model in one worker; its plan, worker, row, headline and table.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from _common import loadavg, median
from _engines_measure import TEXT_PROMPT, fmt, hf_bytes, perf, ratio, summarize

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
