"""The one exception the request path raises to answer with a gRPC status."""

from __future__ import annotations

import grpc


class StatusError(Exception):
    """Ends an RPC with `code` and `details`; nothing has been written when it is raised."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details
