"""A worker's C heap: large blocks keep pages of their own (`heap.keep_large_blocks_apart`)."""

from __future__ import annotations

import platform
import subprocess
import sys
import textwrap

import pytest

# In a fresh interpreter: one large block allocated and freed (which, left to glibc,
# raises its mmap threshold past the blocks that follow), then 40 blocks of 2 MiB,
# all freed but the last. Prints how much of the 80 MiB stayed resident.
_PROBE = textwrap.dedent("""
    import sys
    from shardproxy.heap import keep_large_blocks_apart

    def rss_kib():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))

    if sys.argv[1] == "apart":
        assert keep_large_blocks_apart()
    first = bytearray(8 << 20)
    del first
    before = rss_kib()
    blocks = [bytearray(2 << 20) for _ in range(40)]
    del blocks[:-1]
    print(rss_kib() - before)
""")


def _resident_kib_after_free(mode: str) -> int:
    result = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True,
                            text=True, check=True)
    return int(result.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt and its thresholds")
def test_freed_large_blocks_leave_the_process() -> None:
    """With the threshold pinned, 39 freed blocks of 2 MiB leave nothing resident
    but the live one; left to glibc, they stay (which is what the pin is for)."""
    apart = _resident_kib_after_free("apart")
    left_to_glibc = _resident_kib_after_free("default")
    assert apart < 8 << 10, apart
    assert left_to_glibc > 60 << 10, left_to_glibc
