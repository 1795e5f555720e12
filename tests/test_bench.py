"""Smoke runs of the three bench commands on the tiny world: their output must add up.

Timing is not asserted (benchmarks report it); what is asserted is that the
tables are computed from the runs: byte figures match the protocol's exact
per-image sizes, ratios match their parts, and quality figures match the
runs' own metrics.
"""
import json
import math
import shutil

import pytest
import yaml

from mpi_harness import py, run_job

PNG = b"\x89PNG\r\n\x1a\n"


def bench(*args, timeout=600):
    res = run_job(py("cli", "bench", *args), timeout)
    assert not res.timed_out, res.output[-3000:]
    return res


def test_bench_comm_counts_exact_bytes(tiny_world, tmp_path):
    out = tmp_path / "comm"
    res = bench("comm", "--data", tiny_world, "--batch-size", 64, "--steps", 2, "--out", out)
    assert res.returncode == 0, res.output[-3000:]
    r = json.loads((out / "comm.json").read_text())
    s = r["strategies"]
    assert set(s) == {"store-in-worker", "store-in-server", "ams"}
    assert r["same_batches"] and s["ams"]["samples_per_step"] == 128
    uniq = s["ams"]["worker_unique_images_per_step"]
    assert uniq > 0 and uniq == s["store-in-server"]["worker_unique_images_per_step"]
    # Exact payloads: 8 B keys; AMS 12 x fp32 each way; store-in-server 32x32x3 uint8 + validity.
    assert s["ams"]["by_category"]["image_keys"] == pytest.approx(8 * uniq)
    assert s["ams"]["by_category"]["image_payload"] == pytest.approx(48 * uniq)
    assert s["ams"]["by_category"]["image_grads"] == pytest.approx(48 * uniq)
    assert s["store-in-server"]["by_category"]["image_payload"] == pytest.approx(3073 * uniq)
    assert s["store-in-worker"]["image"] == 0
    assert s["store-in-worker"]["by_category"].get("image_payload", 0) == 0
    # ID traffic does not depend on the strategy.
    for cat in ("id_keys", "id_rows", "id_grads"):
        assert s["ams"]["by_category"][cat] == s["store-in-server"]["by_category"][cat] > 0
    for t in s.values():
        assert t["total"] == pytest.approx(sum(t["by_category"].values()))
    assert r["ratio_total_sis_over_ams"] == pytest.approx(s["store-in-server"]["total"] / s["ams"]["total"])
    per = {row["form"].split(",")[0]: row for row in r["per_image"]}
    assert per["vgg16 fc6 features"]["bytes"] == 16384
    assert per["AMS embedding"]["x_smaller_than_4096d"] == pytest.approx(16384 / 48)
    assert 25 < r["mean_behaviors_per_sample"] < 35
    md = (out / "comm.md").read_text()
    assert md.startswith("Command: `hvams bench comm") and "| **total** |" in md


def test_bench_speed_reports_rates_and_breakdown(tiny_world, tmp_path):
    out, chart = tmp_path / "speed", tmp_path / "speed.png"
    res = bench("speed", "--data", tiny_world, "--batch-size", 64, "--steps", 5, "--warmup", 1,
                "--rounds", 1, "--variant", "frozen", "--out", out, "--chart", chart)
    assert res.returncode == 0, res.output[-3000:]
    r = json.loads((out / "speed.json").read_text())
    med = r["median"]["frozen"]
    assert set(med) == {"store-in-worker", "store-in-server", "ams", "one process"}
    assert all(v > 0 and math.isfinite(v) for v in med.values())
    ratios = r["ratios"]["frozen"]
    assert ratios["ams_over_store_in_worker"] == pytest.approx(med["ams"] / med["store-in-worker"])
    assert ratios["ams_step_over_one_process_step"] == pytest.approx(med["one process"] / med["ams"])
    ams = r["stage_s_per_step"]["frozen"]["ams"]
    assert {"wait", "comm", "decode", "image_compute"} <= set(ams["server"])
    assert {"read", "pull", "compute", "push", "allreduce_step"} <= set(ams["worker"])
    # store-in-worker decodes on the workers, not on the servers.
    siw = r["stage_s_per_step"]["frozen"]["store-in-worker"]
    assert "decode" in siw["worker"] and "decode" not in siw["server"]
    assert chart.read_bytes()[:8] == PNG


