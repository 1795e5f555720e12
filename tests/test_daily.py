"""Daily training on real ranks: continuing from yesterday's model is exact, evicted rows
leave checkpoints and exports, and what cannot be continued or held is a clear error."""
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from hvams.serve.export import export_run
from mpi_harness import final_checkpoint, metrics_of, run_train, train_ok


def _days(tmp_path, name, *days, **keys):
    """A config file naming the train days (a YAML-only key), plus any other keys."""
    path = tmp_path / f"{name}.yaml"
    lines = [f"train_days: [{', '.join(days)}]", "test_day: day=02"]
    lines += [f"{k}: {v}" for k, v in keys.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def _state(run):
    d, dense, arrays = final_checkpoint(run)
    image = (torch.load(d / "image.pt", weights_only=False) if (d / "image.pt").exists()
             else None)
    return dense, arrays, image


def _equal_states(a, b):
    (da, aa, ia), (db, ab, ib) = _state(a), _state(b)
    for part in ("model", "optimizer"):
        flat_a, flat_b = _flat(da[part]), _flat(db[part])
        assert flat_a.keys() == flat_b.keys()
        for k in flat_a:
            assert torch.equal(flat_a[k], flat_b[k]), (part, k)
    assert aa.keys() == ab.keys()
    for k in aa:
        assert np.array_equal(aa[k], ab[k]), k
    assert (ia is None) == (ib is None)
    if ia is not None:
        fa, fb = _flat(ia), _flat(ib)
        assert fa.keys() == fb.keys() and all(torch.equal(fa[k], fb[k]) for k in fa)


def _flat(obj, prefix=""):
    if isinstance(obj, torch.Tensor):
        return {prefix: obj}
    if isinstance(obj, dict):
        return {k2: v2 for k, v in obj.items() for k2, v2 in _flat(v, f"{prefix}/{k}").items()}
    if isinstance(obj, (list, tuple)):
        return {k2: v2 for i, v in enumerate(obj) for k2, v2 in _flat(v, f"{prefix}/{i}").items()}
    return {prefix: torch.tensor(float(obj))} if isinstance(obj, (int, float)) else {}


# the row policies, two cases: a TTL evicts the few users day 1 does not see (dicm, with the
# image model and its optimizer); admission filters users seen once, and a capacity of 100
# user rows a shard evicts by LRU (din)
CASES = {"ttl": ("dicm", {"id_ttl_days": 1}, "evicted_ttl"),
         "admission+capacity": ("din", {"id_admission_min_count": 2,
                                        "max_rows_by_table": "{user: 100}"}, "evicted_capacity")}


@pytest.mark.parametrize("case", list(CASES))
def test_day_b_from_day_a_equals_one_run_over_both(tiny_world, tmp_path, case):
    """Day A, then --init-from that run on day B == one run over A then B, bit for bit: ID rows
    with their slots, table steps and row policies' state, the dense and image models with
    their optimizers, and the learning-rate schedule position (the step goes on)."""
    model, policies, acted = CASES[case]
    keys = dict(servers=2, model=model, batch_size=64, sparse_optimizer="adam")
    extra = {"lr_decay_steps": 10, **policies}
    both, _ = train_ok(4, tiny_world, tmp_path / "both", "--config",
                       _days(tmp_path, "both", "day=00", "day=01", **extra), **keys)
    # ttl: day A checkpoints on its last step, before its day end ages the rows; the model
    # continued is still the one after that day end
    due = {"checkpoint_every": both["days"][0]["step"]} if case == "ttl" else {}
    first, _ = train_ok(4, tiny_world, tmp_path / "a", "--config",
                        _days(tmp_path, "a", "day=00", **extra, **due), **keys)
    second, res = train_ok(4, tiny_world, tmp_path / "b", "--config",
                           _days(tmp_path, "b", "day=01", **extra), init_from=tmp_path / "a",
                           **keys)
    assert "--init-from: continuing the model of" in res.output
    assert first["losses"] + second["losses"] == both["losses"]   # exact, step by step
    assert second["final_step"] == both["final_step"]
    _equal_states(tmp_path / "b", tmp_path / "both")
    assert metrics_of(tmp_path / "b")[-1] == metrics_of(tmp_path / "both")[-1]
    # the policy acted, and both ways counted alike, day by day
    assert both["id_rows"]["user"][acted] > 0
    assert [d["tables"] for d in first["days"] + second["days"]] == \
        [d["tables"] for d in both["days"]]


def test_init_from_on_another_server_count_and_a_mismatch(tiny_world, tmp_path):
    keys = dict(model="din", batch_size=64)
    a, _ = train_ok(4, tiny_world, tmp_path / "a", "--config", _days(tmp_path, "a", "day=00"),
                    servers=2, **keys)
    b, _ = train_ok(2, tiny_world, tmp_path / "b", "--config", _days(tmp_path, "b", "day=01"),
                    servers=1, init_from=tmp_path / "a", **keys)
    # both servers' rows came over to the one, and day 1 added its new users
    assert b["id_rows"]["user"]["live"] == a["id_rows"]["user"]["live"] + \
        b["id_rows"]["user"]["admitted"]
    bad = run_train(2, tiny_world, tmp_path / "c", servers=1, init_from=tmp_path / "a",
                    model="din", emb_dim=8)
    assert bad.returncode == 2, bad.output[-2000:]
    assert "emb_dim 12, this run has emb_dim 8" in bad.output and "Traceback" not in bad.output
    from hvams.config import ConfigError, TrainConfig
    from hvams.data.schema import Schema
    from hvams.train.restore import check_init

    schema = Schema.load(tiny_world)
    ok = TrainConfig(data=str(tiny_world), init_from=str(tmp_path / "a"), backbone_lr_scale=0.5,
                     **keys)
    check_init(ok, schema)  # no backbone: its learning-rate scale does not matter
    for unused in ({"image_products": True}, {"aggregator": "sum"}, {"concat_behaviors": 3},
                   {"backbone": "resnet18"}, {"head": [32]}, {"strategy": "store-in-worker"},
                   {"freeze_backbone": False}):  # nor the image path it lacks
        check_init(TrainConfig(data=str(tiny_world), init_from=str(tmp_path / "a"),
                               **unused, **keys), schema)
    with pytest.raises(ConfigError, match="was trained with model 'din', this run has model "
                                          "'dicm'"):
        check_init(TrainConfig(data=str(tiny_world), init_from=str(tmp_path / "a"),
                               **{**keys, "model": "dicm"}), schema)
    with pytest.raises(ConfigError, match="mlp \\[200, 80\\], this run has mlp \\[64\\]"):
        check_init(TrainConfig(data=str(tiny_world), init_from=str(tmp_path / "a"), mlp=[64],
                               **keys), schema)


def _users(world, day):
    t = pq.ParquetFile(sorted((world / day).glob("*.parquet"))[0]).read(columns=["user_id"])
    return set(t["user_id"].to_pylist())


def test_evicted_rows_leave_the_checkpoint_and_the_export(tiny_world, tmp_path):
    """TTL 1 day over two days: the users seen on day 0 but not on day 1 are gone at the end
    of day 1, from the last checkpoint and from the export made of it."""
    run = tmp_path / "run"
    s, res = train_ok(4, tiny_world, run, "--config", _days(tmp_path, "run", "day=00", "day=01"),
                      servers=2, model="idonly", batch_size=64, id_ttl_days=1)
    day0, day1 = _users(tiny_world, "day=00"), _users(tiny_world, "day=01")
    gone = day0 - day1
    assert gone and s["id_rows"]["user"]["evicted_ttl"] >= len(gone)
    assert "hvams: day=01 ended at step" in res.output and " ttl" in res.output
    model = tmp_path / "model"
    export_run(run, model, workers=1)
    with np.load(model / "tables" / "user.npz") as z:
        exported = set(z["keys"].tolist())
    assert not (exported & gone) and exported <= day1   # day 1 ended the TTL of all others


def test_a_capacity_below_one_step_is_an_error_naming_table_and_server(tiny_world, tmp_path):
    res = run_train(3, tiny_world, tmp_path / "run", servers=1, model="idonly", batch_size=64,
                    max_rows_per_shard=20, timeout=120)
    assert res.returncode != 0 and not res.timed_out
    assert "CapacityError: table 'user' on server 0: one step needs" in res.output
    assert "but max_rows_per_shard is 20" in res.output and "Traceback" not in res.output


def test_export_since_holds_the_changes_and_loads_as_the_full_export(tiny_world, tmp_path):
    """Day B's export as a delta on day A's holds only the rows that changed and the keys
    deleted; applied to A's export it is B's full export, key for key and bit for bit, and
    it scores as that export does. A delta on another export than its own is refused."""
    from click.testing import CliRunner

    from cli.main import main as cli
    from hvams.serve.export_tables import ExportError, load_tables
    from hvams.serve.predict import predict

    keys = dict(servers=2, model="dicm", batch_size=64, id_ttl_days=1)
    train_ok(4, tiny_world, tmp_path / "a", "--config", _days(tmp_path, "a", "day=00"), **keys)
    train_ok(4, tiny_world, tmp_path / "b", "--config", _days(tmp_path, "b", "day=01"),
             init_from=tmp_path / "a", **keys)
    export_run(tmp_path / "a", tmp_path / "xa", workers=1)
    export_run(tmp_path / "b", tmp_path / "xb", workers=1)
    res = CliRunner().invoke(cli, ["export", str(tmp_path / "b"), "--out", str(tmp_path / "db"),
                                   "--workers", "1", "--since", str(tmp_path / "xa")])
    assert res.exit_code == 0, res.output
    assert "rows changed" in res.output and "keys deleted" in res.output
    full, old = load_tables(tmp_path / "xb"), load_tables(tmp_path / "xa")
    applied = load_tables(tmp_path / "db")
    assert applied.keys() == full.keys()
    for name in full:
        assert full[name].keys() == applied[name].keys()
        for part in full[name]:
            assert np.array_equal(full[name][part], applied[name][part]), (name, part)
    with np.load(tmp_path / "db" / "tables" / "user.npz") as z:
        # the users day B trained travel; those its TTL evicted (unseen on day B) are named
        gone = set(old["user"]["keys"].tolist()) - set(full["user"]["keys"].tolist())
        assert gone and set(z["deleted"].tolist()) == gone and len(z["keys"]) > 0
    # what did not change does not travel: A's model since A's own export is empty
    m = export_run(tmp_path / "a", tmp_path / "da", workers=1, since=tmp_path / "xa")
    assert all(v["changed"] == v["deleted"] == 0 for v in m["delta_counts"].values())
    assert m["delta_counts"]["user"]["rows"] == len(old["user"]["keys"])
    a = predict(tmp_path / "xb", tiny_world / "day=02", tmp_path / "s1.parquet")
    b = predict(tmp_path / "db", tiny_world / "day=02", tmp_path / "s2.parquet")
    assert a["metrics"] == b["metrics"]
    # the base changed under the delta (re-exported), or --since is not an export: refused
    export_run(tmp_path / "a", tmp_path / "xa", workers=1)
    (tmp_path / "xa" / "manifest.json").write_text(
        (tmp_path / "xa" / "manifest.json").read_text().replace('"model"', '"model" ', 1))
    with pytest.raises(ExportError, match="is a delta on another export"):
        load_tables(tmp_path / "db")
    res = CliRunner().invoke(cli, ["export", str(tmp_path / "b"), "--out", str(tmp_path / "dc"),
                                   "--since", str(tmp_path / "b")])
    assert res.exit_code == 2 and "not a readable export manifest" in res.output
    assert "Traceback" not in res.output
