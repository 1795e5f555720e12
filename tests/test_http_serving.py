"""``hvams serve`` on a real local port, started and stopped by the tests: served scores equal
``hvams predict``'s for idonly, din, dicm and din+img; a new ad's image bytes are embedded on
arrival by the exported image model (frozen and trainable backbones) to the vector the
export's table holds for the same image; a reload under load fails no request and mixes no
two models, a delta export reloads onto the served one; reload is refused without the token,
outside the models root and for a damaged export (the old model serves on); malformed
requests get 4xx naming the field, and the server stays up."""
import base64
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from hvams.data.schema import Schema
from hvams.models.inputs import model_fields
from hvams.bench.serve import free_port
from hvams.serve.export import export_run
from hvams.serve.predict import predict
from hvams.store.lmdb_store import ImageStore
from mpi_harness import ROOT, train_ok

ROWS = 24   # test-day rows scored through HTTP, per model


@pytest.fixture(scope="module")
def exports(tiny_world, tmp_path_factory):
    """For each model: its export, and predict's scores of the test day."""
    root = tmp_path_factory.mktemp("serving")
    out = {}
    for name, keys in {"idonly": dict(model="idonly"), "din": dict(model="din"),
                       "dicm": dict(model="dicm"), "din+img": dict(model="din+img"),
                       "dicm-frozen": dict(model="dicm", freeze_backbone=True)}.items():
        run, model = root / "runs" / name, root / "models" / name
        train_ok(4, tiny_world, run, servers=2, batch_size=64, max_steps=12, **keys)
        export_run(run, model, workers=1)
        predict(model, tiny_world / "day=02", root / f"{name}.parquet", 500)
        out[name] = (model, pq.read_table(root / f"{name}.parquet")["score"].to_numpy())
    return out


@pytest.fixture(scope="module")
def day(tiny_world):
    t = pq.ParquetFile(sorted((tiny_world / "day=02").glob("*.parquet"))[0]).read().slice(0, ROWS)
    return t.to_pylist()


class Served:
    """A ``hvams serve`` process on a free local port (another port if that one is taken
    before the server binds it), its output in a log file."""

    def __init__(self, model_dir, *args, token: str | None = None, tmp: Path | None = None):
        import tempfile

        self.name = Path(model_dir).name
        argv = [sys.executable, "-m", "cli", "serve", str(model_dir), *map(str, args)]
        if token is not None:
            path = Path(tempfile.mkdtemp()) / "token"
            path.write_text(token + "\n")
            argv += ["--admin-token-file", str(path)]
        for _ in range(3):
            self.port = free_port()
            self.log = Path(tempfile.mkstemp(prefix="hvams-serve-", suffix=".log")[1])
            with open(self.log, "w") as out:
                self.proc = subprocess.Popen([*argv, "--port", str(self.port)], cwd=ROOT,
                                             stdout=out, stderr=subprocess.STDOUT,
                                             env={**os.environ, "PYTHONPATH": str(ROOT)})
            if self._ready():
                return
            if "address already in use" not in self.log.read_text().lower():
                break
        self.stop()
        raise AssertionError(f"hvams serve did not become ready: {self.log.read_text()[-3000:]}")

    def _ready(self) -> bool:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                status, body = self.get("/readyz")
                if status == 200 and json.loads(body)["model"] == self.name:
                    return True
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.2)
        return False

    def request(self, method: str, path: str, body: bytes | None = None, headers=None):
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=body,
                                     method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def get(self, path):
        return self.request("GET", path)

    def post(self, path, obj=None, raw: bytes | None = None, headers=None):
        body = raw if raw is not None else json.dumps(obj).encode()
        status, data = self.request("POST", path, body,
                                    {"Content-Type": "application/json", **(headers or {})})
        try:
            return status, json.loads(data)
        except ValueError:
            return status, data

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)


@pytest.fixture
def served():
    started = []

    def start(*args, **kw):
        s = Served(*args, **kw)
        started.append(s)
        return s
    yield start
    for s in started:
        s.stop()


