"""Finished trials of one study, packed: their encodings back to back in a few large blobs.

A finished trial never changes, so all a cache needs of it is its encoded `Trial`
message. Held as one bytes object each, in a dict keyed by id, a trial of one
parameter costs about 170 bytes besides its ~200 of encoding (the bytes object's
header, the holder, the int key, the dict slot), and a study's first read leaves
those small objects interleaved with the freed transients of the read (driver
rows, TrialRows), which keeps much of that memory resident. Packed, a trial costs
its encoding plus 12 bytes (its id and its offset in two arrays), and the blobs
are large allocations of their own.

Each trial is stored framed as an element of GetTrialsReply's repeated `trials`
field (tag, length, message), so the trials of any id range are one slice of a
blob that is already a valid piece of a GetTrialsReply: a full read of a study is
a few slices joined, not a copy per trial.

Trials live in leaves of up to LEAF_TRIALS trials or LEAF_BYTES bytes, ordered by
id and not overlapping: a leaf is its trial ids (ascending), the offset of each
trial's frame in its blob, and the blob. Trials are added in sorted batches;
those beyond the last id fill the last leaf and then new ones; a trial that
finished after trials with higher ids (a "straggler") is inserted into the leaf
that covers its id, which is rebuilt (split when it grows past twice the bounds).
So adding a trial costs O(leaf) at most, never O(study).

A `PackedTrials` never changes once built: adding returns a new one sharing the
untouched leaves, so readers can use one while the next is built.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterator, Sequence
from itertools import accumulate, repeat
from operator import add, sub
from typing import NamedTuple

from shardproxy import codec

# A leaf's bounds: small enough that rebuilding one (for a trial inserted into it)
# is cheap, large enough that the leaves' own objects cost nothing per trial.
LEAF_TRIALS = 4096
LEAF_BYTES = 1 << 20

Buffer = bytes | memoryview


class _Leaf(NamedTuple):
    ids: array[int]  # ascending
    offsets: array[int]  # len(ids) + 1: trial k's frame is blob[offsets[k]:offsets[k + 1]]
    blob: bytes

    def frame(self, k: int) -> bytes:
        return self.blob[self.offsets[k] : self.offsets[k + 1]]


_EMPTY_LEAF = _Leaf(array("q"), array("I", [0]), b"")


class PackedTrials:
    """Finished trials' encodings by id, packed in leaves; immutable."""

    __slots__ = ("_leaves", "_last_ids", "_count", "nbytes")

    def __init__(self, leaves: Sequence[_Leaf] = ()) -> None:
        self._leaves = tuple(leaves)
        self._last_ids = [leaf.ids[-1] for leaf in self._leaves]  # ascending
        self._count = sum(len(leaf.ids) for leaf in self._leaves)
        self.nbytes = sum(len(leaf.blob) for leaf in self._leaves)  # frames included

    def __len__(self) -> int:
        return self._count

    @property
    def leaf_count(self) -> int:
        return len(self._leaves)

    # -- reads -----------------------------------------------------------------

    def __contains__(self, trial_id: int) -> bool:
        return self._find(trial_id) is not None

    def trial_bytes(self, trial_id: int) -> bytes | None:
        """The trial's encoded `Trial` message, or None if it is not here."""
        found = self._find(trial_id)
        if found is None:
            return None
        leaf, k = found
        start = _payload_start(leaf.blob, leaf.offsets[k])
        return leaf.blob[start : leaf.offsets[k + 1]]

    def frame(self, trial_id: int) -> bytes | None:
        """The trial as one framed element of GetTrialsReply, or None."""
        found = self._find(trial_id)
        return None if found is None else found[0].frame(found[1])

    def any_between(self, low: int, high: int) -> bool:
        """Whether a trial with low < id < high is here."""
        index = bisect_right(self._last_ids, low)
        if index == len(self._leaves):
            return False
        ids = self._leaves[index].ids  # its last id is above low: the first such is here
        return ids[bisect_right(ids, low)] < high

    def frames_between(self, low: int, high: int | None, out: list[Buffer]) -> None:
        """Appends to `out` the frames of the trials with low < id < high (no upper
        bound if `high` is None), in id order: one buffer per leaf touched."""
        for leaf, start, end in self._ranges(low, high):
            if start == 0 and end == len(leaf.ids):
                out.append(leaf.blob)
            else:
                out.append(memoryview(leaf.blob)[leaf.offsets[start] : leaf.offsets[end]])

    def payloads_between(self, low: int, high: int | None, out: list[bytes]) -> None:
        """As `frames_between`, but one encoded `Trial` message per trial."""
        for leaf, start, end in self._ranges(low, high):
            blob, offsets = leaf.blob, leaf.offsets
            out.extend(blob[_payload_start(blob, offsets[k]) : offsets[k + 1]]
                       for k in range(start, end))

    def id_at(self, rank: int) -> int:
        """The id of rank `rank` (0-based) in id order; IndexError past the end.
        O(leaves): a few dozen at 100 000 trials."""
        if rank >= 0:
            for leaf in self._leaves:
                if rank < len(leaf.ids):
                    return leaf.ids[rank]
                rank -= len(leaf.ids)
        raise IndexError("no trial of that rank here")

    def count_below(self, trial_id: int) -> int:
        """How many of the trials here have an id below `trial_id`; O(leaves)."""
        index = bisect_left(self._last_ids, trial_id)
        below = sum(len(leaf.ids) for leaf in self._leaves[:index])
        if index < len(self._leaves):
            below += bisect_left(self._leaves[index].ids, trial_id)
        return below

    def _find(self, trial_id: int) -> tuple[_Leaf, int] | None:
        index = bisect_left(self._last_ids, trial_id)
        if index == len(self._leaves):
            return None
        leaf = self._leaves[index]
        k = bisect_left(leaf.ids, trial_id)
        return (leaf, k) if k < len(leaf.ids) and leaf.ids[k] == trial_id else None

    def _ranges(self, low: int, high: int | None) -> Iterator[tuple[_Leaf, int, int]]:
        """(leaf, start, end) for the trials with low < id < high, by id."""
        leaves = self._leaves
        for index in range(bisect_right(self._last_ids, low), len(leaves)):
            leaf = leaves[index]
            ids = leaf.ids
            start = bisect_right(ids, low) if ids[0] <= low else 0
            if high is not None and ids[-1] >= high:
                end = bisect_left(ids, high)
                if end > start:
                    yield leaf, start, end
                return
            yield leaf, start, len(ids)

    def relocated(self) -> PackedTrials:
        """The same trials in new leaves, their arrays copied (the blobs are shared)."""
        return PackedTrials([_Leaf(array("q", leaf.ids), array("I", leaf.offsets), leaf.blob)
                             for leaf in self._leaves])

    # -- adding ----------------------------------------------------------------

    def with_added(self, ids: Sequence[int], encodings: Sequence[bytes]) -> PackedTrials:
        """A new PackedTrials with the trials of `ids` (ascending, none of them here
        yet) added, with their encoded `Trial` messages.

        (Two sequences rather than one of pairs: a first read packs its trials a
        few thousand at a time, and as many pairs would end in the interpreter's
        free list of tuples, where they keep the freed memory around them resident.)
        """
        if not ids:
            return self
        if not self._leaves:
            return PackedTrials(_appended(None, ids, encodings))
        leaves = list(self._leaves)
        split = bisect_right(ids, self._last_ids[-1])  # the rest are beyond every leaf
        # Stragglers go into the leaf covering their id, from the last leaf down, so
        # that a leaf split in two does not move the indexes still to be visited.
        targets = [bisect_left(self._last_ids, trial_id) for trial_id in ids[:split]]
        for start, end in reversed(list(_runs(targets))):
            index = targets[start]
            merged = _inserted(leaves[index], ids[start:end], encodings[start:end])
            leaves[index : index + 1] = _split_if_large(merged)
        if split < len(ids):
            leaves.extend(_appended(leaves.pop(), ids[split:], encodings[split:]))
        return PackedTrials(leaves)


