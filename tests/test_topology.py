"""Rank roles, Horovod process sets and mpi4py traffic on real MPI ranks."""
import pytest

from hvams.distributed.topology import TopologyError, choose_servers
from mpi_harness import py, run_horovodrun, run_mpi

SMOKE = "hvams.distributed.smoke"


def test_choose_servers_block_and_spread():
    nodes = ["a", "a", "b", "b", "c", "c"]
    assert choose_servers(nodes, 2, "block") == [0, 1]
    assert choose_servers(nodes, 2, "spread") == [0, 2]
    assert choose_servers(nodes, 4, "spread") == [0, 1, 2, 4]
    assert choose_servers(["x"] * 4, 3, "spread") == [0, 1, 2]


@pytest.mark.parametrize("bad,msg", [(0, "at least 1"), (4, "leaves no worker"), (9, "leaves no worker")])
def test_choose_servers_rejects(bad, msg):
    with pytest.raises(TopologyError, match=msg):
        choose_servers(["n"] * 4, bad, "block")


def _check_split(res, servers, workers):
    assert res.returncode == 0, res.output
    recs = res.reports("smoke")
    assert sorted(recs) == list(range(servers + workers)), res.output
    srv = sorted(r for r, rec in recs.items() if rec["role"] == "server")
    wrk = sorted(r for r, rec in recs.items() if rec["role"] == "worker")
    assert len(srv) == servers and len(wrk) == workers
    # The set sums prove each allreduce ran over exactly its own set.
    server_sum = sum(r + 1 for r in srv)
    worker_sum = sum(10 * (r + 1) for r in wrk)
    for r, rec in recs.items():
        assert rec["role_sum"] == (server_sum if r in srv else worker_sum)
        assert rec["alltoallv_ok"] and rec["thread_multiple"], rec
        assert rec["servers"] == srv and rec["workers"] == wrk
        assert rec["role_rank"] == (srv if r in srv else wrk).index(r)
        assert rec["machine_size"] == servers + workers  # one kernel: every rank shares its cores
    # Each rank also prints its report as one line, as `hvams smoke`'s help says.
    # (counted, not split into lines: mpirun may interleave two ranks' lines)
    assert res.output.count("HVAMS-SMOKE {") == servers + workers, res.output[-2000:]
    return srv


@pytest.mark.parametrize("servers,workers", [(1, 1), (1, 3), (2, 2), (3, 1)])
def test_block_split(servers, workers):
    res = run_mpi(servers + workers, py(SMOKE, servers, "block"), timeout=120)
    assert _check_split(res, servers, workers) == list(range(servers))


@pytest.mark.parametrize("servers,workers", [(1, 1), (1, 3), (2, 2), (3, 1)])
def test_spread_split_over_fake_nodes(servers, workers):
    # Two fake nodes (MPMD groups with their own HVAMS_NODE): spread must put
    # the servers round-robin over them, block would fill node a first.
    n = servers + workers
    half = n // 2
    groups = [(n - half, {"HVAMS_NODE": "node-a"}), (half, {"HVAMS_NODE": "node-b"})]
    res = run_mpi(n, py(SMOKE, servers, "spread"), timeout=120, mpmd=[g for g in groups if g[0]])
    nodes = ["node-a"] * (n - half) + ["node-b"] * half
    srv = _check_split(res, servers, workers)
    assert srv == choose_servers(nodes, servers, "spread")
    if servers >= 2 and half:
        assert {nodes[r] for r in srv} == {"node-a", "node-b"}


def test_under_horovodrun():
    res = run_horovodrun(3, py(SMOKE, 1, "block"), timeout=150)
    _check_split(res, 1, 2)


@pytest.mark.parametrize("np_,servers,msg", [(2, 0, "at least 1"), (2, 2, "leaves no worker"),
                                              (3, 5, "leaves no worker")])
def test_bad_topology_fails_every_rank(np_, servers, msg):
    res = run_mpi(np_, py(SMOKE, servers, "block"), timeout=60)
    assert not res.timed_out, res.output
    assert res.returncode != 0
    assert res.output.count("hvams: error:") == 1, res.output
    assert msg in res.output