def test_bench_quality_matches_the_runs(tiny_world, tmp_path):
    out, chart = tmp_path / "quality", tmp_path / "auc.png"
    res = bench("quality", "--data", tiny_world, "--batch-size", 64, "--models", "dicm mqap,true-attr",
                "--seeds", "0,1", "--eval-every", 10, "--out", out, "--chart", chart)
    assert res.returncode == 0, res.output[-3000:]
    r = json.loads((out / "quality.json").read_text())
    # ID-only added: the gap is measured from it
    assert list(r["table"]) == ["idonly", "dicm mqap", "true-attr"]
    final = {}
    for name, slug in (("idonly", "idonly"), ("dicm mqap", "dicm-mqap"), ("true-attr", "true-attr")):
        finals = []
        for seed in (0, 1):
            lines = (out / f"{slug}-seed{seed}" / "metrics.jsonl").read_text().splitlines()
            recs = [json.loads(x) for x in lines]
            assert len(recs) >= 2  # the curve: every 10 steps and at the end
            assert r["runs"][name][str(seed)]["curve"][-1][1] == recs[-1]["auc"]
            finals.append(recs[-1]["auc"])
        mean, std = r["table"][name]["auc"]
        assert mean == pytest.approx(sum(finals) / 2)
        assert std == pytest.approx(abs(finals[0] - finals[1]) / math.sqrt(2))
        final[name] = recs[-1]  # seed 1
    assert r["table"]["idonly"]["gap_closed"][0] == 0
    # the ceiling run read the truth, not pixels; efficiency is per seed against it
    cfg = (out / "true-attr-seed1" / "config.yaml").read_text()
    assert "backbone: true-attributes" in cfg and "small-cnn.pt" not in cfg
    effs, gains = [], []
    for seed in (0, 1):
        auc = {n: json.loads((out / f"{n.replace(' ', '-')}-seed{seed}" / "metrics.jsonl")
                             .read_text().splitlines()[-1])["auc"] for n in final}
        gains.append(auc["true-attr"] - auc["idonly"])
        effs.append((auc["dicm mqap"] - auc["idonly"]) / gains[-1])
    if min(gains) > 0:
        assert r["table"]["dicm mqap"]["reading_efficiency"][0] == pytest.approx(sum(effs) / 2)
        assert "mqap_image_reading_efficiency_90pct" in r["targets"]
    else:  # the ceiling did not beat ID-only in a seed: no share of it is reported
        assert r["table"]["dicm mqap"]["reading_efficiency"] is None
        assert "mqap_image_reading_efficiency_90pct" not in r["targets"]
    assert "reading_efficiency" not in r["table"]["true-attr"]
    md = (out / "quality.md").read_text()
    assert "| model | test AUC |" in md and "image-reading efficiency" in md
    assert "mqap_closes_80pct_of_gap" in r["targets"]
    assert chart.read_bytes()[:8] == PNG


def test_bench_quality_rejects_unknown_model(tiny_world, tmp_path):
    res = bench("quality", "--data", tiny_world, "--models", "dicm median", "--out", tmp_path, timeout=60)
    assert res.returncode == 2 and "unknown model" in res.output


def test_finished_run_is_reused_only_for_the_same_config(tiny_world, tmp_path):
    from dataclasses import replace

    from hvams.bench.jobs import finished_run, job_config
    from hvams.config import TrainConfig

    cfg = TrainConfig(data=str(tiny_world), out=str(tmp_path / "run"), model="din")
    assert finished_run(cfg, 60) is None  # nothing there yet
    (tmp_path / "run").mkdir()
    job_config(cfg, 60).save(tmp_path / "run" / "job-config.yaml")
    assert finished_run(cfg, 60) is None  # no summary.json: the run did not finish
    (tmp_path / "run" / "summary.json").write_text('{"steps": 3}')
    (tmp_path / "run" / "metrics.jsonl").write_text('{"auc": 0.7}\n')
    done = finished_run(cfg, 60)
    assert done["summary"] == {"steps": 3} and done["metrics"] == [{"auc": 0.7}]
    assert finished_run(replace(cfg, step_timeout=5, progress=True), 60) is not None
    moved = tmp_path / "moved"
    shutil.copytree(cfg.out, moved)  # a bench directory moved elsewhere is still reused
    assert finished_run(replace(cfg, out=str(moved)), 60)["out"] == str(moved)
    assert finished_run(replace(cfg, seed=1), 60) is None
    assert finished_run(replace(cfg, eval_every=10), 60) is None