def _runs(keys: Sequence[int]) -> Iterator[tuple[int, int]]:
    """(start, end) of each run of equal values in `keys`, which never decrease."""
    start = 0
    while start < len(keys):
        end = bisect_right(keys, keys[start], start)
        yield start, end
        start = end


def _appended(tail: _Leaf | None, ids: Sequence[int], encodings: Sequence[bytes]) -> list[_Leaf]:
    """The tail leaf with the trials (all beyond it) added, and new leaves for the rest."""
    result = []
    start = 0
    if tail is not None:
        start = _fitting(encodings, 0, LEAF_TRIALS - len(tail.ids), LEAF_BYTES - len(tail.blob))
        result.append(_inserted(tail, ids[:start], encodings[:start]) if start else tail)
    while start < len(ids):
        end = start + max(1, _fitting(encodings, start, LEAF_TRIALS, LEAF_BYTES))
        result.append(_inserted(_EMPTY_LEAF, ids[start:end], encodings[start:end]))
        start = end
    return result


def _fitting(encodings: Sequence[bytes], start: int, room: int, room_bytes: int) -> int:
    """How many of encodings[start:] fit in `room` trials and `room_bytes` bytes."""
    count = 0
    for encoded in encodings[start : start + max(room, 0)]:
        room_bytes -= _frame_size(len(encoded))
        if room_bytes < 0:
            break
        count += 1
    return count


