"""cag_latency.py's measuring side: the modes, the question and the warm-CAG target; the demo memory and query
photos; the engine wrappers (a memory whose caption cache always misses, a probe that records every engine call);
the prompt layout of each pass (where its image tokens sit); and the per-engine run of every mode.

Split out of ``benchmarks/cag_latency.py`` (imported the way the scripts import ``_common``: the scripts' folder is
on ``sys.path``). Import it only after cag_latency.py has chosen OMP_WAIT_POLICY: it loads covip (and with it the
OpenMP runtimes).
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path
from typing import Any

from _common import loadavg

from covip.sdk import Memory, prompts
from covip.sdk.cag import CagConfig, CaptionAugmentedGenerator, KvSnapshots
from covip.sdk.context import ContextConfig
from covip.sdk.demo import DEMO_CONCEPTS, DemoConcept, draw_concept
from covip.sdk.engines.base import GenerationConfig

perf = time.perf_counter
USER = "bench"
MODES = ("direct", "cag_cold", "cag_cold_no_kv", "cag_warm", "cag_warm_no_snapshot", "cag_cold_paper",
         "cag_warm_paper")


ENGINE_LABELS = {"transformers": "transformers (tiny Qwen3-VL, CPU)",
                 "llamacpp": "llama.cpp (tiny Qwen3-VL GGUF f32 + mmproj, CPU)"}
QUESTION = "Who is this, and where did I last see them?"
TARGET_WARM_RATIO = 1.1
EXTRA_CONCEPT = DemoConcept("Dad", "person", (40, 130, 70), "person", (
    ("User: Dad fixing the fence at the cabin in Gapyeong, in his green jacket.", "2024-09-14T11:00", "Gapyeong"),
))


# ------------------------------------------------------------------------------------------------- wrappers
class ColdMemory:
    """The real memory, except that cached_caption() always misses (a cold caption on every ask)."""

    def __init__(self, memory: Memory) -> None:
        self._memory = memory

    def cached_caption(self, *args: Any, **kwargs: Any) -> None:
        return None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._memory, name)


class Probe:
    """Wraps an engine: records every call's messages and Generation; optionally resets the KV cache first."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.model_id, self.meaningless = engine.model_id, engine.meaningless
        self.reuse = True
        self.calls: list[tuple[list[dict], Any]] = []

    def generate(self, messages, config=None, *, on_token=None):
        if not self.reuse:
            reset_kv(self.engine)
        gen = self.engine.generate(messages, config, on_token=on_token)
        self.calls.append((messages, gen))
        return gen

    def __getattr__(self, name: str) -> Any:  # count_tokens, snapshot, restore
        return getattr(self.engine, name)


def reset_kv(engine: Any) -> None:
    engine.reset()  # Engine.reset(): drop the KV state of the last call


# ---------------------------------------------------------------------------------------------- prompt layout
def prompt_layout(engine_name: str, engine: Any, messages: list[dict]) -> tuple[int, list[tuple[int, int]]]:
    """(prompt length in tokens, [start, end) of each image's placeholder tokens) as the engine tokenizes it."""
    if engine_name == "transformers":
        ids = engine.prompt_token_ids(messages)
        image_id = getattr(engine.model.config, "image_token_id", None)
        spans, start = [], None
        for i, tok in enumerate([*ids, None]):
            if tok == image_id and start is None:
                start = i
            elif tok != image_id and start is not None:
                spans.append((start, i))
                start = None
        return len(ids), spans
    # llama.cpp: no public API gives the tokenized layout; use the engine's own (private) tokenizer path,
    # which does not touch the KV cache, and free what it allocates
    from covip.sdk.support import Media, item_tokens

    text, images = engine._render(messages)
    items, chunks, bitmaps = engine._tokenize_multimodal(text, images)
    try:
        spans, pos = [], 0
        for item in items:
            n = item_tokens(item)
            if isinstance(item, Media):
                spans.append((pos, pos + n))
            pos += n
        return pos, spans
    finally:
        if chunks is not None:
            engine._mtmd.mtmd_input_chunks_free(chunks)
        for bm in bitmaps:
            engine._mtmd.mtmd_bitmap_free(bm)


def images_after(spans: list[tuple[int, int]], cached: int) -> int:
    return sum(max(0, end - max(start, cached)) for start, end in spans)


# --------------------------------------------------------------------------------------------------- setup
def build_memory(home: Path, photo_dir: Path, size: int) -> tuple[Memory, list[DemoConcept]]:
    """The demo memory (covip.sdk.demo's concepts and dialogues, plus 'Dad'), photos drawn at ``size`` px."""
    from covip.sdk.vision import make_embedder

    mem = Memory.open(home, embedder=make_embedder("tiny"))
    mem.add_user(USER, exist_ok=True)
    concepts = [*DEMO_CONCEPTS, EXTRA_CONCEPT]
    photo_dir.mkdir(parents=True, exist_ok=True)
    for concept in concepts:  # as covip.sdk.demo.build_demo_memory does, at the benchmark's photo size
        mem.add_concept(USER, concept.name, kind=concept.kind)
        for n, (dialogue, taken_at, place) in enumerate(concept.memories):
            path = photo_dir / f"{concept.name.replace(' ', '_')}-{n}.png"
            draw_concept(concept, n, size=size).save(path)
            mem.remember(USER, path, dialogue, [concept.name], taken_at=taken_at, place=place)
    return mem, concepts


