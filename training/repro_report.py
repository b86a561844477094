"""The miniature reproduction's outputs: the result JSON (atomic) and its PNG (matplotlib, Agg).

The RESULTS.md section is rendered from the JSON by ``covip bench --report-only`` (``covip.sdk.bench``), as
every other benchmark result is.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["run_meta", "write_result", "plot_repro", "time_capped"]

STAGE_LABELS = {"random": "random init", "sft": "SFT", "gspo": "SFT+GSPO"}


def run_meta(*, quick: bool, elapsed_s: float) -> dict[str, Any]:
    """Machine, versions, date and git commit of the run, in the keys RESULTS.md's provenance line reads."""
    import subprocess

    from covip.training.eval.common import run_meta as machine

    meta = machine()
    try:
        meta["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                            cwd=Path(__file__).resolve().parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        meta["git_commit"] = None
    meta.update(args={"quick": quick}, elapsed_s=round(elapsed_s, 1))
    return meta


def _clean(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, float):
        return None if math.isnan(obj) or math.isinf(obj) else round(obj, 6)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_result(path: Path, data: Mapping[str, Any]) -> Path:
    """The result as indented JSON (NaN as null, floats to 6 places), written atomically."""
    from covip.training.eval.common import write_json

    return write_json(path, _clean(data))


def plot_repro(data: Mapping[str, Any], path: Path) -> None:
    """Two panels: Acc+, Acc- and recognition F1 per stage (seed means, 95% intervals), and the final model's
    downstream scores with and without CAG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = list(data["stages"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    metrics = [("acc_pos", "Acc+"), ("acc_neg", "Acc-"), ("recognition_f1", "recognition F1")]
    width = 0.8 / len(stages)
    for i, stage in enumerate(stages):
        vals = [data["stages"][stage].get(k) or 0.0 for k, _ in metrics]
        errs: list[list[float]] = [[], []]
        for k, _ in metrics:
            ci = (data.get("stages_ci95", {}).get(stage) or {}).get(k)
            mean = data["stages"][stage].get(k) or 0.0
            errs[0].append(max(0.0, mean - ci[0]) if ci else 0.0)
            errs[1].append(max(0.0, ci[1] - mean) if ci else 0.0)
        xs = [j + (i - (len(stages) - 1) / 2) * width for j in range(len(metrics))]
        left.bar(xs, vals, width, yerr=errs, capsize=3, label=STAGE_LABELS.get(stage, stage))
        null = data["stages"][stage].get("recognition_null_f1")
        if isinstance(null, (int, float)):  # chance for this model's answers: the permutation null
            left.plot([xs[2] - width / 2, xs[2] + width / 2], [null, null], color="black", linewidth=2,
                      label="F1 permutation null" if i == 0 else None)
    left.set_xticks(range(len(metrics)), [label for _, label in metrics])
    left.set_ylim(0, 1.05)
    left.set_ylabel("held-out score (seed mean)")
    left.legend(fontsize=8)
    n_seeds = len(data.get("seeds") or [])
    left.set_title(f"Held-out concepts, {n_seeds} seed{'s' * (n_seeds != 1)} ({data.get('mode')} mode)", fontsize=10)
    tasks = [t for t in (data.get("cag_minus_direct") or {})]
    runs = data.get("runs") or []
    if tasks and runs:
        for i, (mode, label) in enumerate((("cag", "with CAG"), ("no_cag", "direct"))):
            vals = []
            for t in tasks:
                xs = [r["downstream"][t][mode] for r in runs if r.get("downstream")]
                vals.append(sum(xs) / len(xs) if xs else 0.0)
            right.bar([j + (i - 0.5) * 0.4 for j in range(len(tasks))], vals, 0.4, label=label)
        right.set_xticks(range(len(tasks)), [t.upper() for t in tasks])
        right.set_ylim(0, 1.05)
        right.legend(fontsize=8)
        right.set_title(f"Downstream, {STAGE_LABELS.get(str(data.get('cag_model')), '')} model", fontsize=10)
    else:
        right.axis("off")
        right.text(0.5, 0.5, "no downstream tasks in this run", ha="center", va="center")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def time_capped(data: dict[str, Any]) -> list[str]:
    """A line for every SFT phase, and every seed's vision warm-up, that a time cap stopped: its model is not the
    recipe's (fewer steps than the recipe trains, so the figures depend on the machine's speed)."""
    out = []
    for run in data.get("runs") or []:
        sft = run.get("sft") or {}
        one = {"name": "(single)", "global_step": sft.get("steps"), "stopped_by_time": sft.get("stopped_by_time")}
        capped = [(f"SFT phase {p.get('name')}", p.get("global_step"), "trainer.max_time_s")
                  for p in sft.get("phases") or [one] if p.get("stopped_by_time")]
        warm = sft.get("vision_warmup") or {}
        if warm.get("stopped_by_time"):
            capped.append(("the vision warm-up", warm.get("steps"), "vision_warmup.max_time_s"))
        out += [f"seed {run.get('seed')}: {what} stopped by its time cap at step {step}, short of the recipe's steps "
                f"(a slower or loaded machine); its figures are not the recipe's: raise {cap} and run the seed again"
                for what, step, cap in capped]
    return out
