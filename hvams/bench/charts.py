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
