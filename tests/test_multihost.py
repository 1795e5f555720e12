"""hvams across hosts: 3 fake hosts (network namespaces, TCP on 198.18.0.0/24), cluster/netns.

Real mpirun through the fake cluster's rsh agent; every host has its own hostname.
Needs root (CI is root); skipped, with the reason, only where namespaces cannot be made.
The cluster is torn down after the module, also when a test fails.
"""
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from mpi_harness import py, run_job, train_argv

from hvams.train.checkpoint import load_torch

ROOT = Path(__file__).resolve().parents[1]
NETNS = ROOT / "cluster" / "netns"
PREFIX = "hvtest"
ENV = {"HVAMS_NETNS_PREFIX": PREFIX, "HVAMS_NETNS_STATE": f"/tmp/{PREFIX}-netns"}
LAUNCH = f"{NETNS / 'mpirun.sh'} 6 --map-by node"


@pytest.fixture(scope="module")
def cluster():
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    env = {**os.environ, **ENV}
    up = subprocess.run(["bash", NETNS / "up.sh", "3"], env=env, capture_output=True, text=True,
                        timeout=60)
    try:
        if up.returncode != 0:
            pytest.skip(f"cannot make network namespaces here: {up.stderr.strip()[-300:]}")
        yield [f"{PREFIX}-h{i}" for i in (1, 2, 3)]
    finally:
        subprocess.run(["bash", NETNS / "down.sh"], env=env, timeout=60)


def _train_argv(world, out, *extra, **keys):
    return train_argv(world, out, *extra, model="dicm", freeze_backbone=True,
                      backbone_weights=Path(world) / "backbone" / "small-cnn.pt", servers=2,
                      placement="spread", batch_size=64, **keys)


def _checkpoint(run: Path):
    d = sorted(run.glob("ckpt-*"))[-1]
    dense = load_torch(d / "dense.pt")["model"]
    servers = {p.name: dict(np.load(p)) for p in sorted(d.glob("server-*.npz"))}
    return dense, servers


def _placed_store(world, tmp_path) -> Path:
    """Each fake host's share of the store (hvams images place), as a real cluster has it."""
    out = tmp_path / "placed"
    res = run_job(py("cli", "images", "place", "--store", Path(world) / "images", "--servers", 2,
                     "--hostfile", f"{ENV['HVAMS_NETNS_STATE']}/hostfile", "--out", out), timeout=60)
    assert res.returncode == 0, res.output
    return out


def test_three_hosts_spread_servers_and_equal_the_one_host_run(cluster, tiny_world, tmp_path):
    multi, one = tmp_path / "multi", tmp_path / "one"
    placed = _placed_store(tiny_world, tmp_path)
    # host 3 runs no server: it gets no partition, only the manifest
    assert not list((placed / cluster[2]).glob("part-*")) and list((placed / cluster[0]).glob("part-*"))
    res = run_job(_train_argv(tiny_world, multi, "--launch", LAUNCH, max_steps=8,
                              images=f"{placed}/{{node}}"), timeout=300, env=ENV)
    assert not res.timed_out and res.returncode == 0, res.output[-3000:]
    topo = json.loads((multi / "topology.json").read_text())
    nodes = topo["nodes"]
    assert set(nodes) == set(cluster)
    server_hosts = [nodes[r] for r in topo["servers"]]
    assert len(set(server_hosts)) == 2, f"servers share a host: {server_hosts}"
    res = run_job(_train_argv(tiny_world, one, "--local", 6, max_steps=8), timeout=300)
    assert res.returncode == 0, res.output[-3000:]
    a = json.loads((multi / "summary.json").read_text())
    b = json.loads((one / "summary.json").read_text())
    assert a["steps"] == b["steps"] == 8 and a["samples"] == b["samples"]
    # The same arithmetic in the same order, only the transport differs (TCP vs shared
    # memory): the equivalence tests' fp32 bound is far looser than what is seen (equal).
    np.testing.assert_allclose(a["losses"], b["losses"], rtol=3e-5)
    assert a["bytes"] == b["bytes"]
    (dense_a, srv_a), (dense_b, srv_b) = _checkpoint(multi), _checkpoint(one)
    assert dense_a.keys() == dense_b.keys() and srv_a.keys() == srv_b.keys() and srv_a
    for k in dense_a:
        np.testing.assert_allclose(dense_a[k].numpy(), dense_b[k].numpy(), rtol=1e-4, atol=1e-6)
    for name in srv_a:
        assert srv_a[name].keys() == srv_b[name].keys()
        for k in srv_a[name]:
            np.testing.assert_allclose(srv_a[name][k], srv_b[name][k], rtol=1e-4, atol=1e-6,
                                       err_msg=f"{name}:{k}")