def test_no_efficiency_against_a_ceiling_that_does_not_beat_id_only():
    from hvams.bench.quality import format_quality, quality_table, targets

    def run(*aucs):
        return {s: {"final": {"auc": a, "gauc": a, "new_ad_auc": a, "oracle_auc": 0.8}}
                for s, a in enumerate(aucs)}

    runs = {"idonly": run(0.70, 0.70), "dicm mqap": run(0.72, 0.71), "true-attr": run(0.74, 0.69)}
    table = quality_table(runs, [0, 1])
    assert table["dicm mqap"]["reading_efficiency"] is None  # seed 1's ceiling lost to ID-only
    assert table["dicm mqap"]["gap_closed"][0] == pytest.approx((0.2 + 0.1) / 2)
    assert "mqap_image_reading_efficiency_90pct" not in targets(table)
    runs["true-attr"] = run(0.74, 0.72)
    assert table_eff(quality_table(runs, [0, 1])) == pytest.approx((0.5 + 0.5) / 2)
    md = format_quality({"table": table, "seeds": [0, 1], "targets": targets(table)})
    assert "| dicm mqap |" in md and "| – | – |" in md


def table_eff(table):
    return table["dicm mqap"]["reading_efficiency"][0]


def test_bench_lifecycle_trains_day_by_day_and_reports_each_day(tiny_world, tmp_path):
    """Two settings over the tiny world's days (train day 0 then 1, each tested on the next):
    each day continues the day before, the table's figures are the runs' own, and the
    continuing-speed and loading checks ran."""
    out, chart = tmp_path / "lc", tmp_path / "lc.png"
    res = bench("lifecycle", "--data", tiny_world, "--batch-size", 64, "--local", 3,
                "--setting", "off", "--setting", "ttl-3", "--speed-pairs", 1, "--out", out,
                "--chart", chart, timeout=900)
    assert res.returncode == 0, res.output[-3000:]
    r = json.loads((out / "lifecycle.json").read_text())
    assert r["days"] == ["day=00", "day=01", "day=02"] and set(r["runs"]) == {"off", "ttl-3"}
    for name, recs in r["runs"].items():
        assert [x["day"] for x in recs] == ["day=00", "day=01"]
        cfg = yaml.safe_load((out / name / "day=01" / "config.yaml").read_text())
        assert cfg["init_from"].endswith(f"{name}/day=00") and cfg["train_days"] == ["day=01"]
        metrics = [json.loads(x) for x in (out / name / "day=01" / "metrics.jsonl")
                   .read_text().splitlines()]
        assert recs[-1]["auc"] == metrics[-1]["auc"] and metrics[-1]["day"] == "day=02"
        assert recs[-1]["ckpt_bytes"] > 0 and all(v > 0 for v in recs[-1]["live_rows"].values())
    assert r["summary"]["off"]["auc_cost"] == 0
    assert len(r["speed"]["inside_one_run"]) == len(r["speed"]["init_from"]) == 1
    assert r["load"]["rows"] > 0 and r["load"]["restore_s"] > 0
    assert (out / "lifecycle.md").read_text().startswith("Command: `hvams bench lifecycle")
    assert chart.read_bytes().startswith(PNG)
    # --reuse resumes: the finished day runs are kept, with their own figures and wall times
    again = bench("lifecycle", "--data", tiny_world, "--batch-size", 64, "--local", 3,
                  "--setting", "off", "--speed-pairs", 0, "--out", out, "--reuse", timeout=600)
    assert again.returncode == 0, again.output[-3000:]
    assert again.output.count("reusing the finished run") == 2
    kept = json.loads((out / "lifecycle.json").read_text())["runs"]["off"]
    assert json.dumps(kept) == json.dumps(r["runs"]["off"])   # as text: new-ad AUC may be NaN


