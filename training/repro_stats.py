"""Statistics of the miniature reproduction: seed means with a two-level bootstrap, and the issue's targets.

Every 95% interval resamples the seeds first and then, within each drawn seed, the held-out samples (a
hierarchical bootstrap), so it carries both the training noise between seeds and the sampling noise of a
finite test set; with one seed it is a plain bootstrap over the samples. Accuracies are micro-averages over
questions, as CapEval-QAs reports them (CoViP, "CapEval-QAs evaluation").
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["SampleCounts", "counts_from_judgments", "accuracy", "bootstrap_mean", "bootstrap_difference",
           "check_targets"]

SampleCounts = dict[str, tuple[int, int, int, int]]
"""Per held-out sample id: (positive questions right, positive questions, negative right, negative questions)."""


def counts_from_judgments(records: Sequence[Mapping[str, Any]]) -> SampleCounts:
    """Per-sample question counts from CapEval judgments (the ``judgments.jsonl`` rows: ``sample_id``,
    ``polarity`` and ``right``)."""
    out: dict[str, list[int]] = {}
    for r in records:
        c = out.setdefault(str(r["sample_id"]), [0, 0, 0, 0])
        right = bool(r["right"])
        if r["polarity"] == "pos":
            c[0] += right
            c[1] += 1
        else:
            c[2] += right
            c[3] += 1
    return {k: (v[0], v[1], v[2], v[3]) for k, v in out.items()}


def accuracy(counts: SampleCounts, polarity: str) -> float | None:
    """Acc+ (``pos``) or Acc- (``neg``) of one run: right questions / questions (None without questions)."""
    i = 0 if polarity == "pos" else 2
    n = sum(c[i + 1] for c in counts.values())
    return sum(c[i] for c in counts.values()) / n if n else None


def _draws(n_seeds: int, n_boot: int, rng: Any) -> Any:
    import numpy as np

    if n_seeds == 1:
        return np.zeros((n_boot, 1), dtype=int)
    return rng.integers(0, n_seeds, size=(n_boot, n_seeds))


def _resampled_ratio(num: Any, den: Any, n_boot: int, slots: int, rng: Any) -> Any:
    """(n_boot, slots) ratios sum(num[idx]) / sum(den[idx]) over bootstrap resamples of the samples."""
    import numpy as np

    idx = rng.integers(0, len(num), size=(n_boot, slots, len(num)))
    d = den[idx].sum(-1)
    return np.where(d > 0, num[idx].sum(-1) / np.maximum(d, 1), np.nan)


def _interval(values: Any) -> list[float] | None:
    import numpy as np

    values = values[~np.isnan(values)]
    if not len(values):
        return None
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


def bootstrap_mean(runs: Sequence[SampleCounts], polarity: str, *, n_boot: int = 2000,
                   seed: int = 0) -> dict[str, Any]:
    """The seed mean of Acc+ or Acc- over ``runs`` (one per seed) with its 95% interval."""
    import numpy as np

    rng = np.random.default_rng(seed)
    i = 0 if polarity == "pos" else 2
    per_seed = [accuracy(r, polarity) for r in runs]
    if any(v is None for v in per_seed):
        return {"mean": None, "ci95": None, "per_seed": per_seed}
    slots = len(runs)
    boots = []
    for r in runs:
        arr = np.array(list(r.values()), dtype=float)
        boots.append(_resampled_ratio(arr[:, i], arr[:, i + 1], n_boot, slots, rng))
    return {"mean": float(np.mean(per_seed)), "ci95": _combine(boots, n_boot, rng), "per_seed": per_seed}


def _combine(boots: Sequence[Any], n_boot: int, rng: Any) -> list[float] | None:
    """Seeds drawn with replacement per resample; each drawn slot takes that seed's own sample resample."""
    import numpy as np

    stack = np.stack(boots)  # (seeds, n_boot, slots)
    choice = _draws(len(boots), n_boot, rng)  # (n_boot, slots)
    b = np.arange(n_boot)[:, None]
    j = np.arange(choice.shape[1])[None, :]
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample without questions of this polarity
        return _interval(np.nanmean(stack[choice, b, j], axis=1))


