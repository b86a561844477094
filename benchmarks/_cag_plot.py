"""cag_latency.py's figure: per engine, the wall time of every mode stacked by pass and phase, and the tokens each
pass prefilled (image tokens hatched, KV-cache reuse dashed).
"""

from __future__ import annotations

from pathlib import Path

from _cag_measure import ENGINE_LABELS, MODES, TARGET_WARM_RATIO

SHORT = {"direct": "direct", "cag_cold": "CAG cold", "cag_cold_no_kv": "CAG cold\nno KV reuse",
         "cag_warm": "CAG warm\n(KV snapshot)", "cag_warm_no_snapshot": "CAG warm\nno snapshot",
         "cag_cold_paper": "CAG cold\npaper layout", "cag_warm_paper": "CAG warm\npaper layout"}


def _passes_s(ms: dict) -> float:
    return sum((ms.get(p) or {}).get(f"{ph}_s", 0.0) for p in ("caption", "answer") for ph in ("prefill", "decode"))


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    engines = [e for e in ("llamacpp", "transformers") if e in results["engines"]]
    fig, axes = plt.subplots(2, len(engines), figsize=(8 * len(engines), 11), squeeze=False)
    seg_colors = {"caption prefill": "#9ecae1", "caption decode": "#3182bd", "answer prefill": "#fdae6b",
                  "answer decode": "#e6550d", "other (search, photos, cache)": "#bdbdbd"}
    for col, name in enumerate(engines):
        res = results["engines"][name]
        s = res["summary"]
        modes = [m for m in MODES if m in s]
        x = list(range(len(modes)))
        # --- top: wall time per mode, stacked by pass and phase
        ax = axes[0, col]
        bottoms = [0.0] * len(modes)
        for seg, color in seg_colors.items():
            p, _, ph = seg.partition(" ")
            vals = [max(0.0, s[m]["wall_s"] - _passes_s(s[m])) if p == "other" else (s[m].get(p) or {}).get(f"{ph}_s", 0.0)
                    for m in modes]
            ax.bar(x, vals, 0.6, bottom=bottoms, color=color, edgecolor="white", lw=0.5)
            bottoms = [b + v for b, v in zip(bottoms, vals)]
        direct = s["direct"]["wall_s"]
        for i, m in enumerate(modes):
            ms = s[m]
            ax.errorbar(i, ms["wall_s"], yerr=[[ms["wall_s"] - ms["wall_s_p25"]], [ms["wall_s_p75"] - ms["wall_s"]]],
                        color="k", capsize=3, lw=1)
            label = f"{ms['wall_s'] * 1000:.0f} ms" if ms["wall_s"] < 1 else f"{ms['wall_s']:.2f} s"
            ax.text(i, max(bottoms[i], ms["wall_s_p75"]) * 1.02, f"{label}\n{ms['wall_s'] / direct:.2f}x direct",
                    ha="center", va="bottom", fontsize=8)
        ax.axhline(direct * TARGET_WARM_RATIO, color="k", ls="--", lw=1)
        ax.set_xticks(x, [SHORT[m] for m in modes], fontsize=8)
        ax.set_ylim(0, max(max(bottoms), max(s[m]["wall_s_p75"] for m in modes)) * 1.45)
        ax.set_ylabel("wall time per ask() (s), median")
        ax.set_title(f"{ENGINE_LABELS[name]}\nwall time per mode (median of {s['direct']['n']} runs, "
                     "p25-p75 whiskers)", fontsize=9)
        if col == 0:
            from matplotlib.lines import Line2D

            ax.legend([*(Patch(color=c) for c in seg_colors.values()), Line2D([], [], color="k", ls="--", lw=1)],
                      [*seg_colors, f"{TARGET_WARM_RATIO}x direct (target for CAG warm)"], fontsize=7,
                      loc="upper center", ncol=3)
        # --- bottom: tokens prefilled per mode (by pass, image vs text), cached tokens hatched
        ax = axes[1, col]
        w = 0.36
        for i, m in enumerate(modes):
            ms = s[m]
            for p, xo in (("caption", -w / 2), ("answer", w / 2)):
                ps = ms.get(p)
                if not ps:
                    continue
                img = ps["image_tokens_prefilled"]
                txt = ps["prefill_tokens"] - img
                color = seg_colors[f"{p} prefill"]
                ax.bar(i + xo, img, w, color=color, edgecolor="k", lw=0.5, hatch="xx")
                ax.bar(i + xo, txt, w, bottom=img, color=color, edgecolor="k", lw=0.5)
                ax.bar(i + xo, ps["cached_tokens"], w, bottom=img + txt, color="none", edgecolor="gray",
                       lw=0.8, ls="--")
                ax.text(i + xo, img + txt, f"{ps['prefill_tokens']:.0f}", ha="center", va="bottom", fontsize=7)
        ax.set_xticks(x, [f"{SHORT[m]}\n[answer pass: {s[m]['answer']['image_tokens_prefilled']:.0f}\nimage tokens prefilled]"
                          for m in modes], fontsize=7.5)
        ax.set_ylabel("prompt tokens per pass (median)")
        top = max(max((ms.get(p) or {}).get("prompt_tokens_total", 0) for p in ("caption", "answer"))
                  for ms in s.values())
        ax.set_ylim(0, top * 1.4)
        ax.set_title("tokens prefilled per pass (left bar: caption pass, right bar: answer pass)", fontsize=9)
        if col == 0:
            ax.legend([Patch(facecolor=seg_colors["caption prefill"], edgecolor="k"),
                       Patch(facecolor=seg_colors["answer prefill"], edgecolor="k"),
                       Patch(facecolor="white", edgecolor="k", hatch="xx"),
                       Patch(facecolor="none", edgecolor="gray", ls="--")],
                      ["caption pass: prefilled", "answer pass: prefilled", "of which image tokens",
                       "reused from the KV cache (not prefilled)"], fontsize=7, loc="upper center", ncol=2)
    meta = results["meta"]
    fig.suptitle(f"CAG latency: direct vs CAG cold / warm on the same engine and photos (k={meta['args']['k']} "
                 f"context photos + 1 query, {meta['args']['size']} px; caption {meta['args']['caption_tokens']} / "
                 f"answer {meta['args']['answer_tokens']} new tokens, greedy; random-weight tiny model)\n"
                 f"shared 2-core machine, load average {meta['loadavg_at_start']} at start - "
                 f"{meta.get('loadavg_at_end')} at end", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)
