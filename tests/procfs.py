"""The process tree as /proc shows it (Linux), for tests about worker processes."""

from __future__ import annotations

import contextlib
from pathlib import Path


def child_names(pid: int) -> dict[int, str]:
    """Child pid -> process name (/proc/PID/comm) of process `pid`'s children."""
    found = {}
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        with contextlib.suppress(FileNotFoundError):  # exited while we looked
            found[int(child)] = Path(f"/proc/{child}/comm").read_text().strip()
    return found


def process_gone(pid: int) -> bool:
    """No such process, or only a zombie waiting for a reaper."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"
