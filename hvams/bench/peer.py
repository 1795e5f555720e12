"""``hvams bench peer``: hvams idonly against the same model on TorchRec, side by side.

Four contenders train the same ID-only model on the same batches at the same
global batch (4 x ``batch_size``): hvams with 2 servers + 4 workers and with
2 + 2 (each worker then reads two streams' worth, ``2 x batch_size``),
TorchRec's DMP with 4 ranks over gloo (``torchrun``), and TorchRec in one
process with all cores. Round r runs all four with seed ``seeds[r]``, so a
noisy neighbour slows every contender alike and the quality comparison gets
one pair per seed. A rate is the global batch over the median step time after
``warmup`` steps (step ends on worker / rank 0, reading included).
"""
from __future__ import annotations

import os
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from ..config import TrainConfig
from ..data.schema import Schema
from .jobs import run_logged, save_json, train_job
from .machine import label
from .speed import steady_rate

STREAMS = 4  # hvams workers of the reference layout: every contender reads their batches


@dataclass(frozen=True)
class Contender:
    name: str
    system: str          # hvams | torchrec
    ranks: int
    servers: int = 0

    @property
    def batch_per_rank(self) -> int:
        """hvams: a worker's batch in per-stream batches (the global batch stays 4 of them)."""
        return STREAMS // (self.ranks - self.servers)


CONTENDERS = (Contender("hvams 2+4", "hvams", 6, 2), Contender("hvams 2+2", "hvams", 4, 2),
              Contender("torchrec 4 ranks", "torchrec", 4), Contender("torchrec 1 process", "torchrec", 1))
REFERENCE = "torchrec 4 ranks"


def _hvams_run(cfg: TrainConfig, c: Contender, timeout: float) -> dict:
    cfg = replace(cfg, servers=c.servers, batch_size=cfg.batch_size * c.batch_per_rank)
    res = train_job(cfg, c.ranks, timeout)
    s = res["summary"]
    evals = [m for m in res["metrics"] if "auc" in m]
    steps = max(s["steps"], 1)
    return {"step_s": s["step_s"], "samples": s["samples"], "steps": s["steps"],
            "metrics": evals[-1] if evals else None,
            "peak_rss_mb": s["peak_rss_mb"]["server"] + s["peak_rss_mb"]["worker"],
            "peak_rss_by_role": s["peak_rss_mb"],
            "stage_ms_per_step": {role: {k: 1000 * t / steps for k, t in st.items()}
                                  for role, st in s["stage_s"].items()},
            "bytes_per_step": s["bytes_per_step"]}


def torchrec_command(c: Contender, cfg_path: Path, vocab: Path, profile: str | None) -> list[str]:
    args = ["-m", "hvams.peer.train", "--config", str(cfg_path), "--vocab", str(vocab),
            "--streams", str(STREAMS)]
    if profile:
        args += ["--profile", profile]
    if c.ranks == 1:
        return [sys.executable, *args, "--threads", str(os.cpu_count() or 1)]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc-per-node", str(c.ranks), *args]


