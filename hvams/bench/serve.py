"""``hvams bench serve``: ``hvams serve`` under load from ``wrk`` at fixed request rates.

Requests are built from a day of the world the export was trained on: K candidates (the
day's ads) for one user with B behaviors each; with ``new_images`` > 0 that share of the
candidates brings the bytes of an image the export does not know (a store image under a
fresh key, so every one is embedded on arrival). A few hundred bodies are written to a file
that a ``wrk`` Lua script walks through, one body per request; the new images' keys are
placeholders the script fills from a counter, so no key comes twice in a bench.

``wrk`` (Debian's, 4.1) keeps a connection busy until it answers; the script paces each of
its ``connections`` with a random pause after every answer (exponential, so that arrivals
over all connections come close to a Poisson stream, not in bursts of one per connection),
whose mean is the period each connection must keep less the median latency a short
calibration run measured. Latency percentiles are ``wrk``'s, per request; the rate reported
is the one achieved. Past saturation the pauses shrink to nothing and the connections wait
on each other, so latencies there are a closed loop's (they understate an open loop's). A
rate counts as sustained when it reached 95% of the target with no error and a p99 within
the bound.
"""
from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .jobs import BenchError

LUA = r"""
local bodies, i, n = {}, 0, 0
local delay_ms = tonumber(os.getenv("HVAMS_DELAY_MS"))
local key = tonumber(os.getenv("HVAMS_FIRST_KEY"))
local function fresh() key = key + 1; return string.format("%.0f", key) end
function init(args)
  local f = assert(io.open(os.getenv("HVAMS_BODIES"), "r"))
  for line in f:lines() do n = n + 1; bodies[n] = line end
  f:close()
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end
function request()
  i = i % n + 1
  return wrk.format(nil, "/v1/score", nil, (bodies[i]:gsub("__NEWKEY__", fresh)))
end
math.randomseed(tonumber(os.getenv("HVAMS_FIRST_KEY")) % 2147483647)
function delay() return -math.log(1 - math.random()) * delay_ms end
function done(summary, latency, requests)
  local out = {requests = summary.requests, duration_us = summary.duration,
               errors = summary.errors.connect + summary.errors.read + summary.errors.write
                        + summary.errors.timeout + summary.errors.status,
               p50 = latency:percentile(50), p90 = latency:percentile(90),
               p99 = latency:percentile(99), mean = latency.mean, max = latency.max}
  local parts = {}
  for k, v in pairs(out) do parts[#parts + 1] = string.format('"%s": %s', k, v) end
  io.stderr:write("HVAMS_RESULT {" .. table.concat(parts, ", ") .. "}\n")
end
"""