def test_a_server_missing_a_partition_fails_fast_naming_it_and_its_host(cluster, tiny_world,
                                                                        tmp_path):
    placed = _placed_store(tiny_world, tmp_path)
    gone = sorted((placed / cluster[1]).glob("part-*"))[0]  # server 1's, on host 2
    import shutil

    shutil.rmtree(gone)
    # SIGTERM not a checkpoint signal: the launcher's SIGTERM would dump stacks if armed
    conf = tmp_path / "run.yaml"
    conf.write_text("checkpoint_signals: [SIGUSR1]\n")
    t0 = time.time()
    res = run_job(_train_argv(tiny_world, tmp_path / "run", "--launch", LAUNCH, "--config", conf,
                              max_steps=4, images=f"{placed}/{{node}}"), timeout=120, env=ENV)
    assert not res.timed_out and res.returncode != 0 and time.time() - t0 < 60
    line = next(ln for ln in res.output.splitlines() if "MissingPartitionError" in ln)
    assert f"server 1 on {cluster[1]}" in line and gone.name in line, line
    assert "Traceback" not in res.output
    # a start-up error is one line: the ranks the launcher terminates (SIGTERM) dump no stacks
    assert "(most recent call first)" not in res.output, res.output[-3000:]


def _host_ranks(host: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", host], capture_output=True, text=True).stdout
    pids = []
    for p in out.split():
        try:
            cmd = Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"cli" in cmd and b"train" in cmd:
            pids.append(int(p))
    return pids


def test_a_killed_host_fails_the_job_fast_naming_host_and_role(cluster, tiny_world, tmp_path):
    out = tmp_path / "run"
    cmd = _train_argv(tiny_world, out, "--launch", LAUNCH, epochs=50)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=ROOT, env={**os.environ, **ENV}, start_new_session=True)
    try:
        deadline = time.time() + 180
        while not (out / "topology.json").exists() or not _host_ranks(cluster[2]):
            assert proc.poll() is None and time.time() < deadline, "the job did not start"
            time.sleep(0.5)
        time.sleep(5)  # into training
        victims = _host_ranks(cluster[2])
        assert victims
        t0 = time.time()
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        code = proc.wait(timeout=60)
        took = time.time() - t0
        output = proc.stdout.read()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert code != 0
    assert took < 30, f"the job took {took:.0f} s to fail"
    topo = json.loads((out / "topology.json").read_text())
    on_h3 = [r for r, n in enumerate(topo["nodes"]) if n == cluster[2]]
    lines = [ln for ln in output.splitlines() if ln.startswith("hvams: rank")]
    assert lines, output[-3000:]
    assert f"on {cluster[2]} died" in lines[0]
    rank = int(lines[0].split()[2])
    assert rank in on_h3
    role = (f"server {topo['servers'].index(rank)}" if rank in topo["servers"]
            else f"worker {topo['workers'].index(rank)}")
    assert f"({role})" in lines[0]


def test_bench_network_runs_on_its_own_fake_cluster_and_tears_it_down(cluster, tiny_world,
                                                                     tmp_path):
    out, chart = tmp_path / "net", tmp_path / "net.png"
    res = run_job(py("cli", "bench", "network", "--data", tiny_world, "--batch-size", 64,
                     "--steps", 3, "--warmup", 1, "--rounds", 1, "--rates", "unlimited,100mbit",
                     "--variant", "frozen", "--strategy", "store-in-server", "--strategy", "ams",
                     "--out", out, "--chart", chart),
                 timeout=900)
    # the wires' rows: test_bench (table) and test_compression (the halved bytes of real runs)
    assert not res.timed_out and res.returncode == 0, res.output[-3000:]
    r = json.loads((out / "network.json").read_text())
    assert set(r["table"]) == {"frozen"} and r["wires"] == ["fp32"]
    rows = r["table"]["frozen"]
    for s in ("store-in-server", "ams"):
        assert rows[s]["unlimited"]["bytes_per_step"]["image_payload"] > 0, s
    assert set(rows) == {"store-in-server", "ams"} and r["hosts"] == 3
    ratio = rows["ams"]["vs_store_in_server"]
    for rate in ("unlimited", "100mbit"):
        assert ratio[rate] == pytest.approx(rows["ams"][rate]["median"]
                                            / rows["store-in-server"][rate]["median"])
    for s, row in rows.items():
        assert row["unlimited"]["slowdown"] == 1.0
        assert row["100mbit"]["slowdown"] == pytest.approx(row["100mbit"]["median"]
                                                           / row["unlimited"]["median"])
        # the same batches at every link rate: the same bytes
        assert row["100mbit"]["bytes_per_step"] == row["unlimited"]["bytes_per_step"]
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "hvbench-" not in left