def _torchrec_run(cfg: TrainConfig, c: Contender, vocab: Path, timeout: float,
                  profile: str | None) -> dict:
    import json

    out = Path(cfg.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    cfg.save(out / "config.yaml")
    env = {**os.environ, "OMP_NUM_THREADS": "1" if c.ranks > 1 else str(os.cpu_count() or 1)}
    run_logged(torchrec_command(c, out / "config.yaml", vocab, profile), out, timeout,
               "the TorchRec peer", env)
    s = json.loads((out / "peer-summary.json").read_text())
    steps = max(s["steps"], 1)
    return {"step_s": s["step_s"], "samples": s["samples"], "steps": s["steps"],
            "metrics": s["metrics"], "peak_rss_mb": s["peak_rss_mb"], "plan": s["plan"],
            "losses": s["losses"],
            "stage_ms_per_step": {"rank": {k: 1000 * t / steps for k, t in s["stage_s"].items()}}}


def prepare_vocab(cfg: TrainConfig, out: Path) -> tuple[Path, float]:
    """The TorchRec tables' id -> row map, built once per bench; (its path, seconds)."""
    from ..peer.vocab import run_vocab, save_vocab

    t0 = time.perf_counter()
    path = out / "vocab.npz"
    out.mkdir(parents=True, exist_ok=True)
    save_vocab(path, run_vocab(cfg, Schema.load(cfg.data)))
    return path, time.perf_counter() - t0


def run_peer(base: TrainConfig, seeds: list[int], warmup: int, out: Path, timeout: float = 1800,
             contenders=CONTENDERS, profile: str | None = None) -> dict:
    """Interleaved rounds (one per seed) of every contender; rates, quality, memory."""
    base = replace(base, model="idonly", evaluate=True, checkpoint_every=0, eval_every=0)
    vocab, vocab_s = prepare_vocab(base, out)
    runs: dict[str, list[dict]] = {c.name: [] for c in contenders}
    global_batch = STREAMS * base.batch_size
    for r, seed in enumerate(seeds):
        for c in contenders:
            print(f"bench peer: round {r + 1}/{len(seeds)} (seed {seed}), {c.name} ...", flush=True)
            cfg = replace(base, seed=seed, out=str(out / f"{c.name.replace(' ', '-')}-seed{seed}"))
            last = r == len(seeds) - 1
            rec = (_hvams_run(cfg, c, timeout) if c.system == "hvams" else
                   _torchrec_run(cfg, c, vocab, timeout, profile if last else None))
            rec["seed"] = seed
            rec["rate"] = steady_rate(rec["step_s"], global_batch, warmup)
            runs[c.name].append(rec)
    result = {"machine": label(2, 4).split(";")[0], "data": base.data,
              "train_days": base.train_days, "global_batch": global_batch,
              "batch_size_per_stream": base.batch_size, "seeds": seeds, "warmup": warmup,
              "vocab_s": vocab_s, "runs": runs, "summary": {}}
    for name, recs in runs.items():
        ms = [x["metrics"] or {} for x in recs]
        result["summary"][name] = {
            "ranks": next(c.ranks for c in contenders if c.name == name),
            "rate": statistics.median(x["rate"] for x in recs),
            "rates": [x["rate"] for x in recs],
            "auc": [m.get("auc") for m in ms], "gauc": [m.get("gauc") for m in ms],
            "logloss": [m.get("logloss") for m in ms],
            "peak_rss_mb": max(max(x["peak_rss_mb"]) for x in recs),
            "stage_ms_per_step": recs[-1]["stage_ms_per_step"]}
    if REFERENCE in result["summary"]:
        ref = result["summary"][REFERENCE]
        for name, s in result["summary"].items():
            s["rate_vs_reference"] = s["rate"] / ref["rate"]
            s["auc_diff_vs_reference"] = [a - b for a, b in zip(s["auc"], ref["auc"])]
    save_json(out / "peer.json", result)
    return result


def _mean_std(xs) -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    if len(xs) == 1:
        return f"{xs[0]:.4f}"
    return f"{statistics.mean(xs):.4f} ± {statistics.stdev(xs):.4f}"


def format_peer(r: dict) -> str:
    lines = [f"{r['machine']}; data {r['data']} (train days {r['train_days'] or 'all'}), global batch "
             f"{r['global_batch']}, seeds {r['seeds']} (one round each, interleaved)", "",
             "| contender | processes | samples/s (median) | vs TorchRec 4 ranks | test AUC | GAUC "
             "| logloss | peak RSS per process (MB) |", "|---|---|---|---|---|---|---|---|"]
    for name, s in r["summary"].items():
        lines.append(f"| {name} | {s['ranks']} | {s['rate']:,.0f} | {s.get('rate_vs_reference', 1):.2f}x "
                     f"| {_mean_std(s['auc'])} | {_mean_std(s['gauc'])} | {_mean_std(s['logloss'])} "
                     f"| {s['peak_rss_mb']:,.0f} |")
    if REFERENCE in r["summary"]:
        lines += ["", "AUC minus TorchRec 4 ranks' AUC, per seed:", ""]
        for name, s in r["summary"].items():
            if name != REFERENCE:
                lines.append(f"- {name}: " + ", ".join(f"{d:+.5f}" for d in s["auc_diff_vs_reference"]))
    lines += ["", f"TorchRec's id -> row vocabulary: built once in {r['vocab_s']:.1f} s (not in the rates).",
              "", "Milliseconds per step by stage (last round; mean over the ranks of each role):", ""]
    for name, s in r["summary"].items():
        for role, st in s["stage_ms_per_step"].items():
            lines.append(f"- {name} / {role}: " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(st.items())))
    return "\n".join(lines)