def test_bench_shard_measures_each_size_against_its_bound(tmp_path):
    """Two small shards: every rate and bytes-per-row figure is the run's own (rows 104 B raw
    + keys, an index of two int64 per slot at a load factor of at most 1/2), both baselines ran
    and found the same rows, the checkpoint round-trip loaded every row, and the table names
    each size."""
    out, chart = tmp_path / "sh", tmp_path / "sh.png"
    res = bench("shard", "--rows", "20K", "--rows", "50000", "--batches", 3,
                "--ids-per-batch", 100000, "--dict-max", 20000, "--scratch", tmp_path / "scratch",
                "--out", out, "--chart", chart, timeout=600)
    assert res.returncode == 0, res.output[-3000:]
    r = json.loads((out / "shard.json").read_text())
    assert [s["rows"] for s in r["sizes"]] == [20000, 50000] and r["stopped"] is None
    assert r["limits"]["copy_gb_s"] > 0 and r["limits"]["random_m_s"] > 0
    for s in r["sizes"]:
        assert s["distinct_per_batch"] == 7000
        assert set(s["rates"]) == {"lookup", "index_insert", "insert", "gather", "update"}
        assert all(v > 0 for v in s["rates"].values())
        b = s["bytes_per_row"]
        assert b["raw"] == 96 and 32 <= b["index"] < 64 and b["total"] == 104 + b["index"]
        assert s["mch"]["lookup"] > 0
        assert s["checkpoint"]["bytes"] > 104 * s["rows"] and s["checkpoint"]["load_gb_s"] > 0
        # deltas of 1% and 5% of the rows: a changed row costs its place (8 B) beyond a full
        # checkpoint's row, and the base + deltas restored every row
        d1, d5 = s["checkpoint"]["deltas"]
        assert (d1["fraction"], d5["fraction"]) == (0.01, 0.05)
        assert d5["rows"] == (s["rows"] + 3 * 7000) * 5 // 100   # with the rows inserted
        assert 112 * d5["rows"] < d5["bytes"] < 112 * d5["rows"] + 8192
        assert d1["bytes"] < d5["bytes"] < 0.1 * s["checkpoint"]["bytes"]
        assert s["checkpoint"]["chain_load_s"] > 0
    assert "dict" in r["sizes"][0] and "dict" not in r["sizes"][1]   # --dict-max
    md = (out / "shard.md").read_text()
    assert md.startswith("Command: `hvams bench shard") and "| 50,000 |" in md
    assert "Delta checkpoints on the full one" in md
    assert all(s["bounds"]["lookup"]["lines_per_key"] == 1 and s["limits"]["random_m_s"] > 0
               for s in r["sizes"])
    assert chart.read_bytes().startswith(PNG)
    bad = bench("shard", "--rows", "12x", "--out", out)
    assert bad.returncode == 2 and "'12x' is not a row count" in bad.output


def test_backbone_rows_get_a_mean_minus_std_target_and_the_split_names_its_row():
    from hvams.bench.quality import MODELS, breakdown, format_quality, quality_table, targets

    assert MODELS["dicm scratch"][2] == {"backbone_weights": None, "freeze_backbone": False}
    assert MODELS["dicm frozen"][2]["freeze_backbone"] and not MODELS["dicm tuned"][2]["freeze_backbone"]

    def run(*aucs):
        return {s: {"final": {"auc": a, "gauc": a, "new_ad_auc": a, "oracle_auc": 0.8}}
                for s, a in enumerate(aucs)}

    runs = {"idonly": run(0.70, 0.70, 0.70), "dicm frozen": run(0.718, 0.717, 0.719),
            "dicm tuned": run(0.719, 0.712, 0.719), "true-attr": run(0.72, 0.72, 0.72)}
    table = quality_table(runs, [0, 1, 2])
    t = targets(table)
    frozen = t["dicm_frozen_reading_efficiency_80pct_mean_minus_std"]
    assert frozen["value"] == pytest.approx(0.9 - 0.05) and frozen["holds"]
    tuned = t["dicm_tuned_reading_efficiency_80pct_mean_minus_std"]  # 0.95, 0.6, 0.95
    assert tuned["value"] < 0.8 and not tuned["holds"]
    b = breakdown(table)  # no "dicm mqap" row: the split is the frozen row's
    assert b["reader"] == "dicm frozen"
    assert b["ceiling_closes"] == pytest.approx(0.2) and b["image_half"] == pytest.approx(0.02)
    md = format_quality({"table": table, "seeds": [0, 1, 2], "targets": t})
    assert "dicm frozen closes 18.0%" in md


def test_bench_quality_refuses_a_tuned_row_without_weights(tmp_path):
    from hvams.data.mosaic import mosaic_preset, synthesize_mosaic

    world = tmp_path / "w"
    synthesize_mosaic(world, mosaic_preset("mosaic-tiny", shoppers=50, listings=40, sellers=4,
                                           samples_per_day=200), log=lambda m: None)
    res = bench("quality", "--data", world, "--models", "idonly,dicm tuned", "--out",
                tmp_path / "q", timeout=60)
    assert res.returncode == 2 and "dicm tuned" in res.output and "--backbone-weights" in res.output
    assert "Traceback" not in res.output


@pytest.mark.parametrize("file_sets, flags, frozen, key", [
    (None, [], True, "freeze_backbone"), (False, [], False, "freeze_backbone"),
    (False, [], False, "freeze-backbone"), (False, ["--freeze-backbone"], True, "freeze_backbone"),
    (True, ["--train-backbone"], False, "freeze_backbone")])
