"""TLS and mutual TLS on the proxy's port, with certificates made here by openssl.

Under mutual TLS a client without a certificate, or with one another CA signed,
is refused, and the right one is served; with TLS alone any client that trusts
the server's CA is served, a plaintext client is not; `insecure_port` serves
Optuna's unmodified client in plaintext beside it.
"""

from __future__ import annotations

import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path

import grpc
import optuna
import pytest
from optuna.storages import GrpcStorageProxy as OptunaClient

from shardproxy.cli import main
from shardproxy.client import GrpcStorageProxy
from shardproxy.config import Config
from tests.proxies import free_port, running_workers

optuna.logging.set_verbosity(optuna.logging.WARNING)


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(directory: Path, name: str) -> None:
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
            f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.pem", cwd=directory)


def make_cert(directory: Path, name: str, ca: str, server: bool) -> None:
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=directory)
    extensions = directory / f"{name}.ext"
    extensions.write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n" if server
        else "extendedKeyUsage=clientAuth\n"
    )
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-days", "2", "-extfile", extensions.name,
            "-out", f"{name}.pem", cwd=directory)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ca (server, client), other-ca (stranger): each NAME.pem with NAME.key."""
    directory = tmp_path_factory.mktemp("certs")
    make_ca(directory, "ca")
    make_ca(directory, "other-ca")
    make_cert(directory, "server", "ca", server=True)
    make_cert(directory, "client", "ca", server=False)
    make_cert(directory, "stranger", "other-ca", server=False)
    return directory


def credentials(certs: Path, client: str | None) -> grpc.ChannelCredentials:
    root = (certs / "ca.pem").read_bytes()
    if client is None:
        return grpc.ssl_channel_credentials(root_certificates=root)
    return grpc.ssl_channel_credentials(
        root_certificates=root,
        private_key=(certs / f"{client}.key").read_bytes(),
        certificate_chain=(certs / f"{client}.pem").read_bytes(),
    )


def served(port: int, creds: grpc.ChannelCredentials | None) -> bool:
    """Whether a call over these credentials is answered (no retries, 5 s)."""
    storage = GrpcStorageProxy(host="localhost", port=port, credentials=creds,
                               retry_deadline=0, timeout=5)
    try:
        storage.get_all_studies()
        return True
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
        return False
    finally:
        storage.close()


@pytest.fixture
def mutual_tls(sqlite_url: str, certs: Path) -> Iterator[int]:
    with running_workers(sqlite_url, workers=2, tls_cert=str(certs / "server.pem"),
                         tls_key=str(certs / "server.key"),
                         tls_client_ca=str(certs / "ca.pem")) as workers:
        yield workers[0].port


def test_mutual_tls_serves_only_clients_the_ca_signed(mutual_tls: int, certs: Path) -> None:
    assert not served(mutual_tls, credentials(certs, None))
    assert not served(mutual_tls, credentials(certs, "stranger"))
    assert not served(mutual_tls, None)  # plaintext
    assert served(mutual_tls, credentials(certs, "client"))
    storage = GrpcStorageProxy(host="localhost", port=mutual_tls,
                               credentials=credentials(certs, "client"))
    try:
        storage.wait_server_ready(timeout=10)
        study = optuna.create_study(storage=storage)
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=4)
        assert len(study.trials) == 4
    finally:
        storage.close()


def test_shardproxy_check_asks_over_mutual_tls(
    mutual_tls: int, certs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["check", "--host", "localhost", "--port", str(mutual_tls), "--timeout", "5"]
    assert main(base) == 1  # plaintext
    assert main([*base, "--tls-ca", str(certs / "ca.pem")]) == 1  # no client certificate
    assert main([*base, "--tls-ca", str(certs / "ca.pem"), "--tls-client-cert",
                 str(certs / "client.pem"), "--tls-client-key", str(certs / "client.key")]) == 0
    assert capsys.readouterr().out.splitlines()[-1].endswith("SERVING")


def test_tls_with_a_plaintext_port_beside_it(sqlite_url: str, certs: Path) -> None:
    plain = free_port()
    with running_workers(sqlite_url, workers=2, tls_cert=str(certs / "server.pem"),
                         tls_key=str(certs / "server.key"), insecure_port=plain) as workers:
        port = workers[0].port
        assert served(port, credentials(certs, None))
        assert not served(port, None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            unmodified = OptunaClient(host="127.0.0.1", port=plain)
        try:
            study = optuna.create_study(storage=unmodified, study_name="plain")
            study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
        finally:
            unmodified.close()
        storage = GrpcStorageProxy(host="localhost", port=port,
                                   credentials=credentials(certs, None))
        try:
            assert len(optuna.load_study(study_name="plain", storage=storage).trials) == 2
        finally:
            storage.close()


def test_tls_settings_are_checked(certs: Path, tmp_path: Path) -> None:
    cert, key = str(certs / "server.pem"), str(certs / "server.key")
    for bad, message in (
        ({"tls_cert": cert}, "go together"),
        ({"tls_key": key}, "go together"),
        ({"tls_client_ca": cert}, "needs tls-cert"),
        ({"insecure_port": 13001}, "needs tls-cert"),
        ({"tls_cert": cert, "tls_key": str(tmp_path / "missing")}, "not a readable file"),
        ({"tls_cert": cert, "tls_key": key, "insecure_port": 13000}, "must differ"),
    ):
        with pytest.raises(ValueError, match=message):
            Config(port=13000, **bad)  # type: ignore[arg-type]
    assert Config(tls_cert=cert, tls_key=key, insecure_port=13001).tls
