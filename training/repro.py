"""``covip repro mini``: the miniature CoViP reproduction, end to end on one machine.

For each seed, on one synthetic world whose test concepts never appear in training: Stage 1, supervised warm
start (``covip train sft``); Stage 2, GSPO from the SFT checkpoint (``covip train gspo``); then the same
held-out evaluation of the three models - the random initialization, after SFT, after SFT+GSPO: CapEval-QAs
Acc+ / Acc- (lexical judge, valid for the world's templated questions), recognition set-F1 with its
permutation null, and for the final model the downstream tasks LSD / LAR / ITR with and without CAG (CoViP,
"Caption-Augmented Generation"). The mini embedder's held-out retrieval recall@1/@5 is measured as well.
Seed means and 95% intervals come from :mod:`.repro_stats`; the result JSON (``miniature.json``) and a PNG go
to ``benchmarks/results`` of the checkout, where ``covip bench --report-only`` renders them into RESULTS.md.
A full run takes hours on 2 cores with the caption phase; ``resume`` continues a stopped one (finished seeds and
SFT phases are reused when the recipe is unchanged). Each finished seed is also recorded beside the results
(``miniature-seeds/seed-N.json``: its figures and per-sample CapEval tallies), so the seeds of one reproduction
can be trained in separate sessions or on separate machines and summarized together.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from covip.sdk.errors import InputError
from covip.training.data.schema import write_json
from covip.training.repro_config import ReproConfig, load_repro_config
from covip.training.repro_stats import (
    SampleCounts,
    accuracy,
    bootstrap_difference,
    bootstrap_mean,
    check_targets,
    counts_from_judgments,
)

__all__ = ["ReproResult", "run_repro", "default_results_dir", "STAGES"]

log = logging.getLogger(__name__)

STAGES = ("random", "sft", "gspo")
"""The three models every seed evaluates: the random initialization, after SFT, after SFT+GSPO."""
SEED_FILE = "seed.json"
"""A finished seed's run and the key of the recipe that made it (what ``resume`` reuses)."""


@dataclass
class ReproResult:
    """What :func:`run_repro` wrote."""

    json_path: Path
    png_path: Path
    data: dict[str, Any] = field(default_factory=dict)


def default_results_dir(work_dir: Path) -> Path:
    """``benchmarks/results`` of the covip checkout this code runs from, else ``<work_dir>/results``."""
    bench = Path(__file__).resolve().parents[1] / "benchmarks"
    return bench / "results" if bench.is_dir() else work_dir / "results"


def _sft_config(config: ReproConfig, work: Path, seed: int) -> Any:
    from covip.training.sft_config import load_sft_config

    s, r = config.stages, config.run
    overrides = {**s.sft_overrides, "data.world": str(work / "world"),
                 "run.output_dir": str(work / f"seed-{seed}" / "sft"), "run.seed": seed, "run.use_cpu": r.use_cpu,
                 "eval.initial": False}  # the reproduction scores the random initialization itself
    if r.torch_threads:
        overrides["run.torch_threads"] = r.torch_threads
    if r.cache_dir:
        overrides["vision_warmup.teacher_cache_dir"] = r.cache_dir
    return load_sft_config(s.recipe, overrides, quick=s.sft_quick)


def _shared_warmup(config: ReproConfig, sft_config: Any, work: Path) -> tuple[Path, bool] | None:
    """The vision warm-up once for every seed, trained with ``stages.warmup_seed`` (not the first seed of this
    run: ``--seeds 1`` alone must start where ``--seeds 0,1,2`` starts seed 1), reused while the recipe's
    warm-up is the same: (its folder, whether an earlier run trained it), or None when the recipe has none."""
    if not sft_config.vision_warmup.enabled:
        return None
    from covip.training.sft import warm_start_vision

    sft_config = sft_config.with_overrides({"run.seed": config.stages.warmup_seed})
    target = work / "vision-warmup"
    key = json.dumps({"model": sft_config.model.name_or_path, "warmup": sft_config.to_dict()["vision_warmup"],
                      "seed": sft_config.run.seed}, sort_keys=True)
    key_file = work / "vision-warmup.key.json"
    if target.is_dir() and key_file.is_file() and key_file.read_text(encoding="utf-8") == key:
        log.info("reusing the vision warm-up in %s", target)
        return target, True
    warm_start_vision(sft_config, target)
    from covip.training.data.schema import atomic_write_text

    atomic_write_text(key_file, key)
    return target, False