def _inserted(leaf: _Leaf, ids: Sequence[int], encodings: Sequence[bytes]) -> _Leaf:
    """A new leaf: `leaf` with the trials of `ids` (ascending, none in it) merged in.

    Copies the leaf once; each run of trials that lands between the same two of the
    leaf's trials is framed with one call of the codec."""
    leaf_ids, offsets, blob = leaf
    view = memoryview(blob)
    new_ids, new_offsets = array("q"), array("I")
    pieces: list[Buffer] = []
    shift = 0  # bytes inserted so far: how far the leaf's later frames move
    done = 0  # the leaf's trials copied so far
    positions = [bisect_left(leaf_ids, trial_id) for trial_id in ids]
    for start, end in _runs(positions):
        position = positions[start]
        added = encodings[start:end]
        new_ids.extend(leaf_ids[done:position])
        new_offsets.extend(_shifted(offsets[done:position], shift))
        if position > done:
            pieces.append(view[offsets[done] : offsets[position]])
        new_ids.extend(ids[start:end])
        sizes = [_frame_size(len(encoded)) for encoded in added]
        new_offsets.extend(accumulate(sizes[:-1], initial=offsets[position] + shift))
        pieces.append(codec.encode_trials_reply(added))
        shift += sum(sizes)
        done = position
    new_ids.extend(leaf_ids[done:])
    new_offsets.extend(_shifted(offsets[done:], shift))  # with the end of the last frame
    if done < len(leaf_ids):
        pieces.append(view[offsets[done] :])
    return _Leaf(new_ids, new_offsets, b"".join(pieces))


def _split_if_large(leaf: _Leaf) -> list[_Leaf]:
    if len(leaf.ids) <= 2 * LEAF_TRIALS and len(leaf.blob) <= 2 * LEAF_BYTES:
        return [leaf]
    middle = len(leaf.ids) // 2
    cut = leaf.offsets[middle]
    left = _Leaf(leaf.ids[:middle], leaf.offsets[: middle + 1], leaf.blob[:cut])
    right = _Leaf(leaf.ids[middle:], array("I", map(sub, leaf.offsets[middle:], repeat(cut))),
                  leaf.blob[cut:])
    return [left, right]


def _shifted(offsets: array[int], shift: int) -> array[int]:
    return offsets if shift == 0 else array("I", map(add, offsets, repeat(shift)))


def _frame_size(length: int) -> int:
    """Bytes of one framed element of `length` bytes: a one-byte tag, a varint, the bytes."""
    return 1 + max(1, (length.bit_length() + 6) // 7) + length


def _payload_start(blob: bytes, frame_start: int) -> int:
    """Where the message of the frame at `frame_start` begins: past its tag and length."""
    at = frame_start + 1
    while blob[at] & 0x80:
        at += 1
    return at + 1
