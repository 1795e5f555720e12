"""PNG charts for docs/benchmarks.md (matplotlib, no display needed)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..strategies import Strategy  # noqa: E402


def _save(fig, path: Path, caption: str) -> Path:
    """The command and machine as a caption under the plot; PNG at ``path``."""
    fig.text(0.01, 0.01, caption, fontsize=6, wrap=True)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def speed_chart(result: dict, path: Path, caption: str) -> Path:
    """Grouped bars: samples/s by strategy, one group per backbone variant."""
    variants = list(result["median"])
    cols = list(result["median"][variants[0]])
    fig, ax = plt.subplots(figsize=(8, 4.2))
    width = 0.8 / len(cols)
    for i, c in enumerate(cols):
        xs = [j + i * width for j in range(len(variants))]
        ys = [result["median"][v][c] for v in variants]
        bars = ax.bar(xs, ys, width, label=c)
        ax.bar_label(bars, fmt="%.0f", fontsize=7)
    ax.set_xticks([j + width * (len(cols) - 1) / 2 for j in range(len(variants))],
                  [f"{v} backbone" for v in variants])
    ax.set_ylabel("samples/s (median of rounds)")
    ax.set_title("Training speed by strategy", fontsize=11)
    ax.legend(fontsize=8)
    return _save(fig, path, caption)


def auc_chart(result: dict, path: Path, caption: str) -> Path:
    """Test AUC over training steps, mean over seeds, one line per model."""
    fig, ax = plt.subplots(figsize=(8, 4.6))
    for name, by_seed in result["runs"].items():
        longest = max(len(c["curve"]) for c in by_seed.values())
        curves = [c for c in by_seed.values() if len(c["curve"]) == longest]  # seeds with a curve
        steps = [s for s, _ in curves[0]["curve"]]
        n = min(len(c["curve"]) for c in curves)
        mean = [sum(c["curve"][i][1] for c in curves) / len(curves) for i in range(n)]
        ax.plot(steps[:n], mean, marker="o", markersize=3, label=name)
    oracle = next(iter(result["table"].values()))["oracle_auc"]
    ax.axhline(oracle, color="grey", linestyle="--", linewidth=1, label="oracle")
    ax.set_xlabel("training step")
    ax.set_ylabel("test AUC (mean over the seeds with a curve)")
    ax.set_title("Test AUC over training", fontsize=11)
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path, caption)


def network_chart(result: dict, path: Path, caption: str) -> Path:
    """Slowdown against unlimited links by link rate, one line per strategy and backbone."""
    rates = result["rates"]
    fig, ax = plt.subplots(figsize=(8, 4.4))
    styles = {"frozen": "-", "trainable": "--"}
    colors = {Strategy.STORE_IN_WORKER: "tab:blue", Strategy.STORE_IN_SERVER: "tab:orange",
              Strategy.AMS: "tab:green"}
    for v, by_s in result["table"].items():
        for s, row in by_s.items():
            backbone, wire = result["labels"][v]["backbone"], result["labels"][v]["wire"]
            exact = wire == "fp32"
            ax.plot(rates, [row[x]["slowdown"] for x in rates], marker="o" if exact else "s",
                    color=colors.get(s), linestyle=styles.get(backbone, "-"),
                    label=f"{s}, {backbone} backbone" + ("" if exact else f", {wire} wire"))
    ax.axhline(0.9, color="grey", linestyle=":", linewidth=1, label="AMS target (0.9)")
    ax.set_xlabel("link rate per host (both directions)")
    ax.set_ylabel("samples/s / samples/s with unlimited links")
    ax.set_ylim(0, 1.15)
    ax.set_title("What slower links cost each strategy", fontsize=11)
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path, caption)


def lifecycle_chart(result: dict, path: Path, caption: str) -> Path:
    """Per day and setting: live ID rows, the servers' peak RSS, and next-day AUC against the
    run without row policies (``off``; the AUCs themselves differ by less than a line's
    width)."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
    off = result["runs"].get("off")
    for name, recs in result["runs"].items():
        x = list(range(len(recs)))
        axes[0].plot(x, [sum(r["live_rows"].values()) for r in recs], marker=".", label=name)
        axes[1].plot(x, [max(r["server_peak_rss_mb"]) for r in recs], marker=".", label=name)
        ref = [o["auc"] for o in off] if off else [0.0] * len(recs)
        axes[2].plot(x, [r["auc"] - o for r, o in zip(recs, ref)], marker=".", label=name)
    auc_title = "next-day test AUC minus off's" if off else "next-day test AUC"
    for ax, what in zip(axes, ("live ID rows (all tables, all servers)",
                               "peak RSS of the largest server (MB)", auc_title)):
        ax.set_xlabel("training day")
        ax.set_title(what, fontsize=10)
    axes[0].legend(fontsize=7)
    return _save(fig, path, caption)


def shard_chart(result: dict, path: Path, caption: str) -> Path:
    """Per size: each operation's keys/s as a fraction of its bound, and the dict's lookup."""
    sizes = [s["rows"] for s in result["sizes"]]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for op in ("lookup", "index_insert", "insert", "gather", "update"):
        axes[0].plot(sizes, [s["rates"][op] / 1e6 for s in result["sizes"]], marker="o", label=op)
        axes[1].plot(sizes, [s["rates"][op] / s["bounds"][op]["keys_per_s"]
                             for s in result["sizes"]], marker="o", label=op)
    with_dict = [s for s in result["sizes"] if s.get("dict")]
    axes[0].plot([s["rows"] for s in with_dict], [s["dict"]["lookup"] / 1e6 for s in with_dict],
                 "k--", marker="x", label="dict lookup")
    with_mch = [s for s in result["sizes"] if s.get("mch")]
    axes[0].plot([s["rows"] for s in with_mch], [s["mch"]["lookup"] / 1e6 for s in with_mch],
                 "k:", marker="+", label="TorchRec MCH lookup")
    for ax, what in zip(axes, ("M keys/s (one thread)", "fraction of the memory bound")):
        ax.set_xscale("log")
        ax.set_xlabel("rows in the shard")
        ax.set_title(what, fontsize=10)
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=7)
    return _save(fig, path, caption)


def serve_chart(result: dict, path: Path, caption: str) -> Path:
    """Latency percentiles against the achieved request rate, per share of new images."""
    fig, axes = plt.subplots(1, len(result["series"]), figsize=(5.5 * len(result["series"]), 4.2),
                             squeeze=False)
    for ax, s in zip(axes[0], result["series"]):
        rows = s["rows"]
        for q in ("p50", "p90", "p99"):
            ax.plot([r["achieved"] for r in rows], [r[f"{q}_ms"] for r in rows], marker="o", label=q)
        ax.axhline(result["p99_bound_ms"], color="k", ls=":", lw=1, label="p99 bound")
        ax.set_xlabel("requests/s achieved")
        ax.set_ylabel("latency (ms)")
        ax.set_yscale("log")
        ax.set_title(f"{s['new_images']:.0%} of candidates bring a new image", fontsize=10)
        ax.legend(fontsize=7)
    return _save(fig, path, caption)
