"""Packed finished trials against a plain dict of encodings, with tiny leaves so that
appends, inserts of stragglers and leaf splits all happen many times."""

from __future__ import annotations

import bisect
import random

import pytest

from shardproxy import codec, packed_trials
from shardproxy.packed_trials import PackedTrials


@pytest.mark.parametrize(("leaf_trials", "leaf_bytes"), [(7, 300), (3, 10**6), (1000, 100)])
def test_packed_trials_answer_as_a_dict_of_encodings_does(
    monkeypatch: pytest.MonkeyPatch, leaf_trials: int, leaf_bytes: int
) -> None:
    monkeypatch.setattr(packed_trials, "LEAF_TRIALS", leaf_trials)
    monkeypatch.setattr(packed_trials, "LEAF_BYTES", leaf_bytes)
    rng = random.Random(leaf_trials)
    held: dict[int, bytes] = {}
    packed = PackedTrials()
    for _ in range(150):
        top = max(held, default=0)
        batch = sorted(rng.sample([i for i in range(1, top + 15) if i not in held],
                                  rng.randint(1, 10)))
        encodings = [bytes([i % 256]) * rng.choice([1, 5, 130, 200]) for i in batch]
        before = packed
        packed = packed.with_added(batch, encodings)
        held.update(zip(batch, encodings, strict=True))
        assert len(before) == len(held) - len(batch)  # the one added to is unchanged

        assert len(packed) == len(held)
        assert packed.nbytes == len(codec.encode_trials_reply([held[i] for i in sorted(held)]))
        ids = sorted(held)
        for trial_id in rng.sample(range(top + 20), 10):
            assert packed.trial_bytes(trial_id) == held.get(trial_id)
            assert (trial_id in packed) == (trial_id in held)
            assert packed.count_below(trial_id) == bisect.bisect_left(ids, trial_id)
        for rank in rng.sample(range(len(ids)), min(5, len(ids))):
            assert packed.id_at(rank) == ids[rank]
        with pytest.raises(IndexError):
            packed.id_at(len(ids))
        low = rng.randint(-1, top + 16)
        high = rng.choice([None, low + rng.randint(1, 40)])
        wanted = [held[i] for i in sorted(held) if i > low and (high is None or i < high)]
        if high is not None:
            assert packed.any_between(low, high) == bool(wanted)
        frames: list[packed_trials.Buffer] = []
        packed.frames_between(low, high, frames)
        assert b"".join(frames) == codec.encode_trials_reply(wanted)
        payloads: list[bytes] = []
        packed.payloads_between(low, high, payloads)
        assert payloads == wanted
    assert packed.leaf_count > 1