def query_photos(concepts: list[DemoConcept], n: int, size: int, photo_dir: Path) -> list[Path]:
    out = []
    for i in range(n):
        concept, variant = concepts[i % len(concepts)], 7 + i // len(concepts)
        path = photo_dir / f"query-{concept.name.replace(' ', '_')}-{variant}.png"
        draw_concept(concept, variant, size=size).save(path)
        out.append(path)
    return out


def open_engine(name: str) -> tuple[Any, dict]:
    from covip.sdk.models.tiny import build_tiny_vlm

    hf_dir = build_tiny_vlm("tiny-qwen3-vl")
    if name == "transformers":
        from covip.sdk.engines.transformers import TransformersEngine, TransformersEngineConfig

        engine = TransformersEngine(TransformersEngineConfig(model=str(hf_dir), device="cpu"))
        return engine, {"model_dir": str(hf_dir), "device": engine.device, "dtype": str(engine.dtype)}
    from covip.export.converter import convert_tiny_to_gguf
    from covip.sdk.engines.llamacpp import LlamaCppEngine, LlamaCppEngineConfig

    gguf, mmproj = convert_tiny_to_gguf(hf_dir)
    engine = LlamaCppEngine(LlamaCppEngineConfig(model_path=str(gguf), mmproj_path=str(mmproj)))
    return engine, {"gguf": str(gguf), "mmproj": str(mmproj), "n_ctx": engine.n_ctx}


# ------------------------------------------------------------------------------------------------ measuring
class EngineBench:
    def __init__(self, name: str, engine: Any, mem: Memory, args: argparse.Namespace) -> None:
        self.name, self.engine, self.mem = name, engine, mem
        self.probe = Probe(engine)
        ctx = ContextConfig(k=args.k, similarity_floor=-1.0, image_tokens=args.image_tokens)
        cfg = CagConfig(caption=GenerationConfig(max_new_tokens=args.caption_tokens, temperature=0.0),
                        answer=GenerationConfig(max_new_tokens=args.answer_tokens, temperature=0.0))
        store = KvSnapshots(cfg.kv_snapshot_mb << 20)  # the cold runs' snapshots serve the warm runs
        self.cags = {"direct": CaptionAugmentedGenerator(mem, self.probe, context=ctx, config=cfg),
                     "cag_cold": CaptionAugmentedGenerator(ColdMemory(mem), self.probe, context=ctx, config=cfg,
                                                           kv_snapshots=store),
                     "cag_warm": CaptionAugmentedGenerator(mem, self.probe, context=ctx, config=cfg, kv_snapshots=store),
                     "cag_warm_no_snapshot": CaptionAugmentedGenerator(
                         mem, self.probe, context=ctx, config=CagConfig(cfg.caption, cfg.answer, kv_snapshot_mb=0))}
        paper = CagConfig(cfg.caption, cfg.answer, layout="paper")  # the paper's answer-pass layout (issue 12)
        self.cags["cag_cold_paper"] = CaptionAugmentedGenerator(ColdMemory(mem), self.probe, context=ctx, config=paper)
        self.cags["cag_warm_paper"] = CaptionAugmentedGenerator(mem, self.probe, context=ctx, config=paper)
        self.cags["cag_cold_no_kv"] = self.cags["cag_cold"]
        self._layouts: dict[tuple, tuple[int, list[tuple[int, int]]]] = {}

    def run_mode(self, mode: str, photo: Path) -> dict:
        reset_kv(self.engine)
        self.probe.reuse = mode != "cag_cold_no_kv"
        self.probe.calls = []
        t0 = perf()
        ans = self.cags[mode].ask(USER, photo, QUESTION, cag=mode != "direct")
        wall = perf() - t0
        self.probe.reuse = True
        expect_cached = mode.startswith("cag_warm")
        problems = []
        if mode != "direct" and ans.caption_cached != expect_cached:
            problems.append(f"caption_cached={ans.caption_cached}, expected {expect_cached}")
        if ("kv_restored" in ans.tokens) != (mode == "cag_warm"):
            problems.append(f"kv_restored={ans.tokens.get('kv_restored')} in mode {mode}")
        return {"mode": mode, "wall_s": wall, "caption_cached": ans.caption_cached,
                "n_memories": len(ans.memories), "kv_restored": ans.tokens.get("kv_restored"),
                "kv_snapshot_s": ans.timings.get("kv_snapshot_s"), "kv_restore_s": ans.timings.get("kv_restore_s"),
                "_calls": list(self.probe.calls), "problems": problems, "photo": photo.name}

    def finish(self, run: dict) -> dict:
        """Add token/timing totals and the image-token accounting (runs the tokenizer; outside the timing)."""
        calls = run.pop("_calls")
        mode = run["mode"]
        names = ["answer"] if len(calls) == 1 else ["caption", "answer"]
        if len(calls) != len(names):
            run["problems"].append(f"{len(calls)} engine calls")
            names = [f"call{i}" for i in range(len(calls))]
        passes = []
        for pname, (messages, gen) in zip(names, calls):
            key = (mode, run["photo"], pname)
            if key not in self._layouts:
                self._layouts[key] = prompt_layout(self.name, self.engine, messages)
            n_prompt, spans = self._layouts[key]
            if pname == "answer":
                run["_answer_last_image_end"] = max((e for _, e in spans), default=0)
            if n_prompt != gen.total_prompt_tokens:
                run["problems"].append(f"{pname}: layout has {n_prompt} tokens, engine reported "
                                       f"{gen.total_prompt_tokens}")
            passes.append({
                "pass": pname, "prompt_tokens_total": gen.total_prompt_tokens, "prefill_tokens": gen.prompt_tokens,
                "cached_tokens": gen.cached_tokens, "decode_tokens": gen.completion_tokens,
                "prefill_s": gen.prefill_s, "decode_s": gen.decode_s, "finish_reason": gen.finish_reason,
                "image_tokens_in_prompt": sum(e - s for s, e in spans), "n_images": len(spans),
                "image_tokens_prefilled": images_after(spans, gen.cached_tokens),
            })
        run["passes"] = passes
        for field in ("prefill_tokens", "cached_tokens", "decode_tokens", "image_tokens_prefilled",
                      "prefill_s", "decode_s"):
            run[field] = sum(p[field] for p in passes)
        run["engine_s"] = run["prefill_s"] + run["decode_s"]
        run["other_s"] = run["wall_s"] - run["engine_s"]
        by = {p["pass"]: p for p in passes}
        run["answer_image_tokens_prefilled"] = by["answer"]["image_tokens_prefilled"] if "answer" in by else None
        if "caption" in by and "answer" in by:
            cap, ans = by["caption"], by["answer"]
            # what the caption pass left in the KV cache: its prompt + every generated token but the last
            kv = cap["prompt_tokens_total"] + cap["decode_tokens"] - 1
            run["caption_pass_kv_tokens"] = kv
            run["answer_cached_covers_images"] = ans["cached_tokens"] >= run["_answer_last_image_end"]
            run["answer_cached_covers_caption_prompt"] = ans["cached_tokens"] >= cap["prompt_tokens_total"]
            run["answer_cached_covers_caption_pass"] = ans["cached_tokens"] >= kv
            # caption-pass tokens the answer pass had to run again (re-tokenized caption split differently)
            run["caption_pass_tokens_reprefilled"] = max(0, kv - ans["cached_tokens"])
        run.pop("_answer_last_image_end", None)
        return run


