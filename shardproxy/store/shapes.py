"""How long the lists in a statement are: parts under the backends' parameter
limits, and sizes rounded up so that few shapes of a statement exist.

Each shape of a statement (one per length of its lists) is rendered and kept
once; rendering one costs tens of milliseconds, and the lengths follow the load.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any, TypeVar

T = TypeVar("T")

# Ids per IN-list: far below every backend's parameter limit (SQLite's 32 766).
CHUNK = 2000


def chunks(items: Sequence[Any], size: int = CHUNK) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def statement_size(count: int) -> int:
    """The size of statement that serves `count` rows, ids or studies: the next power
    of two, so that a few shapes are rendered and kept rather than one per batch
    size. The caller fills the places past `count` with values that match nothing,
    or repeats (`padded`)."""
    return 1 << (count - 1).bit_length()


def padded(items: Sequence[T]) -> list[T]:
    """`items` padded to `statement_size` by repeating the last (empty stays empty):
    for lists where a repeat means nothing, an IN-list or the arms of a CASE."""
    if not items:
        return []
    return [*items, *itertools.repeat(items[-1], statement_size(len(items)) - len(items))]