def free_port() -> int:
    """A local TCP port free now (the caller binds it soon after)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


NEW_KEY = "__NEWKEY__"   # in a body: a fresh image key, filled in by the Lua script
FIRST_NEW_KEY = 10 ** 12


def build_bodies(export: Path, data_day: Path, store_dir: Path | None, count: int,
                 candidates: int, behaviors: int, new_images: float, seed: int = 0
                 ) -> list[str]:
    """``count`` request bodies (JSON lines, ``NEW_KEY`` where a new image's key goes): see
    the module docstring."""
    import pyarrow.parquet as pq

    from ..data.schema import Schema
    from ..models.inputs import model_fields

    manifest = json.loads((export / "manifest.json").read_text())
    schema = Schema.load(export)
    fields = model_fields(schema, manifest["uses_images"])
    singles = [f.name for f in fields if not f.is_list]
    lists = [f.name for f in fields if f.is_list]
    files = sorted(Path(data_day).glob("*.parquet"))
    if not files:
        raise BenchError(f"{data_day}: no Parquet files to build requests from")
    rows = pq.ParquetFile(files[0]).read().slice(0, 20_000).to_pylist()
    rng = np.random.default_rng(seed)
    blobs = []
    if new_images > 0:
        from ..store.lmdb_store import ImageStore

        if store_dir is None or not manifest["uses_images"]:
            raise BenchError("--new-images needs a model with images and its image store")
        store = ImageStore(store_dir)
        keys = np.unique([r[schema.ad_image] for r in rows[:500]])
        blobs = [base64.b64encode(b).decode() for b in store.get_many(keys)
                 if isinstance(b, bytes)]
    with_beh = [r for r in rows if lists and len(r[lists[0]]) > 0] or rows
    bodies = []
    per = int(round(candidates * new_images))
    for _ in range(count):
        user = with_beh[int(rng.integers(len(with_beh)))]
        beh = {}
        for name in lists:
            seq = list(user[name]) or [0]
            beh[name] = [int(seq[j % len(seq)]) for j in range(behaviors)]
        cands = []
        for j, r in enumerate(rng.choice(len(rows), candidates)):
            c = {n: int(rows[int(r)][n]) for n in singles}
            if j < per and blobs:
                c[schema.ad_image] = NEW_KEY
                c[schema.ad_image + "_bytes"] = blobs[int(rng.integers(len(blobs)))]
            cands.append(c)
        user_part = {n: int(user[n]) for n in singles if schema[n].role == "user"}
        bodies.append(json.dumps({"user": user_part, "behaviors": beh, "candidates": [
            {k: v for k, v in c.items() if k not in user_part} for c in cands]}
        ).replace(f'"{NEW_KEY}"', NEW_KEY))
    return bodies


class Server:
    """``hvams serve`` as a subprocess on a free port, until ``stop``."""

    def __init__(self, export: Path, workers: int, log: Path, extra=()):
        self.port = free_port()
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "serve", str(export), "--port", str(self.port),
             "--workers", str(workers), *map(str, extra)],
            stdout=open(log, "w"), stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parents[2])
        import urllib.request

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"hvams serve exited {self.proc.returncode}: see {log}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=2):
                    return
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise BenchError(f"hvams serve did not get ready in 120 s: see {log}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def run_wrk(port: int, bodies_file: Path, script: Path, rate: float, seconds: float,
            connections: int, delay_ms: float, first_key: int) -> dict:
    env = {**os.environ, "HVAMS_BODIES": str(bodies_file), "HVAMS_DELAY_MS": f"{delay_ms:.3f}",
           "HVAMS_FIRST_KEY": str(first_key)}
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, int(round(seconds)))}s",
           "--timeout", "5s", "-s", str(script), f"http://127.0.0.1:{port}"]
    try:
        res = subprocess.run(cmd, env=env, capture_output=True, text=True,
                             timeout=seconds + 60)
    except FileNotFoundError:
        raise BenchError("wrk is not installed (scripts/setup.sh installs it: "
                         "apt-get install wrk)") from None
    line = next((ln for ln in res.stderr.splitlines() if ln.startswith("HVAMS_RESULT")), None)
    if line is None:
        raise BenchError(f"wrk printed no result: {res.stdout[-1500:]} {res.stderr[-1500:]}")
    r = json.loads(line.split(" ", 1)[1])
    seconds_run = r["duration_us"] / 1e6
    return {"target": rate, "achieved": r["requests"] / seconds_run, "requests": r["requests"],
            "errors": r["errors"], "p50_ms": r["p50"] / 1e3, "p90_ms": r["p90"] / 1e3,
            "p99_ms": r["p99"] / 1e3, "mean_ms": r["mean"] / 1e3, "max_ms": r["max"] / 1e3,
            "connections": connections, "delay_ms": delay_ms}


def run_serve_bench(export: Path, data_day: Path, store_dir: Path | None, out: Path,
                    rates: list[float], seconds: float, candidates: int, behaviors: int,
                    new_images: list[float], workers: int, connections: int, p99_bound_ms: float,
                    log=print) -> dict:
    """Each share of new images, each rate: a calibration run, then the measured one."""
    out.mkdir(parents=True, exist_ok=True)
    script = out / "score.lua"
    script.write_text(LUA)
    result = {"export": str(export), "candidates": candidates, "behaviors": behaviors,
              "workers": workers, "connections": connections, "seconds": seconds,
              "p99_bound_ms": p99_bound_ms, "series": []}
    runs = 0
    for share in new_images:
        bodies = build_bodies(export, data_day, store_dir, 300, candidates, behaviors, share)
        bodies_file = Path(tempfile.mkstemp(prefix="hvams-bodies-", suffix=".jsonl")[1])
        bodies_file.write_text("\n".join(bodies) + "\n")
        server = Server(export, workers, out / f"server-{share:g}.log")
        series = {"new_images": share, "rows": []}
        try:   # warm-up: first requests load lazily initialised code paths
            run_wrk(server.port, bodies_file, script, rates[0], 2, connections,
                    1000.0 * connections / rates[0], FIRST_NEW_KEY + 10 ** 11)
            for rate in rates:
                period_ms = 1000.0 * connections / rate
                cal = run_wrk(server.port, bodies_file, script, rate, 2, connections,
                              period_ms, FIRST_NEW_KEY + runs * 10 ** 8)
                delay = max(0.0, period_ms - cal["p50_ms"])
                row = run_wrk(server.port, bodies_file, script, rate, seconds, connections,
                              delay, FIRST_NEW_KEY + (runs + 1) * 10 ** 8)
                runs += 2
                row["sustained"] = (row["achieved"] >= 0.95 * rate and row["errors"] == 0
                                    and row["p99_ms"] <= p99_bound_ms)
                series["rows"].append(row)
                log(f"bench serve: new images {share:.0%}, {rate:g} req/s: achieved "
                    f"{row['achieved']:.0f}, p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms"
                    f"{'' if row['errors'] == 0 else ', errors ' + str(row['errors'])}")
        finally:
            server.stop()
            bodies_file.unlink(missing_ok=True)
        # the highest rate below the first one missed: past saturation wrk's loop closes,
        # and a higher target can pass again with latencies that understate an open loop's
        ok = []
        for r in sorted(series["rows"], key=lambda r: r["target"]):
            if not r["sustained"]:
                break
            ok.append(r["target"])
        series["highest_sustained"] = max(ok) if ok else None
        result["series"].append(series)
    return result


def format_serve(r: dict) -> str:
    lines = [f"K = {r['candidates']} candidates and {r['behaviors']} behaviors per request; "
             f"{r['workers']} server processes; wrk with {r['connections']} connections, "
             f"{r['seconds']:g} s per rate. Sustained: 95% of the target rate reached, no error, "
             f"p99 at most {r['p99_bound_ms']:g} ms; the highest rate sustained is the highest "
             f"below the first rate missed.", "",
             "| new images | target req/s | achieved | p50 ms | p90 ms | p99 ms | max ms | errors | sustained |",
             "|---|---|---|---|---|---|---|---|---|"]
    for s in r["series"]:
        for row in s["rows"]:
            lines.append(f"| {s['new_images']:.0%} | {row['target']:g} | {row['achieved']:.0f} | "
                         f"{row['p50_ms']:.1f} | {row['p90_ms']:.1f} | {row['p99_ms']:.1f} | "
                         f"{row['max_ms']:.1f} | {row['errors']} | "
                         f"{'yes' if row['sustained'] else 'no'} |")
    lines.append("")
    for s in r["series"]:
        lines.append(f"Highest rate sustained with {s['new_images']:.0%} new images: "
                     f"{s['highest_sustained'] if s['highest_sustained'] else 'none'} req/s.")
    return "\n".join(lines)
