"""``hvams bench lifecycle``: a model retrained every day, with and without row policies.

Each setting trains the daily world day by day: day d continues from day d-1's
model (``--init-from``) and is tested on day d+1. The days are interleaved
(day d of every setting before day d+1), so a noisy neighbour touches all
settings alike. Per day and setting: each server's peak RSS, the live rows
per table, the checkpoint's bytes, next-day AUC, GAUC and new-ad AUC, and the
wall time of the day's job.

Two more measurements, for the daily-training targets:

* **continuing costs no speed** (``speed_pairs``): day 1 trained after day 0
  inside one run, against day 1 trained ``--init-from`` a day-0 run, in
  interleaved pairs; the median step time of day 1's steps in each.
* **loading reads at disk speed**: the page cache is dropped (root only), the
  last day's checkpoint is read back file by file (the disk's sequential rate),
  then dropped again and a one-step ``--init-from`` job times its restore step.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import replace
from pathlib import Path

from ..config import TrainConfig
from ..train.checkpoint import latest_complete
from .jobs import save_json, train_job
from .machine import drop_page_cache, label

# name -> config keys of the setting
# (admission on the user table, the one that grows: a sketch per small table would cost more
# than the table)
SETTINGS = {
    "off": {},
    "ttl-7": {"id_ttl_days": 7},
    "ttl-3": {"id_ttl_days": 3},
    "capacity": {},            # max_rows_per_shard: the bench's --capacity
    "min-count-2": {"id_admission_by_table": {"user": 2}},
    "ttl-7+min-count-2": {"id_ttl_days": 7, "id_admission_by_table": {"user": 2}},
}


def setting_config(base: TrainConfig, name: str, capacity: int) -> TrainConfig:
    keys = dict(SETTINGS[name])
    if name == "capacity":
        keys["max_rows_per_shard"] = capacity
    return replace(base, **keys)


def ckpt_bytes(run: Path) -> int:
    d = latest_complete(run)
    return sum(f.stat().st_size for f in d.iterdir() if f.is_file()) if d else 0


def day_config(cfg: TrainConfig, days: list[str], d: int, out: Path, prev: Path | None
               ) -> TrainConfig:
    return replace(cfg, train_days=[days[d]], test_day=days[d + 1], out=str(out),
                   init_from=str(prev) if prev else None, epochs=1, checkpoint_every=0,
                   evaluate=True, eval_every=0, max_steps=None)


def _wall(run_dir: Path, started: float, job: dict) -> float:
    """The day job's wall time, kept beside the run so that a reused run reports its own
    (a reused run from before this file existed reports its training time)."""
    path = run_dir / "bench-wall-s.txt"
    summary_mtime = (run_dir / "summary.json").stat().st_mtime
    if summary_mtime < started:
        if path.exists():
            return float(path.read_text())
        return job["summary"]["elapsed_s"]
    wall = time.time() - started
    path.write_text(f"{wall!r}\n")
    return wall


def _record(job: dict, seconds: float) -> dict:
    s, test = job["summary"], job["metrics"][-1]
    return {"auc": test["auc"], "gauc": test["gauc"], "new_ad_auc": test.get("new_ad_auc"),
            "server_peak_rss_mb": s["peak_rss_mb"]["server"],
            "live_rows": {t: c["live"] for t, c in s["id_rows"].items()},
            "counts": s["id_rows"], "ckpt_bytes": ckpt_bytes(Path(job["out"])),
            "seconds": seconds, "samples_per_s": s["samples_per_s"], "steps": s["steps"],
            "restore_s": s["stage_s"]["server"].get("restore", 0.0)}


def run_lifecycle(base: TrainConfig, ranks: int, days: list[str], settings: list[str],
                  capacity: int, out: Path, timeout: float = 1800, speed_pairs: int = 3,
                  reuse: bool = False) -> dict:
    """The day runs of ``settings``, then the speed and load checks (always run afresh).
    ``reuse`` keeps a finished day run of the same config (an interrupted bench resumes)."""
    runs = {name: [] for name in settings}
    for d in range(len(days) - 1):
        for name in settings:
            run_dir = out / name / days[d]
            prev = out / name / days[d - 1] if d else None
            cfg = day_config(setting_config(base, name, capacity), days, d, run_dir, prev)
            print(f"bench lifecycle: {days[d]} (test {days[d + 1]}), {name} ...", flush=True)
            started = time.time()
            job = train_job(cfg, ranks, timeout, reuse=reuse)
            runs[name].append({"day": days[d], **_record(job, _wall(run_dir, started, job))})
    result = {"machine": label(base.servers, ranks - base.servers), "days": days,
              "settings": settings, "capacity": capacity, "runs": runs,
              "summary": summarize(runs),
              "speed": speed_check(base, ranks, days, out / "speed", timeout, speed_pairs)
              if speed_pairs else None,
              "load": load_check(base, ranks, days, out, runs, capacity, timeout)}
    save_json(out / "lifecycle.json", result)
    return result


def summarize(runs: dict) -> dict:
    """Per setting: AUC over the last week against ``off``, live rows and RSS growth."""
    off = runs.get("off")
    out = {}
    for name, recs in runs.items():
        last = recs[-7:]
        auc = statistics.fmean(r["auc"] for r in last)
        ref = statistics.fmean(r["auc"] for r in off[-7:]) if off else auc
        d10 = recs[min(9, len(recs) - 1)]
        rss10, rss_end = max(d10["server_peak_rss_mb"]), max(recs[-1]["server_peak_rss_mb"])
        rows_end = sum(recs[-1]["live_rows"].values())
        rows_off = sum(off[-1]["live_rows"].values()) if off else rows_end
        out[name] = {"auc_last_week": auc, "auc_cost": ref - auc,
                     "gauc_last_week": statistics.fmean(r["gauc"] for r in last),
                     "live_rows_end": rows_end, "fewer_rows_than_off": 1 - rows_end / rows_off,
                     "rss_day10_mb": rss10, "rss_end_mb": rss_end,
                     "rss_growth_from_day10": rss_end / rss10 - 1,
                     "ckpt_mb_end": recs[-1]["ckpt_bytes"] / 1e6}
    return out


def _day_steps_rate(step_s: list[float], first: int, global_batch: float) -> float:
    steady = step_s[first + 2:] or step_s[first:]
    return global_batch / statistics.median(steady)


def speed_check(base: TrainConfig, ranks: int, days: list[str], out: Path, timeout: float,
                pairs: int) -> dict:
    """Day 1 inside one run over days 0-1 against day 1 continued from a day-0 run (pairs)."""
    inside, cont = [], []
    day0 = train_job(replace(day_config(base, days, 0, out / "day0", None), evaluate=False),
                     ranks, timeout)
    n0 = day0["summary"]["steps"]
    for p in range(pairs):
        print(f"bench lifecycle: speed pair {p + 1}/{pairs} ...", flush=True)
        long = train_job(replace(base, train_days=days[:2], test_day=days[2], evaluate=False,
                                 out=str(out / "long"), epochs=1, checkpoint_every=0),
                         ranks, timeout)["summary"]
        gb = long["samples"] / max(long["steps"], 1)
        inside.append(_day_steps_rate(long["step_s"], n0, gb))
        again = train_job(replace(day_config(base, days, 1, out / "continued", out / "day0"),
                                  evaluate=False), ranks, timeout)["summary"]
        cont.append(_day_steps_rate(again["step_s"], 0, again["samples"] / max(again["steps"], 1)))
    return {"inside_one_run": inside, "init_from": cont,
            "median_ratio": statistics.median(c / i for c, i in zip(cont, inside))}


def load_check(base: TrainConfig, ranks: int, days: list[str], out: Path, runs: dict,
               capacity: int, timeout: float) -> dict:
    """A start from the biggest last checkpoint. From a cold page cache: the disk's
    sequential read rate over its files. Cold again, as a start does it: the checksum check
    (``is_complete``), then the servers' restore of every table (``restore_tables``, one
    server after another in this process, so no other rank competes for the cores). Cold
    again: a one-step ``--init-from`` job, for the start-up beyond loading."""
    from ..embedding.shard import EmbeddingShard
    from ..protocol.channels import id_route
    from ..train.checkpoint import is_complete
    from ..train.shard_files import members as file_members
    from ..train.restore import restore_tables

    name = max(runs, key=lambda n: runs[n][-1]["ckpt_bytes"])
    cfg = setting_config(base, name, capacity)
    src = latest_complete(out / name / runs[name][-1]["day"])
    files = [f for f in src.iterdir() if f.is_file()]
    total = sum(f.stat().st_size for f in files)
    members = {k: m for f in files if f.name.startswith("server-") for k, m in file_members(f).items()}
    tables = sorted({k.split("/")[0] for k in members if k.endswith("/keys")})
    rows = sum(m.shape[0] for k, m in members.items() if k.endswith("/keys"))
    cold = drop_page_cache()
    t0 = time.perf_counter()
    for f in files:
        with open(f, "rb") as fh:
            while fh.read(8 << 20):
                pass
    disk_s = time.perf_counter() - t0
    cold = drop_page_cache() and cold
    t0 = time.perf_counter()
    assert is_complete(src)
    verify_s = time.perf_counter() - t0
    restore_s = 0.0
    for me in range(cfg.servers):
        shards = {t: EmbeddingShard.for_table(cfg, t, members[f"{t}/rows"].shape[1],
                                              members[f"{t}/rows"].dtype, me) for t in tables}
        t0 = time.perf_counter()
        restore_tables(src, shards, {t: id_route(t) for t in tables}, me, cfg.servers)
        restore_s += time.perf_counter() - t0
        assert sum(len(s) for s in shards.values()) > 0
        del shards
    cold = drop_page_cache() and cold
    job_cfg = replace(cfg, max_steps=1, evaluate=False, train_days=[days[-1]],
                      test_day=days[-1], init_from=str(src), out=str(out / "load-check"),
                      checkpoint_every=0)
    t0 = time.perf_counter()
    job = train_job(job_cfg, ranks, timeout)["summary"]
    job_s = time.perf_counter() - t0
    rate = total / disk_s
    load_s = verify_s + restore_s
    return {"setting": name, "checkpoint": str(src), "bytes": total, "rows": rows,
            "cold_cache": cold, "disk_read_mb_s": rate / 1e6,
            "verify_s": verify_s, "verify_vs_disk": (total / verify_s) / rate,
            "restore_s": restore_s, "restore_vs_disk": (total / restore_s) / rate,
            "load_s": load_s, "load_vs_disk": (total / load_s) / rate,
            "load_s_per_100m_rows": load_s / max(rows, 1) * 1e8,
            "job_s": job_s, "job_elapsed_s": job["elapsed_s"],
            "job_restore_s": job["stage_s"]["server"].get("restore", 0.0)}


def format_lifecycle(r: dict) -> str:
    lines = ["| setting | next-day AUC, last 7 days | cost vs off | GAUC | live rows, last day "
             "| fewer than off | server peak RSS day 10 -> last (MB) | growth | checkpoint, "
             "last day (MB) |", "|---" * 9 + "|"]
    for name, s in r["summary"].items():
        lines.append(f"| {name} | {s['auc_last_week']:.4f} | {s['auc_cost']:+.4f} | "
                     f"{s['gauc_last_week']:.4f} | {s['live_rows_end']:,} | "
                     f"{s['fewer_rows_than_off']:.0%} | {s['rss_day10_mb']:.0f} -> "
                     f"{s['rss_end_mb']:.0f} | {s['rss_growth_from_day10']:+.1%} | "
                     f"{s['ckpt_mb_end']:.1f} |")
    sp = r.get("speed")
    if sp:
        lines += ["", f"Continuing costs no speed: day 1 inside one run "
                  f"{', '.join(f'{x:,.0f}' for x in sp['inside_one_run'])} samples/s, "
                  f"continued with --init-from {', '.join(f'{x:,.0f}' for x in sp['init_from'])}"
                  f" samples/s (median ratio {sp['median_ratio']:.3f})."]
    ld = r["load"]
    lines += ["", f"Loading ({ld['setting']}'s last checkpoint: {ld['bytes'] / 1e6:.1f} MB, "
              f"{ld['rows']:,} rows; {'cold' if ld['cold_cache'] else 'warm'} page cache): the "
              f"disk reads {ld['disk_read_mb_s']:,.0f} MB/s. A start checks the checksums in "
              f"{ld['verify_s']:.3f} s ({ld['verify_vs_disk']:.2f}x the disk's rate), then "
              f"restores the rows in {ld['restore_s']:.3f} s ({ld['restore_vs_disk']:.2f}x): "
              f"loading runs at {ld['load_vs_disk']:.2f}x the disk's rate; 100M rows at this "
              f"rate: {ld['load_s_per_100m_rows']:.0f} s. The whole one-step job took "
              f"{ld['job_s']:.1f} s, {ld['job_s'] - ld['load_s']:.1f} s beyond loading (the "
              f"ranks' start-up: interpreters, torch, MPI; its restore stage, beside the "
              f"other ranks' start-up on these cores: {ld['job_restore_s']:.2f} s)."]
    return "\n".join(lines)
