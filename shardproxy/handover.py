"""How a replaced worker hands its clients over without failing a call (rolling restart).

gRPC's server shutdown (`grpc.Server.stop`) cancels the calls that reached the
server but were not yet taken by a handler thread: under load there are a few
such calls at any moment, and their clients get CANCELLED (gRPC issue 41785). A
call can only be spared that by not arriving: the clients must leave first. So a
worker whose shard a new process has taken over (SIGHUP from the supervisor):

1. stops accepting connections: its listening socket is shut down (the kernel
   then sends new connections to the other workers sharing the port; gRPC logs
   one "Closing acceptor" line for it);
2. keeps serving the connections it has, until each is asked to go away at its
   maximum age (`--max-connection-age`; a graceful GOAWAY, after which the client
   sends its next calls on a new connection to another worker, and calls in
   flight finish within the grace period);
3. stops once no client connection is left, or once `connection_turnover` has
   passed, and drains as on SIGTERM.

Envoy's hot restart drains an old process's listeners the same way, for ten
minutes by default. Without a maximum connection age the connections never leave
by themselves, and step 3 comes at once. Linux only (it reads /proc); elsewhere
nothing is closed and no connection is counted.
"""

from __future__ import annotations

import contextlib
import os
import socket

from shardproxy.config import Config

_LISTEN, _ESTABLISHED = "0A", "01"  # socket states in /proc/net/tcp
# gRPC spreads each connection's maximum age by up to this much either way.
_AGE_JITTER = 0.1


def connection_turnover(config: Config) -> float:
    """Seconds until every connection open now has been asked to leave and has left."""
    if config.max_connection_age <= 0:
        return 0.0
    return config.max_connection_age * (1 + _AGE_JITTER) + config.max_connection_age_grace + 1.0


def handover_timeout(config: Config) -> float:
    """How long the supervisor lets a replaced worker take: the turnover, then a drain."""
    return connection_turnover(config) + config.drain_timeout


def close_listeners(port: int) -> int:
    """Shuts down this process's listening TCP sockets on `port`; returns how many."""
    closed = 0
    for fd, state in _own_tcp_sockets(port):
        if state != _LISTEN:
            continue
        with contextlib.suppress(OSError), socket.socket(fileno=os.dup(fd)) as listener:
            # On a listening socket, SHUT_RD stops listening: it leaves the port's
            # SO_REUSEPORT group, and gRPC closes its acceptor.
            listener.shutdown(socket.SHUT_RD)
            closed += 1
    return closed


def client_connections(port: int) -> int:
    """This process's established TCP connections accepted on `port`."""
    return sum(state == _ESTABLISHED for _, state in _own_tcp_sockets(port))


def _own_tcp_sockets(port: int) -> list[tuple[int, str]]:
    """(fd, state) of this process's TCP sockets whose local port is `port`."""
    states: dict[int, str] = {}  # inode -> state
    for table in ("tcp", "tcp6"):
        try:
            lines = open(f"/proc/self/net/{table}").read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            # sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port:
                states[int(fields[9])] = fields[3]
    found = []
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{name}")
            except OSError:  # closed meanwhile
                continue
            if target.startswith("socket:["):
                inode = int(target[len("socket:[") : -1])
                if inode in states:
                    found.append((int(name), states[inode]))
    return found