def _gspo_config(config: ReproConfig, work: Path, seed: int, sft_model: Path) -> Any:
    from covip.training.gspo_config import load_config

    s, r = config.stages, config.run
    overrides = {**s.gspo_overrides, "model.name_or_path": str(sft_model),
                 "data.train": str(work / "world" / "train.jsonl"),
                 "run.output_dir": str(work / f"seed-{seed}" / "gspo"), "run.seed": seed, "run.use_cpu": r.use_cpu}
    if r.torch_threads:
        overrides["run.torch_threads"] = r.torch_threads
    return load_config(s.recipe, overrides)


def _recognition(sft_config: Any, model_dir: Path, root: Path, n: int | None,
                 pack: Any) -> tuple[dict[str, Any], list[str], list[Any]]:
    """Held-out recognition set-F1 of one model, with the permutation null (the samples, answer budget, batch
    and scorer of `covip train sft`); also the answers and the samples they answer."""
    from covip.training.gspo import load_policy
    from covip.training.sft_data import load_heldout_samples, load_world
    from covip.training.sft_eval import generate_answers, score_recognition

    world = load_world(root)
    samples = load_heldout_samples(root, ["recognition"], n, world)["recognition"]
    model, processor, _ = load_policy(sft_config.with_overrides({"model.name_or_path": str(model_dir)}))
    e = sft_config.eval
    answers = generate_answers(model, processor, samples, max_new_tokens=e.max_new_tokens, batch_size=e.batch_size,
                               progress=False, pack=pack)
    del model
    return score_recognition(answers, samples, permutations=e.permutations), answers, samples


def _laptop_path(model_dir: Path, out: Path, config: ReproConfig, sft_config: Any, pack: Any,
                 hf_answers: list[str], samples: list[Any]) -> dict[str, Any]:
    """The trained model through the laptop path: GGUF (f32 + q8_0) and ONNX exports with their parity checks,
    then held-out recognition answered by llama.cpp (q8_0) next to the transformers answers."""
    from covip.export.gguf import export_gguf
    from covip.export.onnx import export_onnx
    from covip.sdk.engines.base import GenerationConfig
    from covip.sdk.engines.factory import make_engine
    from covip.training.gspo_data import sample_messages
    from covip.training.rewards import parse_index_set
    from covip.training.sft_eval import score_recognition

    gguf = export_gguf(model_dir, out / "gguf", quants=("f32", "q8_0"), overwrite=True, progress=False)
    onnx = export_onnx(model_dir, out / "onnx", overwrite=True, progress=False)
    k = min(len(samples), config.eval.laptop_samples)
    answers: list[str] = []
    engine = make_engine(str(out / "gguf"), quant="q8_0")
    try:
        gen = GenerationConfig(max_new_tokens=sft_config.eval.max_new_tokens, temperature=0.0)
        for sample in samples[:k]:
            answers.append(engine.generate(sample_messages(sample, pack=pack), gen).text)
    finally:
        engine.close()
    scored = score_recognition(answers, samples[:k], permutations=200)
    agree = sum(parse_index_set(a) == parse_index_set(b) for a, b in zip(answers, hf_answers)) / max(1, k)
    return {"gguf": {"dir": str(out / "gguf"), "parity_ok": gguf.verify.parity_ok, "passed": gguf.verify.passed},
            "onnx": {"dir": str(out / "onnx"), "parity_ok": onnx.verify.parity_ok, "passed": onnx.verify.passed},
            "llamacpp_recognition": {"quant": "q8_0", "n": k, "f1": scored["f1"], "accuracy": scored["accuracy"],
                                     "agreement_with_transformers": agree}}


