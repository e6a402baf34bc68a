"""GetTrials and GetTrial replies decoded by the compiled codec straight into FrozenTrials.

Optuna's client parses a reply into protobuf messages, then builds each trial with
`_from_proto_trial`, which parses every parameter's distribution from its JSON and
each datetime (with `strptime` up to Optuna 5.0). Here the codec that encodes the replies on the
proxy (`shardproxy._codec`) reads them back into rows, a distribution is parsed
once per distinct JSON text (a study has few), and datetimes are read with
`datetime.fromisoformat`. The trials are equal to those Optuna's client builds.

Used only when the compiled codec is present: the pure-Python twin is slower than
protobuf's own parser.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from optuna.distributions import BaseDistribution, json_to_distribution
from optuna.trial import FrozenTrial, TrialState

from shardproxy import codec
from shardproxy._codec_py.reading import read_message, read_tag, skip
from shardproxy.rows import TrialRow
from shardproxy.wire import TRIAL_REPLY_TRIAL, TRIALS_REPLY_TRIALS

AVAILABLE = codec.IS_COMPILED
_STATES = (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL,
           TrialState.WAITING)
# Distributions by their JSON text; a client meets few distinct ones.
_MAX_DISTRIBUTIONS = 10_000


class TrialDecoder:
    def __init__(self) -> None:
        self._distributions: dict[str, BaseDistribution] = {}

    def trials_reply(self, data: bytes) -> list[FrozenTrial]:
        """The trials of a GetTrialsReply, in the reply's order."""
        trials = []
        view = memoryview(data)
        pos, end = 0, len(data)
        while pos < end:
            field, wire_type, pos = read_tag(data, pos, end)
            if field == TRIALS_REPLY_TRIALS:
                start, pos = read_message(data, pos, end, field, wire_type)
                trials.append(self.trial(codec.decode_trial(view[start:pos])))
            else:
                pos = skip(data, pos, end, field, wire_type, 0)
        return trials

    def trial_reply(self, data: bytes) -> FrozenTrial:
        """The trial of a GetTrialReply."""
        pos, end = 0, len(data)
        row = codec.decode_trial(b"")
        while pos < end:
            field, wire_type, pos = read_tag(data, pos, end)
            if field == TRIAL_REPLY_TRIAL:
                start, pos = read_message(data, pos, end, field, wire_type)
                row = codec.decode_trial(memoryview(data)[start:pos])
            else:
                pos = skip(data, pos, end, field, wire_type, 0)
        return self.trial(row)

    def trial(self, row: TrialRow) -> FrozenTrial:
        """What `optuna.storages._grpc.servicer._from_proto_trial` builds from the same trial."""
        distributions = {name: self._distribution(text) for name, _, text in row.params}
        return FrozenTrial(
            trial_id=row.trial_id,
            number=row.number,
            state=_STATES[row.state],
            value=None,
            values=row.values if row.values else None,
            datetime_start=_datetime(row.datetime_start),
            datetime_complete=_datetime(row.datetime_complete),
            params={name: distributions[name].to_external_repr(value)
                    for name, value, _ in row.params},
            distributions=distributions,
            user_attrs={key: json.loads(text) for key, text in row.user_attrs},
            system_attrs={key: json.loads(text) for key, text in row.system_attrs},
            intermediate_values=dict(row.intermediate_values),
        )

    def _distribution(self, text: str) -> BaseDistribution:
        found = self._distributions.get(text)
        if found is None:
            if len(self._distributions) >= _MAX_DISTRIBUTIONS:
                self._distributions.clear()
            found = self._distributions[text] = json_to_distribution(text)
        return found


def _datetime(text: str) -> Any:
    # Naive local time ("%Y-%m-%d %H:%M:%S.%f", from shardproxy and Optuna up to 5.0)
    # or, from Optuna 5.1's servicer, UTC with its offset: both read by fromisoformat
    # (much faster than strptime); Optuna's client makes the aware one naive local.
    if not text:
        return None
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo is None else moment.astimezone().replace(tzinfo=None)
