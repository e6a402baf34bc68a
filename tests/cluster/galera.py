"""A real two-node MariaDB Galera cluster on 127.0.0.1, from fresh data directories.

Each node is a `mariadbd --no-defaults` of its own (its own port, socket, pid
file, log and data directory under one temporary directory), so the system
server's configuration and data are never touched. The first node bootstraps the
cluster, the second joins it with a state transfer by rsync. `galera_cluster()`
yields once both nodes say `Synced` in a cluster of 2, and stops both nodes (the
joiner first) however the body ends.

Needs Debian's `galera-4` and `rsync` (`.ci/run` installs them) and root: the
joiner's rsync daemon drops to `nobody`, which must own its data directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy

from tests.servers import stop_process

PROVIDERS = ("/usr/lib/galera/libgalera_smm.so", "/usr/lib/libgalera_smm.so")
MARIADBD = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
START_TIMEOUT = 90.0


def provider() -> str | None:
    """The Galera provider library of this machine, or None."""
    return next((path for path in PROVIDERS if os.path.exists(path)), None)


def missing() -> str | None:
    """Why a cluster cannot be started here, or None if it can."""
    if provider() is None:
        return "galera-4 is not installed (apt-get install galera-4)"
    if shutil.which("rsync") is None:
        return "rsync is not installed (apt-get install rsync)"
    if shutil.which("mariadb-install-db") is None or not os.path.exists(MARIADBD):
        return "the MariaDB server is not installed"
    if os.geteuid() != 0:
        return "starting a Galera node with rsync state transfer needs root"
    return None


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass
class Node:
    index: int
    directory: Path
    port: int
    group_port: int  # gmcast.listen_addr
    ist_port: int
    sst_port: int
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def datadir(self) -> Path:
        return self.directory / "data"

    @property
    def log(self) -> Path:
        return self.directory / "error.log"

    def url(self, database: str = "", driver: str = "pymysql") -> str:
        return f"mysql+{driver}://root@127.0.0.1:{self.port}/{database}"

    def status(self, name: str) -> str | None:
        """One `SHOW GLOBAL STATUS` value of the node, None if it does not answer."""
        try:
            return _query_one(self.url(), f"SHOW GLOBAL STATUS LIKE '{name}'")
        except sqlalchemy.exc.DBAPIError:
            return None


def _query_one(url: str, statement: str) -> str | None:
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool,
                                      connect_args={"connect_timeout": 2})
    try:
        with engine.connect() as conn:
            row = conn.exec_driver_sql(statement).first()
            return None if row is None else str(row[-1])
    finally:
        engine.dispose()


@dataclass
class GaleraCluster:
    nodes: list[Node]

    def urls(self, database: str, driver: str = "pymysql") -> list[str]:
        return [node.url(database, driver) for node in self.nodes]

    def status_sum(self, name: str) -> int:
        """A status counter summed over the nodes (e.g. wsrep_local_cert_failures)."""
        return sum(int(node.status(name) or 0) for node in self.nodes)

    @contextlib.contextmanager
    def database(self, name: str) -> Iterator[str]:
        """Creates database `name` (replicated to every node); yields its name; drops it."""
        admin = sqlalchemy.create_engine(self.nodes[0].url(), isolation_level="AUTOCOMMIT",
                                         poolclass=sqlalchemy.pool.NullPool)
        try:
            with admin.connect() as conn:
                conn.exec_driver_sql(f"CREATE DATABASE {name}")
            yield name
        finally:
            with contextlib.suppress(sqlalchemy.exc.DBAPIError), admin.connect() as conn:
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
            admin.dispose()


def _install_datadir(node: Node) -> None:
    node.datadir.mkdir(parents=True)
    subprocess.run(
        ["mariadb-install-db", "--no-defaults", f"--datadir={node.datadir}", "--user=root",
         "--auth-root-authentication-method=normal", "--skip-test-db"],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


def _start(node: Node, library: str | None, join: Node | None) -> None:
    address = "gcomm://" if join is None else f"gcomm://127.0.0.1:{join.group_port}"
    command = [
        MARIADBD, "--no-defaults", "--user=root",
        f"--datadir={node.datadir}", f"--port={node.port}", "--bind-address=127.0.0.1",
        f"--socket={node.directory / 'mysqld.sock'}",
        f"--pid-file={node.directory / 'mysqld.pid'}",
        f"--log-error={node.log}",
        "--binlog-format=ROW", "--innodb-autoinc-lock-mode=2",
        "--default-storage-engine=InnoDB", "--innodb-buffer-pool-size=64M",
        "--innodb-flush-log-at-trx-commit=2", "--skip-name-resolve",
    ]
    if library is None:  # a plain server with the same settings, for comparisons
        node.process = subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, start_new_session=True)
        return
    command += [
        "--wsrep-on=ON", f"--wsrep-provider={library}",
        f"--wsrep-cluster-address={address}", "--wsrep-cluster-name=shardproxy-test",
        f"--wsrep-node-name=node{node.index}", f"--wsrep-node-address=127.0.0.1:{node.group_port}",
        f"--wsrep-provider-options=gmcast.listen_addr=tcp://127.0.0.1:{node.group_port};"
        f"ist.recv_addr=127.0.0.1:{node.ist_port};gcache.size=32M",
        f"--wsrep-sst-receive-address=127.0.0.1:{node.sst_port}", "--wsrep-sst-method=rsync",
    ]
    if join is None:
        command.append("--wsrep-new-cluster")
    node.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    start_new_session=True)


def _wait_answering(node: Node, deadline: float) -> None:
    while time.monotonic() < deadline:
        if node.process is not None and node.process.poll() is not None:
            raise RuntimeError(f"mariadbd exited: {_tail(node.log)}")
        if node.status("Uptime") is not None:
            return
        time.sleep(0.3)
    raise RuntimeError(f"mariadbd did not answer in time: {_tail(node.log)}")


def _wait_synced(nodes: list[Node], deadline: float) -> None:
    while time.monotonic() < deadline:
        for node in nodes:
            if node.process is not None and node.process.poll() is not None:
                raise RuntimeError(f"galera node{node.index} exited: {_tail(node.log)}")
        if all(node.status("wsrep_local_state_comment") == "Synced"
               and node.status("wsrep_cluster_size") == str(len(nodes)) for node in nodes):
            return
        time.sleep(0.3)
    raise RuntimeError(f"galera nodes not synced in time: {_tail(nodes[-1].log)}")


def _stop(node: Node) -> None:
    if node.process is not None:
        stop_process(node.process, 30)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextlib.contextmanager
def galera_cluster(size: int = 2, wsrep: bool = True) -> Iterator[GaleraCluster]:
    """Starts a fresh cluster of `size` nodes; yields it synced; stops it afterwards.

    `wsrep=False`: one plain server (no Galera) with the nodes' settings, to compare with.
    """
    why = missing()
    if why is not None:
        raise RuntimeError(why)
    library = provider()
    assert library is not None
    root = Path(tempfile.mkdtemp(prefix="shardproxy-galera-"))
    size = size if wsrep else 1
    ports = _free_ports(4 * size)
    nodes = [Node(i, root / f"node{i}", *ports[4 * i:4 * i + 4]) for i in range(size)]
    try:
        for node in nodes:
            _install_datadir(node)
        for node in nodes[1:]:  # the joiner's rsync daemon runs as nobody
            subprocess.run(["chown", "-R", "nobody:nogroup", str(node.directory)], check=True)
        deadline = time.monotonic() + START_TIMEOUT
        if not wsrep:
            _start(nodes[0], None, None)
            _wait_answering(nodes[0], deadline)
            yield GaleraCluster(nodes)
            return
        _start(nodes[0], library, None)
        _wait_synced(nodes[:1], deadline)
        for node in nodes[1:]:
            _start(node, library, nodes[0])
        _wait_synced(nodes, deadline)
        yield GaleraCluster(nodes)
    finally:
        for node in reversed(nodes):
            _stop(node)
        shutil.rmtree(root, ignore_errors=True)