def _capeval(model_dir: Path, root: Path, out: Path, config: ReproConfig, pack: Any) -> SampleCounts:
    from covip.training.eval.capeval import run_capeval

    run_capeval(root / "test.jsonl", out=out, judge="lexical", model=str(model_dir), limit=config.eval.capeval_samples,
                max_new_tokens=config.eval.max_new_tokens, progress=False, prompt_pack=pack,
                engine_options={"device": "cpu"} if config.run.use_cpu else None)
    return _judged(out)


def _downstream(model_dir: Path, root: Path, out: Path, config: ReproConfig, pack: Any, seed: int) -> dict[str, Any]:
    from covip.training.eval.downstream import run_downstream

    scores: dict[str, Any] = {}
    for task in config.eval.downstream_tasks:
        data = root / f"downstream_{task}.jsonl"
        if not data.is_file():
            raise InputError(f"{data} is missing: the world has no downstream samples; set data.synth.n_downstream "
                             "in the SFT overrides, or eval.downstream_tasks: []")
        res = run_downstream(task, data, out=out / task, model=str(model_dir), judge="lexical" if task == "lar" else None,
                             modes=("cag", "no_cag"), limit=config.eval.downstream_samples, seed=seed, progress=False,
                             caption_tokens=config.eval.max_new_tokens,
                             answer_tokens=config.eval.downstream_answer_tokens,
                             prompt_pack=pack, engine_options={"device": "cpu"} if config.run.use_cpu else None)
        scores[task] = {mode: res.scores[mode]["score"] for mode in ("cag", "no_cag")}
        scores[task]["n"] = res.scores["cag"]["n"]
    return scores


def _retrieval(config: ReproConfig) -> dict[str, Any] | None:
    if not config.eval.embedder:
        return None
    from covip.training.embedder_config import load_embedder_config
    from covip.training.embedder_train import build_mini_embedder

    overrides = [f"run.cache_dir={config.run.cache_dir}"] if config.run.cache_dir else None
    build = build_mini_embedder(load_embedder_config(config.eval.embedder, overrides,
                                                     quick=config.eval.embedder_quick), progress=False)
    r = build.record.get("retrieval") or {}
    return {"recall_at_1": r.get("recall_at_1"), "recall_at_5": r.get("recall_at_5"),
            "embedder": config.eval.embedder + (" (quick)" if config.eval.embedder_quick else ""),
            "n_concepts": (r.get("world") or {}).get("n_concepts"), "reused_build": build.reused}


