"""The label every benchmark result carries: which machine, which rank layout."""
from __future__ import annotations

import os
import platform
from pathlib import Path


def machine() -> dict:
    """Cores, memory and CPU model of this machine."""
    mem_gb = None
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/meminfo") as fh:
            mem_gb = round(int(fh.readline().split()[1]) / 2**20, 1)
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cores": os.cpu_count(), "memory_gb": mem_gb, "cpu": cpu}


def label(servers: int, workers: int) -> str:
    m = machine()
    return (f"{m['cores']} cores ({m['cpu']}), {m['memory_gb']} GB; "
            f"{servers} server + {workers} worker ranks on this one machine")



def drop_page_cache() -> bool:
    """Write back and drop the page cache (root only), so the next read comes from the disk;
    False where it cannot."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False
