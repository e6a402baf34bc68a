"""The proxy's process tree as /proc shows it.

Its workers (by shard index), each process's resident memory (VmRSS) and open-file
limit, and the established TCP connections on the proxy's port, with the worker
holding each.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from bench import counters


def workers(root: int) -> dict[int, int]:
    """Worker shard index -> pid (workers name themselves `shardproxy-w<index>`)."""
    return {int(name[len("shardproxy-w"):]): pid for pid, name in counters.tree_names(root).items()
            if name.startswith("shardproxy-w")}


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0  # a zombie has no VmRSS line


def label(pid: int, name: str, root: int) -> str:
    """A readable name: the supervisor, a worker, or multiprocessing's resource tracker."""
    if pid == root:
        return f"supervisor[{pid}]"
    with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as f:
        if b"resource_tracker" in f.read():
            return f"resource_tracker[{pid}]"
    return f"{name}[{pid}]"


def tree_rss(root: int) -> dict[str, Any]:
    per_process = {}
    for pid, name in counters.tree_names(root).items():
        with contextlib.suppress(OSError):
            per_process[label(pid, name, root)] = rss_kib(pid)
    return {"total_kib": sum(per_process.values()), "processes": per_process}


def nofile_limit(pid: int) -> tuple[int, int]:
    """The (soft, hard) open-file limit of a process."""
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return int(soft), int(hard)
    raise ValueError(f"no open-file limit for {pid}")


ESTABLISHED, LISTEN = "01", "0A"  # socket states as /proc/net/tcp writes them


def tcp_sockets(port: int, state: str) -> list[int]:
    """Inodes of the TCP sockets in `state` whose local port is `port`.

    A connection still in a listener's accept queue is established but has no file
    yet: its inode is 0.
    """
    inodes = []
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(path) as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[3] == state and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.append(int(fields[9]))
    return inodes


def established_in_kernel(port: int) -> int:
    """Established connections to `port`, accepted by a worker or still queued."""
    return len(tcp_sockets(port, ESTABLISHED))


def connections_by_worker(root: int, port: int) -> dict[str, int]:
    """Established client connections held open by each worker (its socket fds)."""
    inodes = set(tcp_sockets(port, ESTABLISHED))
    split = {}
    for index, pid in sorted(workers(root).items()):
        held = 0
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                    held += link.startswith("socket:[") and int(link[8:-1]) in inodes
        split[f"w{index}"] = held
    return split