def _fields(model_dir):
    m = json.loads((Path(model_dir) / "manifest.json").read_text())
    return model_fields(Schema.load(model_dir), m["uses_images"])


def _request(model_dir, rows: list[dict], user_row: dict | None = None) -> dict:
    """A request scoring ``rows``: each row's single-valued fields as a candidate, the
    behaviors (and, with ``user_row``, everything not ad-specific) of the first row."""
    fields = _fields(model_dir)
    base = user_row or rows[0]
    singles = [f.name for f in fields if not f.is_list]
    lists = [f.name for f in fields if f.is_list]
    return {"user": {}, "behaviors": {n: list(base[n]) for n in lists},
            "candidates": [{n: int(r[n]) for n in singles} for r in rows]}


@pytest.mark.parametrize("name", ["idonly", "din", "dicm", "din+img"])
def test_served_scores_equal_predict(exports, day, served, name):
    model, want = exports[name]
    s = served(model)
    for i, row in enumerate(day):
        status, res = s.post("/v1/score", _request(model, [row]))
        assert status == 200, res
        assert abs(res["scores"][0] - want[i]) < 1e-6, (i, res["scores"][0], want[i])
    # one request of many candidates scores each as it scores alone
    rows = [{**r, **{f: day[0][f] for f in ("user_id", "age", "gender", "city_tier", "hour")}}
            for r in day]
    status, many = s.post("/v1/score", _request(model, rows))
    assert status == 200 and len(many["scores"]) == ROWS
    for i, r in enumerate(rows):
        one = s.post("/v1/score", _request(model, [r], user_row=rows[0]))[1]["scores"][0]
        assert abs(many["scores"][i] - one) < 1e-6
    status, metrics = s.request("GET", "/metrics")
    text = metrics.decode()
    assert status == 200 and 'hvams_requests_total{route="score",status="200"}' in text
    assert "hvams_request_seconds_bucket" in text and "hvams_model{" in text