def bootstrap_difference(before: Sequence[SampleCounts], after: Sequence[SampleCounts], polarity: str, *,
                         n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """``after - before`` of Acc+ or Acc-, paired by seed and by held-out sample, with its 95% interval.

    Both stages of one seed answered the same samples, so a resample keeps each sample's two verdicts
    together: the interval is about the change, not about two independent noisy accuracies.
    """
    import numpy as np

    if len(before) != len(after):
        raise ValueError("before and after need one run per seed each")
    rng = np.random.default_rng(seed)
    i = 0 if polarity == "pos" else 2
    per_seed: list[float | None] = []
    boots = []
    for a, b in zip(before, after):
        ids = sorted(set(a) & set(b))
        if not ids:
            raise ValueError("the two stages share no held-out sample")
        arr_a = np.array([a[k] for k in ids], dtype=float)
        arr_b = np.array([b[k] for k in ids], dtype=float)
        n = arr_a[:, i + 1]
        if n.sum() == 0:
            per_seed.append(None)
            continue
        per_seed.append(float((arr_b[:, i].sum() - arr_a[:, i].sum()) / n.sum()))
        boots.append(_resampled_ratio(arr_b[:, i] - arr_a[:, i], n, n_boot, len(before), rng))
    if not boots or any(v is None for v in per_seed):
        return {"mean": None, "ci95": None, "per_seed": per_seed}
    return {"mean": float(np.mean([v for v in per_seed if v is not None])), "ci95": _combine(boots, n_boot, rng),
            "per_seed": per_seed}


def check_targets(stages: Mapping[str, Mapping[str, Any]], gspo_minus_sft: Mapping[str, Mapping[str, Any]],
                  cag_minus_direct: Mapping[str, float | None],
                  sft_recognition_p: Sequence[float | None] = ()) -> dict[str, dict[str, Any]]:
    """The full mode's targets (issue "Miniature CoViP"), each with the figures it was judged on and
    ``met`` (None when a figure is missing).

    ``sft_recognition_beats_chance`` guards the first target: a random initialization scores Acc+ 0, so any
    caption that states a fact meets "3x" without recognizing anyone; recognition F1 above its permutation
    null (p < 0.05 in every seed) is the evidence that the model tells the concepts apart.
    """

    def both(*xs: Any) -> bool:
        return all(isinstance(x, (int, float)) for x in xs)

    rnd, sft = stages.get("random", {}), stages.get("sft", {})
    out: dict[str, dict[str, Any]] = {}
    r, s = rnd.get("acc_pos"), sft.get("acc_pos")
    out["sft_acc_pos_3x_random"] = {"random": r, "sft": s, "met": (s >= 3 * r and s > 0) if both(r, s) else None}
    ps = list(sft_recognition_p)
    out["sft_recognition_beats_chance"] = {
        "f1": sft.get("recognition_f1"), "null_f1": sft.get("recognition_null_f1"), "p_values": ps,
        "met": all(isinstance(p, (int, float)) and p < 0.05 for p in ps) if ps else None}
    dpos, dneg = gspo_minus_sft.get("acc_pos", {}), gspo_minus_sft.get("acc_neg", {})
    lo = (dpos.get("ci95") or [None])[0]
    m, n = dpos.get("mean"), dneg.get("mean")
    out["gspo_acc_pos_plus_0.05"] = {"difference": m, "ci95_low": lo,
                                     "met": (m >= 0.05 and lo > 0) if both(m, lo) else None}
    out["gspo_acc_neg_within_0.01"] = {"difference": n, "met": (n >= -0.01) if both(n) else None}
    gains = {k: v for k, v in cag_minus_direct.items() if isinstance(v, (int, float))}
    out["cag_beats_direct_once"] = {"differences": dict(cag_minus_direct),
                                    "met": any(v > 0 for v in gains.values()) if gains else None}
    return out
