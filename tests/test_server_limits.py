"""The process limits a proxy holding thousands of client connections needs."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import resource
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
from shardproxy.server import raise_open_file_limit
raise_open_file_limit()
print(resource.getrlimit(resource.RLIMIT_NOFILE)[0] == hard, min(256, hard) < hard)
"""


def test_the_open_file_limit_is_raised_to_the_hard_limit() -> None:
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                            check=True, timeout=60)
    raised, could_be_lower = result.stdout.split()
    assert could_be_lower == "True", "the hard limit leaves nothing to raise"
    assert raised == "True"
