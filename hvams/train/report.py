"""What a run prints: progress, the metrics table, the bytes table."""
from __future__ import annotations

import sys
import time


class Progress:
    """Samples/s on the first server (it sees every step's global batch size)."""

    def __init__(self, total: int, enabled: bool, log_every: int):
        self.total, self.log_every = total, log_every
        self.start = time.perf_counter()
        self.samples = self.steps = 0
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="sample", desc="train", smoothing=0.1)

    def update(self, step: int, n: int) -> None:
        self.samples += n
        self.steps += 1
        if self.bar is not None:
            self.bar.update(n)
        elif self.log_every and self.steps % self.log_every == 0:
            rate = self.samples / (time.perf_counter() - self.start)
            print(f"[train] step {step + 1}: {self.samples}/{self.total} samples, "
                  f"{rate:.0f} samples/s", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _f(x) -> str:
    return "   -  " if x is None or x != x else f"{x:.4f}"


def format_metrics_table(records: list[dict], name: str = "") -> str:
    head = f"{'model':<14}{'step':>8}{'AUC':>9}{'GAUC':>9}{'logloss':>9}{'newAUC':>9}{'oracle':>9}"
    lines = [head, "-" * len(head)]
    for r in records:
        lines.append(f"{r.get('model', name):<14}{r.get('step', 0):>8}{_f(r.get('auc')):>9}"
                     f"{_f(r.get('gauc')):>9}{_f(r.get('logloss')):>9}{_f(r.get('new_ad_auc')):>9}"
                     f"{_f(r.get('oracle_auc')):>9}")
    return "\n".join(lines)


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000:
            return f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"


def format_bytes_table(summary: dict) -> str:
    steps = max(summary["steps"], 1)
    lines = [f"run: {summary['model']} ({summary['strategy']}), {summary['servers']} server(s) + "
             f"{summary['workers']} worker(s): {summary['steps']} steps, {summary['samples']} samples "
             f"in {summary['elapsed_s']:.1f} s ({summary['samples_per_s']:.0f} samples/s)",
             f"{'bytes sent':<20}{'per batch':>14}{'total':>14}"]
    total = 0
    for cat in sorted(summary["bytes"]):
        v = summary["bytes"][cat]
        total += v
        lines.append(f"{cat:<20}{human(v / steps):>14}{human(v):>14}")
    lines.append(f"{'all':<20}{human(total / steps):>14}{human(total):>14}")
    rows = summary.get("rows")
    if rows:
        ahead, resumed = rows.get("not_trained", 0), rows.get("resumed", 0)
        lines.append(f"rows: read {rows['read']} = trained {rows['trained']} + rejected "
                     f"{rows['rejected']} {rows['rejected_by_reason'] or ''}".rstrip()
                     + (f" + resumed past {resumed} (trained before the restart)"
                        if resumed else "")
                     + (f" + read ahead, not trained {ahead} (the run stopped first)"
                        if ahead else ""))
    img = summary.get("images")
    if img:
        lines.append(f"images: requested {img['requested']} = served {img['served']} + missing "
                     f"{img['missing']} + corrupt {img['corrupt']}; computed once per server and step: "
                     f"{img['unique_per_server_total']} of {img['requested_by_workers_total']} "
                     f"worker requests; pixel cache hit rate {img['pixel_cache_hit_rate']:.2f}"
                     + (f", feature cache {img['feature_cache_hit_rate']:.2f}"
                        if img.get("feature_cache_hit_rate") is not None else ""))
    return "\n".join(lines)
