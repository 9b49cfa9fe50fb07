"""``process_*`` metrics as Go's ``prometheus.NewProcessCollector`` reports them (Linux).

Read from ``/proc/self`` when scraped; names and HELP texts are the Go client's.
"""

from __future__ import annotations

import os
import resource

from keel_store.server.exposition import Family

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")
_UNLIMITED = float(2**64 - 1)  # Go reports RLIM_INFINITY as uint64 max


def _boot_time() -> float:
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("btime "):
                return float(line.split()[1])
    return 0.0


def _limit(which: int) -> float:
    soft = resource.getrlimit(which)[0]
    return _UNLIMITED if soft == resource.RLIM_INFINITY else float(soft)


def collect() -> list[Family]:
    with open("/proc/self/stat") as f:
        # Fields after the command name (which may hold spaces), numbered from 3.
        fields = f.read().rpartition(")")[2].split()
    utime, stime = int(fields[11]), int(fields[12])
    start_ticks, vsize, rss = int(fields[19]), int(fields[20]), int(fields[21])
    return [
        Family(
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
        ).add((utime + stime) / _TICKS),
        Family("process_open_fds", "gauge", "Number of open file descriptors.").add(
            len(os.listdir("/proc/self/fd"))
        ),
        Family("process_max_fds", "gauge", "Maximum number of open file descriptors.").add(
            _limit(resource.RLIMIT_NOFILE)
        ),
        Family("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.").add(vsize),
        Family(
            "process_virtual_memory_max_bytes",
            "gauge",
            "Maximum amount of virtual memory available in bytes.",
        ).add(_limit(resource.RLIMIT_AS)),
        Family("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.").add(
            rss * _PAGE
        ),
        Family(
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
        ).add(_boot_time() + start_ticks / _TICKS),
    ]
