"""The port the workers share: check that nobody else holds it, before they bind it.

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
        try:
            for family, address in addresses:
                chosen = _probe(family, (address[0], chosen, *address[2:])) or chosen
        except PortInUseError:
            if port == 0:
                continue
            raise PortInUseError(
                errno.EADDRINUSE,
                f"{host}:{port} is already in use by another process; stop it or choose "
                "another port (shardproxy shares a port only among its own workers)",
            ) from None
        if chosen == 0:
            raise OSError(errno.EADDRNOTAVAIL, f"no address of {host!r} can be bound here")
        return chosen
    raise PortInUseError(errno.EADDRINUSE, f"found no port free on every address of {host}")


def _addresses(host: str, port: int) -> list[tuple[int, tuple[Any, ...]]]:
    infos = socket.getaddrinfo(
        host.strip("[]") or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
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
