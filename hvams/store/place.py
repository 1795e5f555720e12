"""Give each host only the store partitions of its servers (``hvams images place``).

In a cluster a server reads its partitions from local disk. With spread
placement server s runs on host s mod H (hosts in hostfile order; see
``distributed.topology.choose_servers``), so host h needs the partitions of
servers h, h + H, ... Each host gets ``OUT/HOST/`` with those partitions and the
store's manifest; copy it to the host and pass its path as ``--images``, or,
with a shared file system, ``--images OUT/{node}``.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from .lmdb_store import read_manifest
from .partition import partition_file, partitions_of_server


def hosts_of(hostfile: str | Path) -> list[str]:
    """Host names of an OpenMPI hostfile, in order (comments and blank lines skipped)."""
    hosts = []
    for line in Path(hostfile).read_text().splitlines():
        name = line.split("#", 1)[0].split()
        if name and name[0] not in hosts:
            hosts.append(name[0])
    if not hosts:
        raise ValueError(f"hostfile {hostfile}: no host")
    return hosts


def place(store: str | Path, servers: int, hosts: list[str], out: str | Path,
          copy: bool = False) -> dict[str, list[int]]:
    """Write ``OUT/HOST/`` for every host; the partitions each got.

    Files are hard-linked where ``out`` is on the store's file system (no space
    used), else copied; ``copy`` always copies.
    """
    store, out = Path(store), Path(out)
    num_partitions = int(read_manifest(store)["partitions"])
    placed: dict[str, list[int]] = {h: [] for h in hosts}
    for s in range(servers):
        placed[hosts[s % len(hosts)]] += partitions_of_server(s, servers, num_partitions)
    for host, parts in placed.items():
        d = out / host
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        shutil.copy2(store / "manifest.json", d / "manifest.json")
        for p in sorted(parts):
            src, dst = store / partition_file(p), d / partition_file(p)
            dst.mkdir()
            for f in src.iterdir():
                if f.name == "lock.mdb":
                    continue  # servers open partitions read-only, without a lock file
                if copy:
                    shutil.copy2(f, dst / f.name)
                else:
                    try:
                        os.link(f, dst / f.name)
                    except OSError:
                        shutil.copy2(f, dst / f.name)
        placed[host] = sorted(parts)
    return placed