@pytest.mark.parametrize("name", ["dicm", "dicm-frozen"])
def test_a_new_image_is_embedded_on_arrival_as_the_export_embeds_it(exports, day, served,
                                                                     tiny_world, name):
    from hvams.serve.image_model import ExportedImageModel

    model, _ = exports[name]
    manifest = json.loads((model / "manifest.json").read_text())
    store = ImageStore(tiny_world / "images")
    key = int(day[0]["ad_image"])
    blob = store.get_many(np.array([key]))[0]
    # the exported image model gives the export table's vector for the same bytes
    emb, ok, _ = ExportedImageModel(model, manifest["image_model"]).embed(np.array([key]), [blob])
    with np.load(model / "image_embeddings.npz") as z:
        row = z["rows"][np.searchsorted(z["keys"], key)]
    assert ok[0] and np.abs(emb[0] - row).max() < 1e-6
    s = served(model)
    known = _request(model, [day[0]])
    status, a = s.post("/v1/score", known)
    assert status == 200 and a["images"] == ["table"]
    new = _request(model, [day[0]])
    new["candidates"][0]["ad_image"] = 10 ** 12                       # a key the export lacks
    new["candidates"][0]["ad_image_bytes"] = base64.b64encode(blob).decode()
    status, b = s.post("/v1/score", new)
    assert status == 200 and b["images"] == ["embedded"], b
    assert abs(a["scores"][0] - b["scores"][0]) < 1e-6
    assert s.post("/v1/score", new)[1]["images"] == ["cached"]
    # bytes that do not decode: the missing-image embedding, as a key nobody knows
    bad = json.loads(json.dumps(new))
    bad["candidates"][0]["ad_image"] = 10 ** 12 + 1
    bad["candidates"][0]["ad_image_bytes"] = base64.b64encode(blob[: len(blob) // 3]).decode()
    unknown = json.loads(json.dumps(new))
    unknown["candidates"][0]["ad_image"] = 10 ** 12 + 2
    del unknown["candidates"][0]["ad_image_bytes"]
    sb, rb = s.post("/v1/score", bad)
    su, ru = s.post("/v1/score", unknown)
    assert (sb, su) == (200, 200) and rb["images"] == ["bad"] and ru["images"] == ["unknown"]
    assert abs(rb["scores"][0] - ru["scores"][0]) < 1e-9
    text = s.request("GET", "/metrics")[1].decode()
    assert 'hvams_images_total{source="embedded"} 1.0' in text
    assert 'hvams_images_total{source="bad"} 1.0' in text


def test_new_images_go_to_an_idle_model_at_once_and_queue_together_while_it_is_busy(
        exports, day, tiny_world):
    """The batcher's rule, on the exported model: a lone request's images are one batch at
    once; while the model is busy, the images of the requests that arrive meanwhile wait
    and then go as one batch; every vector is the one the image embedded alone gets (and
    the one the export's table holds for the same bytes); a cached image makes no batch."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from hvams.serve.model import ServingModel
    from hvams.serve.new_images import CACHED, EMBEDDED, NewImages

    model_dir = exports["dicm-frozen"][0]
    model = ServingModel.load(model_dir)
    keys = np.unique([int(r["ad_image"]) for r in day])[:6]
    blobs = ImageStore(tiny_world / "images").get_many(keys)
    with np.load(model_dir / "image_embeddings.npz") as z:
        table = {int(k): r for k, r in zip(z["keys"], z["rows"])}
    fresh = [10 ** 12 + i for i in range(len(keys))]   # keys the export lacks
    batches, compute = [], ThreadPoolExecutor(1)
    images = NewImages(max_batch=64, on_batch=lambda n, bad: batches.append(n),
                       executor=compute)

    def ask(idx):
        return images.embed(model, {fresh[i]: blobs[i] for i in idx})

    async def scenario():
        alone = await ask([0, 1])
        assert batches == [2] and images.idle()
        gate = threading.Event()
        compute.submit(gate.wait, 30)          # the compute thread is busy elsewhere
        first = asyncio.create_task(ask([2]))
        await asyncio.sleep(0.05)              # its batch is handed over, and waits
        later = [asyncio.create_task(ask([3, 4])), asyncio.create_task(ask([5]))]
        await asyncio.sleep(0.05)
        assert batches == [2] and not images.idle()
        gate.set()
        results = [alone, await first, *(await asyncio.gather(*later))]
        again = await ask([0, 5])
        return results, again

    try:
        results, again = asyncio.run(scenario())
    finally:
        compute.shutdown()
    assert batches == [2, 1, 3], batches        # the two later requests shared one batch
    got = {k: v for vectors, _ in results for k, v in vectors.items()}
    assert all(src == EMBEDDED for _, sources in results for src in sources.values())
    for i, key in enumerate(fresh):
        assert np.abs(got[key] - table[int(keys[i])]).max() < 1e-6, i
    assert set(again[1].values()) == {CACHED} and batches == [2, 1, 3]
    # the one-hop path (a request alone in its process) computes the same vectors
    here, sources = NewImages().embed_here(ServingModel.load(model_dir),
                                           {fresh[i]: blobs[i] for i in range(6)})
    assert set(sources.values()) == {EMBEDDED}
    assert all(np.abs(here[k] - got[k]).max() < 1e-6 for k in fresh)


def test_concurrent_requests_with_new_images_all_get_their_vectors(exports, day, served,
                                                                     tiny_world):
    """Eight requests at once, each bringing two new images (some go together through the
    batcher, some alone): every answer is what the same candidates score with the table's
    images."""
    from concurrent.futures import ThreadPoolExecutor

    model, _ = exports["dicm"]
    rows = day[:2]
    keys = [int(r["ad_image"]) for r in rows]
    blobs = ImageStore(tiny_world / "images").get_many(np.array(keys))
    s = served(model)
    status, known = s.post("/v1/score", _request(model, rows))
    assert status == 200 and known["images"] == ["table", "table"]

    def bring(i):
        body = _request(model, rows)
        for j, cand in enumerate(body["candidates"]):
            cand["ad_image"] = 10 ** 12 + 2 * i + j
            cand["ad_image_bytes"] = base64.b64encode(blobs[j]).decode()
        return s.post("/v1/score", body)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(bring, range(8)))
    for status, a in answers:
        assert status == 200 and a["images"] == ["embedded", "embedded"], a
        assert np.abs(np.array(a["scores"]) - known["scores"]).max() < 1e-6


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_reload_under_load_fails_nothing_and_mixes_nothing(exports, day, served, tmp_path):
    root = tmp_path / "models"
    a = _copy(exports["din"][0], root / "a")
    b = _copy(exports["din+img"][0], root / "b")
    s = served(a, token="s3cret", tmp=tmp_path)
    req_a, req_b = _request(a, [day[1]]), _request(b, [day[1]])
    want_a = s.post("/v1/score", req_a)[1]["scores"][0]
    results, stop = [], threading.Event()

    def load():
        while not stop.is_set():
            results.append(s.post("/v1/score", req_b))  # valid for both models
    def wait_for(cond):
        deadline = time.monotonic() + 120
        while not cond() and time.monotonic() < deadline:
            time.sleep(0.05)

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    wait_for(lambda: len(results) >= 5)
    status, res = s.post("/v1/reload", {"model_dir": "b"},
                         headers={"Authorization": "Bearer s3cret"})
    assert status == 200 and res == {"model": "b", "checkpoint": res["checkpoint"], "previous": "a"}
    wait_for(lambda: sum(r[1].get("model") == "b" for r in list(results)) >= 5)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    assert results and all(st == 200 for st, _ in results), [r for r in results if r[0] != 200][:3]
    after = s.post("/v1/score", req_b)[1]
    assert after["model"] == "b"
    want_b = after["scores"][0]
    assert {r["model"] for _, r in results} <= {"a", "b"}
    for _, r in results:  # each answer is wholly one model's
        assert abs(r["scores"][0] - (want_a if r["model"] == "a" else want_b)) < 1e-9
    assert any(r["model"] == "a" for _, r in results) and any(r["model"] == "b" for _, r in results)


def test_a_delta_export_reloads_onto_the_served_model(tiny_world, tmp_path, served, day):
    keys = dict(servers=2, model="din", batch_size=64)
    train_ok(4, tiny_world, tmp_path / "ra", max_steps=6, **keys)
    train_ok(4, tiny_world, tmp_path / "rb", max_steps=12, **keys)
    root = tmp_path / "models"
    export_run(tmp_path / "ra", root / "day1", workers=1)
    export_run(tmp_path / "rb", root / "day2-full", workers=1)
    export_run(tmp_path / "rb", root / "day2", workers=1, since=root / "day1")
    s = served(root / "day1", token="t", tmp=tmp_path)
    full = served(root / "day2-full")
    status, res = s.post("/v1/reload", {"model_dir": "day2"}, headers={"Authorization": "Bearer t"})
    assert status == 200 and res["model"] == "day2", res
    for row in day[:8]:
        got = s.post("/v1/score", _request(root / "day2", [row]))[1]
        assert got["model"] == "day2"
        assert abs(got["scores"][0] - full.post("/v1/score", _request(root / "day2", [row]))[1]
                   ["scores"][0]) < 1e-9


def test_reload_is_guarded_and_a_refusal_changes_nothing(exports, day, served, tmp_path):
    root = tmp_path / "models"
    a = _copy(exports["din"][0], root / "a")
    _copy(exports["din"][0], root / "b")
    _copy(exports["din"][0], tmp_path / "outside")
    (root / "link").symlink_to(tmp_path / "outside")
    damaged = _copy(exports["din"][0], root / "damaged")
    table = damaged / "tables" / "user.npz"
    data = bytearray(table.read_bytes())
    data[len(data) // 2] ^= 0x10
    table.write_bytes(bytes(data))
    plain = served(a)
    status, res = plain.post("/v1/reload", {"model_dir": "b"}, headers={"Authorization": "Bearer x"})
    assert status == 403 and "--admin-token-file" in res["error"]
    s = served(a, token="s3cret", tmp=tmp_path)
    good = {"Authorization": "Bearer s3cret"}
    before = s.post("/v1/score", _request(a, [day[0]]))[1]
    cases = [({"model_dir": "b"}, {"Authorization": "Bearer s3cre"}, 403, "admin token"),
             ({"model_dir": "b"}, {}, 403, "admin token"),
             ({"model_dir": "../outside"}, good, 403, "outside the models root"),
             ({"model_dir": str(tmp_path / "outside")}, good, 403, "outside the models root"),
             ({"model_dir": "link"}, good, 403, "outside the models root"),
             ({"model_dir": "nothing"}, good, 404, "no export there"),
             ({"model_dir": "damaged"}, good, 409, "fails its sha256"),
             ({"path": "b"}, good, 400, "model_dir")]
    for body, headers, status, words in cases:
        got, res = s.post("/v1/reload", body, headers=headers)
        assert got == status and words in res["error"], (body, got, res)
        now = s.post("/v1/score", _request(a, [day[0]]))[1]
        assert now == before   # still the same model, the same score
    assert 'hvams_reload_failures_total 1.0' in s.request("GET", "/metrics")[1].decode()


def test_malformed_requests_get_4xx_naming_the_field_and_the_server_stays_up(exports, day,
                                                                             served):
    model, want = exports["dicm"]
    s = served(model, "--max-body-bytes", 20_000, "--max-candidates", 50)
    good = _request(model, [day[0]])
    cases = [(b"{not json", 400, "body"),
             (json.dumps([1, 2]).encode(), 400, "body"),
             (json.dumps({**good, "extra": 1}).encode(), 400, "extra"),
             (json.dumps({**good, "candidates": []}).encode(), 400, "candidates"),
             (json.dumps({**good, "candidates": [{**good["candidates"][0], "ad_id": "7"}]}).encode(),
              400, "candidates[0].ad_id"),
             (json.dumps({**good, "candidates": [{**good["candidates"][0], "ad_id": -1}]}).encode(),
              400, "candidates[0].ad_id"),
             (json.dumps({**good, "candidates": [{k: v for k, v in good["candidates"][0].items()
                                                  if k != "brand"}]}).encode(),
              400, "candidates[0].brand"),
             (json.dumps({**good, "candidates": good["candidates"] * 51}).encode(), 413, "candidates"),
             (json.dumps({**good, "behaviors": {**good["behaviors"], "beh_item": [1]}}).encode(),
              400, "the other behavior lists have 1"),
             (json.dumps({**good, "candidates": [{**good["candidates"][0],
                                                  "ad_image_bytes": "!!notbase64"}]}).encode(),
              400, "candidates[0].ad_image_bytes"),
             (b"x" * 30_000, 413, "body"),
             (b"[" * 5000 + b"]" * 5000, 400, "body"),
             (b'{"\\ud800": 1}', 400, "unknown key"),
             (b'{"candidates": [{"ad_id": NaN}]}', 400, "candidates[0]")]
    for raw, status, field in cases:
        got, res = s.post("/v1/score", raw=raw)
        assert got == status and field in res["error"], (raw[:80], got, res)
    assert s.request("GET", "/v1/nothing")[0] == 404
    assert s.post("/v1/reload", {"model_dir": "x"})[0] == 403   # no token configured
    assert s.request("GET", "/v1/score")[0] == 405
    rng = random.Random(0)
    good_raw = json.dumps(good).encode()
    for i in range(300):   # random damage of a good request
        raw = bytearray(good_raw)
        for _ in range(rng.randint(1, 8)):
            op = rng.random()
            at = rng.randrange(len(raw))
            if op < 0.4:
                raw[at] = rng.randrange(256)
            elif op < 0.7:
                del raw[at:at + rng.randint(1, 20)]
            else:
                raw[at:at] = rng.choice([b'"', b"{", b"]", b"-1", b"null", b"1e309", b"true"])
        got, res = s.post("/v1/score", raw=bytes(raw))
        assert got < 500, (i, bytes(raw)[:200], res)
    assert s.get("/healthz")[0] == 200
    status, res = s.post("/v1/score", good)
    assert status == 200 and abs(res["scores"][0] - want[0]) < 1e-6


def test_bench_serve_drives_the_server_with_wrk(exports, tiny_world, tmp_path):
    """A short `hvams bench serve`: both series ran through wrk against a real server, every
    request answered, the table and the chart are written."""
    model, _ = exports["dicm"]
    out, chart = tmp_path / "bench", tmp_path / "serve.png"
    res = subprocess.run([sys.executable, "-m", "cli", "bench", "serve", "--export", str(model),
                          "--data", str(tiny_world), "--rates", "10,20", "--seconds", "1",
                          "--candidates", "20", "--behaviors", "10", "--workers", "1",
                          "--connections", "2", "--out", str(out), "--chart", str(chart)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    r = json.loads((out / "serve.json").read_text())
    assert [s["new_images"] for s in r["series"]] == [0.0, 0.1]
    for s in r["series"]:
        assert [row["target"] for row in s["rows"]] == [10, 20]
        assert all(row["requests"] > 0 and row["errors"] == 0 and row["p99_ms"] > 0
                   for row in s["rows"])
    assert "| 10% | 20 |" in (out / "serve.md").read_text()
    assert chart.read_bytes().startswith(b"\x89PNG")


def test_predict_embeds_the_images_an_export_lacks_from_a_store(exports, tiny_world, tmp_path):
    model, want = exports["dicm"]
    lacking = _copy(model, tmp_path / "lacking")
    path = lacking / "image_embeddings.npz"
    with np.load(path) as z:
        keys, rows, missing = z["keys"], z["rows"], z["missing"]
    np.savez(path, keys=keys[::2], rows=rows[::2], missing=missing)  # forget half the images
    res = predict(lacking, tiny_world / "day=02", tmp_path / "s.parquet", 500,
                  images=tiny_world / "images")
    assert res["counts"]["embedded_images"] > 0 and res["counts"]["unknown_images"] == 0
    got = pq.read_table(tmp_path / "s.parquet")["score"].to_numpy()
    assert np.abs(got - want).max() < 1e-6
    from click.testing import CliRunner

    from cli.main import main
    r = CliRunner().invoke(main, ["predict", str(lacking), "--data", str(tiny_world / "day=02"),
                                  "--out", str(tmp_path / "c.parquet"), "--images",
                                  str(tiny_world / "images")])
    assert r.exit_code == 0 and "embedded from" in r.output, r.output


def test_every_worker_process_follows_a_reload(exports, day, served, tmp_path):
    root = tmp_path / "models"
    a = _copy(exports["din"][0], root / "a")
    _copy(exports["idonly"][0], root / "b")
    s = served(a, "--workers", 2, token="t", tmp=tmp_path)
    req = _request(a, [day[0]])
    assert {s.post("/v1/score", req)[1]["model"] for _ in range(20)} == {"a"}
    assert s.post("/v1/reload", {"model_dir": "b"}, headers={"Authorization": "Bearer t"})[0] == 200
    seen, deadline = {}, time.monotonic() + 120   # the other process polls every half second
    while time.monotonic() < deadline and not (len(seen) == 2 and set(seen.values()) == {"b"}):
        r = json.loads(s.get("/readyz")[1])
        seen[r["pid"]] = r["model"]
        time.sleep(0.05)
    assert len(seen) == 2 and set(seen.values()) == {"b"}, seen
    assert {s.post("/v1/score", req)[1]["model"] for _ in range(40)} == {"b"}
    text = s.request("GET", "/metrics")[1].decode()
    assert 'hvams_requests_total{route="score",status="200"} 60.0' in text   # both processes
