"""How every process of an instance logs: one format, to stderr."""

from __future__ import annotations

import logging
import sys

LOG_FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str) -> None:
    """Sets up this process's logging (a spawned worker starts without its parent's)."""
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT, stream=sys.stderr)
