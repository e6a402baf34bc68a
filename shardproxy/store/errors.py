"""The messages of the errors the store raises, in RDBStorage's words."""

from __future__ import annotations

# RDBStorage's message for a missing row (its KeyError becomes NOT_FOUND on the wire).
NOT_FOUND = "Record does not exist."
