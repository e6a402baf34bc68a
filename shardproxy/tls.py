"""TLS for the proxy's port: the server's certificate, and the client CA of mutual TLS.

With `--tls-cert` and `--tls-key` every worker serves TLS on the proxy's port;
with `--tls-client-ca` too, it accepts only clients whose certificate that CA
signed (mutual TLS). Optuna's unmodified client speaks plaintext only, so
`--insecure-port` serves plaintext on a second port beside TLS, for clients on a
trusted network. Each worker reads the files when it starts, so a restarted
worker (or a reload) picks up renewed certificates.
"""

from __future__ import annotations

import os
from pathlib import Path

import grpc


def check_readable(setting: str, path: str) -> None:
    """Raises ValueError naming the setting unless `path` is a readable file."""
    if not os.path.isfile(path) or not os.access(path, os.R_OK):
        raise ValueError(f"{setting} {path!r} is not a readable file")


def server_credentials(cert: str, key: str, client_ca: str = "") -> grpc.ServerCredentials:
    """TLS with the certificate chain `cert` and its private key; clients checked
    against `client_ca` when it is given (mutual TLS), else not asked for one."""
    chain = Path(cert).read_bytes()
    private_key = Path(key).read_bytes()
    if not client_ca:
        return grpc.ssl_server_credentials([(private_key, chain)])
    return grpc.ssl_server_credentials(
        [(private_key, chain)],
        root_certificates=Path(client_ca).read_bytes(),
        require_client_auth=True,
    )


def channel_credentials(ca: str, cert: str = "", key: str = "") -> grpc.ChannelCredentials:
    """A client's TLS: trusting the CA certificates `ca`, with a client certificate
    and its key for mutual TLS when given (`shardproxy check`)."""
    return grpc.ssl_channel_credentials(
        root_certificates=Path(ca).read_bytes(),
        private_key=Path(key).read_bytes() if key else None,
        certificate_chain=Path(cert).read_bytes() if cert else None,
    )
