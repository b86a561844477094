"""engines.py's figure: tokens/s per engine against transformers fp32 (with SmolLM2's bandwidth limits), file
sizes and weight bytes per token, and the workers' peak RSS.
"""

from __future__ import annotations

from pathlib import Path

from _engines_measure import BASELINE, mb


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