def _warmup_report(warm: Path) -> dict[str, Any] | None:
    """The shared vision warm-up's summary (``<warm>-run/vision_warmup.json``, written by
    :func:`covip.training.sft.warm_start_vision`), or None when it is missing or unreadable."""
    try:
        report = json.loads((warm.parent / f"{warm.name}-run" / "vision_warmup.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(report, dict):
        return None
    recall = {k: (report.get(f"tower_retrieval_{k}") or {}).get("recall_at_5") for k in ("before", "after")}
    return {"steps": report.get("steps"), "train_s": report.get("train_s"),
            "stopped_by_time": bool(report.get("stopped_by_time")),
            "recall_at_5_before": recall["before"], "recall_at_5_after": recall["after"]}


def _mean(values: list[Any]) -> float | None:
    vals = [v for v in values if isinstance(v, (int, float))]
    return sum(vals) / len(vals) if len(vals) == len(values) and vals else None


def _seed_key(config: ReproConfig, sft_config: Any, work: Path, seed: int) -> str:
    """What a seed's figures depend on: the recipe's stages and evaluation, the mode, the seed, and the SFT phases'
    and GSPO's configs as they would run now (so an edited recipe file is not mistaken for the finished one;
    their descriptions and options left off aside, :meth:`covip.training.config_io.GroupedConfigMixin.identity`)."""
    from covip.training.sft_config import load_phases

    data = config.identity()
    stages = {k: v for k, v in data["stages"].items() if k != "seeds"}
    phases = [sft_config, *load_phases(sft_config)]
    final = Path(phases[-1].run.output_dir).expanduser().resolve() / "model"
    gspo = _gspo_config(config, work, seed, final).identity() if config.stages.gspo else None
    key = {"stages": stages, "eval": data["eval"], "mode": config.mode, "seed": seed, "cache_dir": config.run.cache_dir,
           "use_cpu": config.run.use_cpu, "sft": [c.identity() for c in phases], "gspo": gspo}
    text = json.dumps(key, sort_keys=True, default=str)
    # the same recipe in another work folder or checkout is the same recipe (seed records travel with the results)
    text = text.replace(str(work), "$WORK").replace(str(Path(__file__).resolve().parents[1]), "$COVIP")
    return hashlib.sha256(text.encode()).hexdigest()


def _finished_seed(path: Path, key: str,
                   stages: tuple[str, ...]) -> tuple[dict[str, Any], dict[str, SampleCounts]] | None:
    """A seed's record (``seed-N/seed.json`` or the results' ``<name>-seeds/seed-N.json``) and its per-stage
    CapEval tallies when it was made by the same recipe (``key``) and holds every stage's tallies, else None
    (the seed is then run again)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not (isinstance(data, dict) and data.get("key") == key and isinstance(data.get("run"), dict)):
        return None
    counts = data.get("counts")
    tallies: dict[str, SampleCounts] = {}
    for stage in stages:
        parsed = _tallies(counts.get(stage)) if isinstance(counts, dict) else None
        if parsed is None:
            return None
        tallies[stage] = parsed
    return data, tallies


def _tallies(value: Any) -> SampleCounts | None:
    """One stage's per-sample CapEval tallies read back from JSON, or None when they are not that shape."""
    if not isinstance(value, dict) or not value:
        return None
    out: SampleCounts = {}
    for sample, tally in value.items():
        if not (isinstance(tally, list) and len(tally) == 4 and all(type(x) is int and x >= 0 for x in tally)):
            return None
        out[str(sample)] = (tally[0], tally[1], tally[2], tally[3])
    return out


def _judged(capeval_dir: Path) -> SampleCounts:
    lines = (capeval_dir / "judgments.jsonl").read_text(encoding="utf-8").splitlines()
    return counts_from_judgments([json.loads(line) for line in lines if line.strip()])


def run_repro(config: ReproConfig | str = "mini", *, quick: bool = False, progress: bool | None = None,
              results_dir: str | Path | None = None, resume: bool = False) -> ReproResult:
    """Run the whole reproduction (see the module doc) and write ``<results>/<name>.json`` and ``.png``.

    ``resume``: reuse what an earlier run of the same recipe finished (a whole seed, from ``seed-N/seed.json``
    under ``run.work_dir`` or its record ``<name>-seeds/seed-N.json`` beside the results; else its finished SFT
    phases under ``run.work_dir``), so a full run can be stopped and continued, here or in another checkout."""
    import torch

    from covip.sdk.progress import progress_bar
    from covip.sdk.prompts import load_pack
    from covip.training.config_io import pack_path
    from covip.training.gspo import _resolve_source, torch_threads
    from covip.training.repro_report import time_capped
    from covip.training.sft import train_sft

    if not isinstance(config, ReproConfig):
        config = load_repro_config(config, quick=quick)
    elif quick and config.mode != "quick":
        config = config.quick_variant()
    started = time.perf_counter()
    work = Path(config.run.work_dir).expanduser().resolve()
    work.mkdir(parents=True, exist_ok=True)
    if results_dir is not None:
        out_dir = Path(results_dir).expanduser()
    elif config.run.results_dir:
        out_dir = Path(config.run.results_dir).expanduser()
    else:  # a quick run never replaces the full run's figures (as `covip bench --quick`)
        out_dir = default_results_dir(work) / ("quick" if config.mode == "quick" else "")
    s, e = config.stages, config.eval
    stages = STAGES if s.gspo else STAGES[:2]
    per_seed_steps = 1 + s.gspo + len(stages) + bool(e.downstream_tasks)
    bar = progress_bar(total=len(s.seeds) * per_seed_steps + bool(e.embedder) + e.laptop_path,
                       desc="covip repro mini", unit="step", enabled=progress)
    laptop: dict[str, Any] | None = None
    runs: list[dict[str, Any]] = []
    counts: dict[str, list[SampleCounts]] = {st: [] for st in stages}
    warm: Path | bool | None = None
    archive = out_dir / f"{config.run.result_name}-seeds"  # each finished seed's record (SEED_FILE's content)
    reused_s = 0.0  # the recorded time of the seeds reused from earlier runs
    warm_reused_s = 0.0  # the recorded time of a vision warm-up an earlier run trained (see below)
    with torch_threads(torch, config.run.torch_threads), bar:
        retrieval = _retrieval(config)
        if e.embedder:
            bar.update(1)
        recipe = _sft_config(config, work, s.seeds[0])
        pack_file = pack_path(recipe.data.prompt_pack, recipe.source) if recipe.data.prompt_pack else None
        for seed in s.seeds:
            seed_dir = work / f"seed-{seed}"
            sft_config = _sft_config(config, work, seed)
            key = _seed_key(config, sft_config, work, seed)
            first_seed = seed == s.seeds[0]
            found, record = None, archive / f"seed-{seed}.json"
            for place in (seed_dir / SEED_FILE, record) if resume else ():
                found = _finished_seed(place, key, stages)
                if found is not None:
                    log.info("seed %d: reusing the finished run recorded in %s", seed, place)
                    break
            if found is not None:
                saved, tallies = found
                for stage in stages:
                    counts[stage].append(tallies[stage])
                if first_seed:
                    laptop = saved.get("laptop")
                runs.append(saved["run"])
                reused_s += float(saved["run"].get("wall_s") or 0.0)
                if place != record:  # a seed of this work folder: its record beside the results too
                    write_json(record, saved)
                bar.update(per_seed_steps + bool(e.laptop_path and first_seed))
                continue
            seed_started = time.perf_counter()
            random_dir = _resolve_source(sft_config.model.name_or_path)[1] or Path(sft_config.model.name_or_path)
            if warm is None:
                warm, warm_reused = _shared_warmup(config, sft_config, work) or (False, False)
                # a warm-up trained by an earlier run counts once, in this run's first trained seed, unless a
                # reused seed record already holds it
                warm_reused_s = float((_warmup_report(warm) or {}).get("train_s") or 0.0) \
                    if warm and warm_reused and not reused_s else 0.0
            if warm:  # every seed's SFT starts from the one warmed-up tower
                sft_config = sft_config.with_overrides({"model.name_or_path": str(warm),
                                                        "vision_warmup.enabled": False})
            log.info("seed %d: SFT into %s", seed, sft_config.run.output_dir)
            sft = train_sft(sft_config, reuse_finished=resume)
            bar.update(1)
            root = work / "world"
            pack = load_pack(pack_file) if pack_file else None  # the SFT stage's wording, for every evaluation
            models = {"random": random_dir, "sft": sft.model_dir}
            first = sft.phases[0] if sft.phases else sft.to_dict()
            run: dict[str, Any] = {"seed": seed, "sft": {
                "steps": sum(p["global_step"] for p in sft.phases) if sft.phases else sft.global_step,
                "train_s": round(sum(p["train_s"] for p in sft.phases), 2) if sft.phases else sft.train_s,
                "stopped_by_time": any(p["stopped_by_time"] for p in sft.phases or [first]),
                "curve": (first.get("evaluation") or {}).get("curve", []),
                "phases": [{**{k: p[k] for k in ("name", "global_step", "train_s", "stopped_by_time")},
                            "reused": bool(p.get("reused"))} for p in sft.phases]}}
            # phases reused from an earlier run (--resume after a recipe change past SFT) count with the time they
            # took then, so a seed's wall time is what the whole seed costs
            reused_sft_s = sum(float(p.get("runtime_s") or 0.0) for p in sft.phases or [sft.to_dict()]
                               if p.get("reused"))
            if reused_sft_s:
                run["sft"]["reused_s"] = round(reused_sft_s, 1)
            if warm:  # which tower the seed started from: steps, seconds, whether its time cap bound it, recall
                run["sft"]["vision_warmup"] = _warmup_report(warm)
            if s.gspo:
                for old in (seed_dir / "gspo").glob("checkpoint-*"):  # an earlier run's, among this run's own
                    shutil.rmtree(old)
                g = train_gspo_stage(_gspo_config(config, work, seed, sft.model_dir))
                models["gspo"] = g["merged_dir"]
                run["gspo"] = {k: v for k, v in g.items() if k != "merged_dir"}
                bar.update(1)
            run["stages"] = {}
            if (seed_dir / "eval").exists():  # an earlier run's answers to other models: evaluated afresh
                shutil.rmtree(seed_dir / "eval")
            for stage in stages:
                out = seed_dir / "eval" / stage
                c = _capeval(Path(models[stage]), root, out / "capeval", config, pack)
                rec, answers, rec_samples = _recognition(sft_config, Path(models[stage]), root,
                                                         e.recognition_samples, pack)
                counts[stage].append(c)
                run["stages"][stage] = {"acc_pos": accuracy(c, "pos"), "acc_neg": accuracy(c, "neg"),
                                        "recognition_f1": rec["f1"], "recognition_accuracy": rec.get("accuracy"),
                                        "recognition_null_f1": rec["permutation"]["mean"],
                                        "recognition_p_value": rec["permutation"]["p_value"],
                                        "recognition_constant_f1": rec["constant"]["f1"], "recognition_n": rec["n"],
                                        "capeval_samples": len(c), "model": str(models[stage])}
                bar.update(1)
            if e.laptop_path and first_seed:  # the first seed's final model (the loop's last answers)
                laptop = _laptop_path(Path(models[stages[-1]]), work / "export", config, sft_config, pack, answers,
                                      rec_samples)
                bar.update(1)
            if e.downstream_tasks:
                final = stages[-1]
                run["downstream"] = {"model": final, **_downstream(Path(models[final]), root, seed_dir / "eval" /
                                                                   "downstream", config, pack, seed)}
                bar.update(1)
            run["wall_s"] = round(time.perf_counter() - seed_started + reused_sft_s + warm_reused_s, 1)
            reused_s += reused_sft_s + warm_reused_s  # the run's wall time counts them too
            warm_reused_s = 0.0
            for warning in time_capped({"runs": [run]}):
                log.warning(warning)
            runs.append(run)
            saved = {"key": key, "run": run, "laptop": laptop if first_seed else None,
                     "counts": {stage: {k: list(v) for k, v in counts[stage][-1].items()} for stage in stages}}
            write_json(seed_dir / SEED_FILE, saved)
            write_json(record, saved)  # beside the results: a later run elsewhere (--resume) reuses the seed
    data = summarize(config, runs, counts, retrieval, wall_s=time.perf_counter() - started + reused_s)
    data["laptop_path"] = laptop
    # the demo gets the first seed whose final model is on this machine (seeds reused from records may not be)
    local = [r for r in runs if Path(r["stages"][stages[-1]]["model"]).is_dir()]
    data["installed"] = _install(config, (local or runs)[0], stages[-1], work / "world", pack_file) if runs else None
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out_dir / f"{config.run.result_name}.json", out_dir / f"{config.run.result_name}.png"
    from covip.training.repro_report import plot_repro, write_result

    write_result(json_path, data)
    plot_repro(data, png_path)
    return ReproResult(json_path, png_path, data)


def _install(config: ReproConfig, run: dict[str, Any], stage: str, world: Path, pack_file: Path | None) -> str | None:
    """A full run's seed's final model (the first seed's, when it was trained here), installed for
    `covip demo --model mini`; the folder, or None."""
    if config.mode != "full" or not config.run.install:
        return None
    from covip.training.mini_install import install_mini

    figures = run["stages"][stage]
    if not Path(figures["model"]).is_dir() or not world.is_dir():  # a seed reused from its record, trained elsewhere
        log.warning("not installing the mini model: %s (seed %d, %s) or its world %s is not on this machine; run "
                    "`covip repro mini --seeds %d` here to train it", figures["model"], run["seed"], stage, world,
                    run["seed"])
        return None
    installed = install_mini(figures["model"], world, pack_file, cache_dir=config.run.cache_dir, source={
        "recipe": f"covip repro mini ({config.name})", "seed": run["seed"], "stage": stage,
        **{k: figures[k] for k in ("acc_pos", "acc_neg", "recognition_f1")}})
    log.info("installed the seed-%d %s model for `covip demo --model mini` in %s", run["seed"], stage,
             installed.folder)
    return str(installed.folder)


def train_gspo_stage(gspo_config: Any) -> dict[str, Any]:
    """Stage 2 from the SFT checkpoint; the merged model and the reward figures the write-up needs."""
    from covip.training.gspo import train_gspo

    result = train_gspo(gspo_config)
    if result.merged_dir is None:
        raise InputError("the GSPO stage wrote no merged model (run.save_merged must stay on for the reproduction)")
    history = result.reward_history
    return {"merged_dir": result.merged_dir, "steps": result.global_step, "runtime_s": result.runtime_s,
            "reward_first": history[0] if history else None, "reward_last": history[-1] if history else None,
            "reward_history": history}


def summarize(config: ReproConfig, runs: list[dict[str, Any]], counts: dict[str, list[SampleCounts]],
              retrieval: dict[str, Any] | None, *, wall_s: float) -> dict[str, Any]:
    """The result document: seed means per stage, paired differences with intervals, targets, per-seed runs."""
    from covip.training.repro_report import run_meta

    n_boot = config.eval.bootstrap
    stages: dict[str, dict[str, Any]] = {}
    intervals: dict[str, dict[str, Any]] = {}
    for stage, runs_counts in counts.items():
        stages[stage] = {key: _mean([r["stages"][stage][key] for r in runs])
                         for key in ("acc_pos", "acc_neg", "recognition_f1", "recognition_null_f1")}
        intervals[stage] = {pol: bootstrap_mean(runs_counts, pol.split("_")[1], n_boot=n_boot)["ci95"]
                            for pol in ("acc_pos", "acc_neg")}
    diff: dict[str, Any] = {}
    if "gspo" in counts:
        diff = {pol: bootstrap_difference(counts["sft"], counts["gspo"], pol.split("_")[1], n_boot=n_boot)
                for pol in ("acc_pos", "acc_neg")}
    sft_diff = {pol: bootstrap_difference(counts["random"], counts["sft"], pol.split("_")[1], n_boot=n_boot)
                for pol in ("acc_pos", "acc_neg")}
    cag: dict[str, float | None] = {}
    for task in config.eval.downstream_tasks:
        cag[task] = _mean([r["downstream"][task]["cag"] - r["downstream"][task]["no_cag"] for r in runs])
    data = {
        "kind": "covip-repro-mini", "mode": config.mode, "recipe": config.name, "training_recipe": config.stages.recipe,
        "seeds": list(config.stages.seeds), "stages": stages, "stages_ci95": intervals,
        "sft_minus_random": sft_diff, "gspo_minus_sft": diff, "cag_minus_direct": cag,
        "cag_model": (runs[0].get("downstream") or {}).get("model") if runs else None,
        "retrieval": retrieval, "wall_s": wall_s,
        "targets": check_targets(stages, diff, cag, [r["stages"]["sft"]["recognition_p_value"] for r in runs]),
        "runs": runs, "config": config.to_dict(),
        "meta": run_meta(quick=config.mode == "quick", elapsed_s=wall_s),
    }
    return data
