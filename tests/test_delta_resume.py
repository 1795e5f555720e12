"""Delta checkpoints on real ranks, with admission, TTL and capacity eviction on: every
checkpoint of a delta run reads back as the full run's checkpoint of the same step; a resume
from a delta chain (past a torn link) equals the uninterrupted run; and a delta chain
re-sharded to another server count resumes as the full checkpoint of its step does."""
import json
import shutil

import numpy as np
import torch

from hvams.train import checkpoint as ckpt
from hvams.train import shard_files
from mpi_harness import train_ok

# two days of 10 steps (2 workers x 100 samples), a checkpoint every 3 steps and at the end
KEYS = dict(servers=2, model="din", sparse_optimizer="adam", batch_size=100,
            checkpoint_every=3, id_admission_min_count=2, id_ttl_days=1)


def _config(tmp_path, mode, compact):
    path = tmp_path / f"{mode}-{compact}.yaml"
    path.write_text("train_days: [day=00, day=01]\ntest_day: day=02\n"
                    "max_rows_by_table: {user: 100}\nadmission_sketch_width: 1024\n"
                    f"checkpoint_mode: {mode}\ndelta_compact_every: {compact}\n")
    return path


def _train(world, tmp_path, run, mode, ranks=4, compact=3, **keys):
    return train_ok(ranks, world, run, "--config", _config(tmp_path, mode, compact),
                    timeout=300, **{**KEYS, **keys})


def materialized(d):
    """Every array of a checkpoint's server files as its chain reads back, by FILE:TABLE/NAME."""
    out = {}
    for f in shard_files.server_files(d):
        name = f.paths[-1].name
        tables = sorted(k.split("/")[0] for k in f.base if k.endswith("/keys"))
        for t in tables:
            n = f.count(t)
            for a in ["keys", *f.names(t)]:
                like = f.like(t, a)
                out[f"{name}:{t}/{a}"] = arr = np.empty((n, *like.shape[1:]), like.dtype)
                f.read(t, a, np.arange(n), arr)
            out[f"{name}:{t}/step"] = f.step(t)
            for extra in ("clock", "sketch", "sketch_total"):
                if f"{t}/{extra}" in f.newest:
                    out[f"{name}:{t}/{extra}"] = f.newest[f"{t}/{extra}"].rows()
    return out


def _same_tables(a, b):
    ta, tb = materialized(a), materialized(b)
    assert ta.keys() == tb.keys()
    for k in ta:
        assert np.array_equal(ta[k], tb[k]), (a, b, k)


def _same_dense(a, b):
    da = torch.load(a / "dense.pt", weights_only=False)
    db = torch.load(b / "dense.pt", weights_only=False)
    for k in da["model"]:
        assert torch.equal(da["model"][k], db["model"][k]), k
    assert da["position"] == db["position"]


def _kinds(run):
    return {d.name: ckpt.load_manifest(d).get("kind", "full") for d in sorted(run.glob("ckpt-*"))}


def test_delta_checkpoints_equal_full_ones_and_resume_exactly(tiny_world, tmp_path):
    full, delta = tmp_path / "full", tmp_path / "delta"
    sf, _ = _train(tiny_world, tmp_path, full, "full")
    sd, _ = _train(tiny_world, tmp_path, delta, "delta")
    assert sf["losses"] == sd["losses"]
    # admission filters users, LRU evicts them (capacity 100 a shard; the TTL finds none left
    # in this small world, and takes the same eviction path: tests/test_delta_checkpoint.py)
    assert sd["id_rows"]["user"]["evicted_capacity"] > 0 and sd["id_rows"]["user"]["filtered"] > 0
    kinds = _kinds(delta)
    # a base, three deltas on it, a base again (delta_compact_every 3)
    assert list(kinds) == [f"ckpt-{s:08d}" for s in (3, 6, 9, 12, 15, 18, 20)]
    assert list(kinds.values()) == ["full", "delta", "delta", "delta", "full", "delta",
                                    "delta"], kinds
    for d in sorted(delta.glob("ckpt-*")):
        _same_tables(d, full / d.name)
        _same_dense(d, full / d.name)
    assert ckpt.load_manifest(delta / "ckpt-00000012")["chain"] == [
        "ckpt-00000003", "ckpt-00000006", "ckpt-00000009", "ckpt-00000012"]
    with np.load(delta / "ckpt-00000020" / "server-0.npz") as z:
        assert len(z["user/deleted"]) > 0   # the delta says which users went

    # a resume from the chain, past a torn newer link, equals the uninterrupted run
    split = tmp_path / "split"
    shutil.copytree(delta, split)
    for d in split.glob("ckpt-*"):
        if d.name > "ckpt-00000012":
            shutil.rmtree(d)
    torn = split / "ckpt-00000012" / "server-1.npz"
    data = bytearray(torn.read_bytes())
    data[-100] ^= 0x08
    torn.write_bytes(bytes(data))
    ss, res = _train(tiny_world, tmp_path, split, "delta", resume=True)
    assert "ckpt-00000012 is incomplete (" in res.output and "fails its checksum" in res.output
    assert "latest complete checkpoint is ckpt-00000009" in res.output
    assert ss["losses"] == sd["losses"][9:]
    # it went on with the chain it resumed (12 a delta on 3, 6, 9), then as the first did
    assert _kinds(split) == kinds
    assert ckpt.load_manifest(split / "ckpt-00000012")["chain"][0] == "ckpt-00000003"
    _same_tables(split / "ckpt-00000020", delta / "ckpt-00000020")
    _same_dense(split / "ckpt-00000020", delta / "ckpt-00000020")

    # re-sharded to 3 servers, the chain at step 9 resumes as the full checkpoint of step 9
    for name, source in (("delta3", delta), ("full3", full)):
        run = tmp_path / name
        run.mkdir()
        shutil.copy(source / "config.yaml", run / "config.yaml")
        chain = ckpt.load_manifest(source / "ckpt-00000009").get("chain") or ["ckpt-00000009"]
        for link in chain:
            shutil.copytree(source / link, run / link)
        _train(tiny_world, tmp_path, run, "delta", ranks=5, resume=True, servers=3)
    assert json.loads((tmp_path / "delta3" / "summary.json").read_text())["losses"] == \
        json.loads((tmp_path / "full3" / "summary.json").read_text())["losses"]
    # three servers, from whichever source: the first checkpoint is a base, deltas follow
    assert _kinds(tmp_path / "delta3")["ckpt-00000012"] == "full"
    assert _kinds(tmp_path / "delta3")["ckpt-00000015"] == "delta"
    _same_tables(tmp_path / "delta3" / "ckpt-00000020", tmp_path / "full3" / "ckpt-00000020")
    _same_dense(tmp_path / "delta3" / "ckpt-00000020", tmp_path / "full3" / "ckpt-00000020")


def test_keep_checkpoints_prunes_but_keeps_the_chain(tiny_world, tmp_path):
    run = tmp_path / "run"
    _train(tiny_world, tmp_path, run, "delta", compact=1, keep_checkpoints=2)
    # bases at 3, 9, 15, 20 and a delta after each but the last: the newest two are 20 and
    # 18, whose chain needs 15
    assert sorted(d.name for d in run.glob("ckpt-*")) == [
        "ckpt-00000015", "ckpt-00000018", "ckpt-00000020"]
    assert ckpt.is_complete(run / "ckpt-00000018")
