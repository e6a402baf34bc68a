"""The address the workers share: how to write it, and that nobody else holds it.

`--host` takes what uvicorn and gunicorn take: an IPv4 or IPv6 literal (`::`,
`::1`, also in brackets, `[::]`), or a host name. gRPC wants IPv6 literals in
brackets (`[::1]:13000`); `grpc_address` writes every address the worker binds
and the health check dials, so no caller formats one itself.

With SO_REUSEPORT every worker binds the same port and the kernel spreads the
connections over them; it would just as silently share the port with a stale or
foreign server. So the supervisor checks, once, that nothing listens there.
"""

from __future__ import annotations

import errno
import socket
from typing import Any


class PortInUseError(OSError):
    """Another process holds the port the workers are to share."""


class BadHostError(OSError):
    """The host does not resolve, or none of its addresses is on this machine."""


def bare_host(host: str) -> str:
    """The host without the brackets an IPv6 literal may come in (`[::1]` → `::1`)."""
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        return host[1:-1]
    return host


def grpc_address(host: str, port: int) -> str:
    """`host:port` as gRPC binds and dials it: an IPv6 literal in brackets."""
    bare = bare_host(host)
    if ":" in bare:  # only an IPv6 literal has a colon; a name or IPv4 address has none
        return f"[{bare}]:{port}"
    return f"{bare}:{port}"


def ensure_port_free(host: str, port: int) -> int:
    """Checks that nothing listens on `host:port`; returns the port (a free one if 0).

    Binds a plain socket to every address of `host` without SO_REUSEPORT and closes
    it. With SO_REUSEPORT the workers' own bind would succeed next to a stale or
    foreign server and the kernel would silently share the traffic with it. (The
    port can still be taken between this check and the workers' bind.)
    """
    addresses = _addresses(host, port)
    for _ in range(100):  # port 0: the port picked on one address may be taken on another
        chosen = port
        bound = 0
        try:
            for family, address in addresses:
                probed = _probe(family, (address[0], chosen, *address[2:]))
                if probed:
                    chosen = probed
                    bound += 1
        except PortInUseError:
            if port == 0:
                continue
            raise PortInUseError(
                errno.EADDRINUSE,
                f"{grpc_address(host, port)} is already in use by another process; stop it "
                "or choose another port (shardproxy shares a port only among its own workers)",
            ) from None
        if bound == 0:
            raise BadHostError(
                errno.EADDRNOTAVAIL,
                f"no address of --host {host} is on this machine; give one of its own "
                "addresses, 0.0.0.0 or :: for all of them, or 127.0.0.1 for this machine only",
            )
        return chosen
    raise PortInUseError(errno.EADDRINUSE, f"found no port free on every address of {host}")


def _addresses(host: str, port: int) -> list[tuple[int, tuple[Any, ...]]]:
    try:
        infos = socket.getaddrinfo(
            bare_host(host) or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise BadHostError(
            errno.EINVAL,
            f"--host {host} does not resolve ({exc.strerror}); give an IP address such as "
            "0.0.0.0, :: or 127.0.0.1, or a host name this machine resolves",
        ) from None
    addresses: list[tuple[int, tuple[Any, ...]]] = []
    for family, _, _, _, address in infos:
        if (family, address) not in addresses:
            addresses.append((family, address))
    return addresses


def _probe(family: int, address: tuple[Any, ...]) -> int:
    """Binds and releases `address`; returns its port, 0 for an address unusable here."""
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR as gRPC sets it: TIME_WAIT leftovers of our own previous run
        # must not count as "in use", a listener still does.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUseError(errno.EADDRINUSE, str(exc)) from None
            if exc.errno == errno.EADDRNOTAVAIL:  # e.g. ::1 on a host without IPv6
                return 0
            raise
        return int(probe.getsockname()[1])