def test_bench_quality_takes_freeze_backbone_from_the_config_file(tmp_path, monkeypatch,
                                                                  file_sets, flags, frozen, key):
    """The bench's frozen default applies only where neither the flag nor --config says
    (in either spelling the config file accepts)."""
    from click.testing import CliRunner

    import hvams.bench.quality as quality
    from cli.main import main

    seen = {}

    def fake_run(cfg, *args, **kwargs):
        seen["frozen"] = cfg.freeze_backbone
        raise SystemExit(0)  # the configuration is what is under test, not a run

    monkeypatch.setattr(quality, "run_quality", fake_run)
    conf = tmp_path / "c.yaml"
    conf.write_text(yaml.safe_dump({} if file_sets is None else {key: file_sets}))
    data = tmp_path / "d"
    data.mkdir()
    r = CliRunner().invoke(main, ["bench", "quality", "--data", str(data), "--config", str(conf),
                                  "--models", "dicm mqap", "--out", str(tmp_path / "q"), *flags])
    assert r.exit_code == 0, r.output
    assert seen["frozen"] is frozen


def test_bench_network_tables_each_wire_and_strategy_from_its_runs(tmp_path, monkeypatch):
    """The table logic of ``bench network`` without the fake cluster (the run on one is in
    test_multihost): each wire's runs get its compression keys and a row of their own, and
    every ratio and slowdown is computed from those runs' step times."""
    from contextlib import nullcontext

    from hvams.bench import network
    from hvams.config import TrainConfig

    link, seen = {}, []
    speed = {"store-in-server": 100.0, "ams": 300.0}       # samples/s on unlimited links
    monkeypatch.setattr(network, "fake_cluster", lambda hosts: nullcontext())
    monkeypatch.setattr(network, "_script", lambda name, *a: link.update(rate=a[0])
                        if name == "rate.sh" else None)

    def train_job(cfg, ranks, timeout, launch, env):
        seen.append((cfg.strategy, cfg.row_compression, cfg.allreduce_compression, link["rate"]))
        half = 0.5 if cfg.row_compression == "fp16" else 1.0
        slow = 1.0 if link["rate"] == "none" else 4.0 * half   # the links cost what travels
        rounds = sum(s == (cfg.strategy, cfg.row_compression, link["rate"])
                     for s in ((a, b, d) for a, b, _, d in seen))
        step = 64 * 2 / speed[cfg.strategy] * slow * (1 + 0.1 * rounds)
        return {"summary": {"samples": 64 * 2 * cfg.max_steps, "steps": cfg.max_steps,
                            "step_s": [9.0] + [step] * (cfg.max_steps - 1),
                            "bytes_per_step": {"id_rows": 4000 * half, "image_payload": 96.0},
                            "stage_s": {"worker": {"lookup": 0.1}},
                            "servers": 2, "workers": 2}}

    monkeypatch.setattr(network, "train_job", train_job)
    r = network.run_network(TrainConfig(data=str(tmp_path), batch_size=64), hosts=3, ranks=4,
                            steps=3, warmup=1, rounds=2, out=tmp_path, rates=("unlimited", "100mbit"),
                            variants=("frozen",), wires=("fp32", "fp16-rows"),
                            strategies=("store-in-server", "ams"))
    assert len(seen) == 2 * 2 * 2 * 2                      # rounds x rates x wires x strategies
    assert {(c, a) for _, c, a, _ in seen} == {("none", "none"), ("fp16", "none")}
    assert set(r["table"]) == {"frozen", "frozen, fp16-rows"}
    assert r["labels"]["frozen, fp16-rows"] == {"backbone": "frozen", "wire": "fp16-rows"}
    full, half = r["table"]["frozen"], r["table"]["frozen, fp16-rows"]
    for s in ("store-in-server", "ams"):
        assert half[s]["unlimited"]["bytes_per_step"]["id_rows"] == 2000
        assert full[s]["100mbit"]["slowdown"] == pytest.approx(1 / 4)
        assert half[s]["100mbit"]["slowdown"] == pytest.approx(1 / 2)
        # round 2 ran 1.2/1.1 slower than round 1: the median of the two rates
        assert full[s]["unlimited"]["median"] == pytest.approx(
            (speed[s] / 1.1 + speed[s] / 1.2) / 2)
    for row in (full, half):
        assert row["ams"]["vs_store_in_server"] == {"unlimited": pytest.approx(3.0),
                                                    "100mbit": pytest.approx(3.0)}
    assert json.loads((tmp_path / "network.json").read_text())["table"].keys() == r["table"].keys()
    text = network.format_network(r)
    assert "| frozen, fp16-rows | ams |" in text and "frozen: AMS / store-in-server" in text