def run_engine(name: str, mem: Memory, photos: list[Path], reps: int, args, deadline: float) -> dict:
    t_open = perf()
    engine, info = open_engine(name)
    info["open_s"] = perf() - t_open
    info["loadavg_at_start"] = loadavg()
    bench = EngineBench(name, engine, mem, args)
    runs: list[dict] = []
    cycles: list[dict] = []
    rng = random.Random(args.seed)
    try:
        # warm-up cycle (unmeasured): lazy initialisation; every photo needs a cached caption and a KV snapshot
        t_warm = perf()  # of its caption pass before its first cag_warm
        for photo in photos:
            bench.run_mode("cag_cold", photo)
        for mode in MODES:
            bench.finish(bench.run_mode(mode, photos[0]))
        info["warmup_s"] = perf() - t_warm
        stopped = None
        for rep in range(reps):
            for pi, photo in enumerate(photos):
                if perf() > deadline:
                    stopped = f"stopped at rep {rep}, photo {pi}: --budget-minutes reached"
                    break
                order = rng.sample(MODES, len(MODES))
                t_cycle = perf()
                cycle_runs = [dict(bench.run_mode(mode, photo), rep=rep, photo_index=pi, order=pos)
                              for pos, mode in enumerate(order)]
                cycle = {"rep": rep, "photo_index": pi, "order": order, "seconds": perf() - t_cycle,
                         "loadavg": loadavg()}
                runs.extend(bench.finish(run) for run in cycle_runs)
                cycles.append(cycle)
                wall = {r["mode"]: round(r["wall_s"], 3) for r in cycle_runs}
                print(f"  [{name}] rep {rep} photo {pi} ({photo.name}) wall s: {wall} load {cycle['loadavg']}",
                      flush=True)
            if stopped:
                break
        info["stopped_early"] = stopped
        info["instruction_tokens"] = engine.count_tokens(prompts.CAPTION_INSTRUCTION)
        info["question_tokens"] = engine.count_tokens(QUESTION)
        info["loadavg_at_end"] = loadavg()
    finally:
        engine.close()
    return {"engine": info, "runs": runs, "cycles": cycles}
