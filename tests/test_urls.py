"""`masked_url` hides a URL's password, and only that."""

from __future__ import annotations

import subprocess
import sys

import pytest
from sqlalchemy.engine import make_url

from shardproxy.urls import masked_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("mysql+pymysql://root:secret@127.0.0.1:3306/test",
         "mysql+pymysql://root:***@127.0.0.1:3306/test"),
        # Percent-encoded '@', ':' and '/', as a password must be written to be usable.
        ("mysql+pymysql://root:p%40ss%3Aw%2Fd@db.example:3306/test",
         "mysql+pymysql://root:***@db.example:3306/test"),
        # A raw ':' belongs to the password: only the first one separates it.
        ("postgresql+psycopg2://app:pa:ss:wd@db.example/optuna",
         "postgresql+psycopg2://app:***@db.example/optuna"),
        # A raw '@': SQLAlchemy would end the password at it; none of it is shown.
        ("mysql://root:p@ss@db.example/test", "mysql://root:***@db.example/test"),
        ("postgresql://app:p@ss@/optuna?host=/run/pg",
         "postgresql://app:***@/optuna?host=%2Frun%2Fpg"),
        ("mysql://root:@db.example/test", "mysql://root:***@db.example/test"),
        ("mysql://root:secret@db.example/test?charset=utf8mb4",
         "mysql://root:***@db.example/test?charset=utf8mb4"),
    ],
)  # fmt: skip
def test_the_password_is_hidden_and_the_rest_kept(url: str, shown: str) -> None:
    assert masked_url(url) == shown
    assert make_url(url).password is not None  # the case is one with a password


@pytest.mark.parametrize(
    "url",
    [
        "mysql+pymysql://root@127.0.0.1:3306/test",
        "postgresql+psycopg2://postgres@127.0.0.1:5432/test",
        "postgresql:///optuna",
        "sqlite:///shardproxy.db",
        "sqlite:////var/lib/optuna/trials.db",
        "sqlite:////data/run@2026:01/a%20b.db",  # '@' and ':' in a path are no password
    ],
)
def test_a_url_without_password_is_shown_as_given(url: str) -> None:
    assert masked_url(url) == url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("mysql://root:p@ss:w0rd@db.example:3306/test", "mysql://***"),
        ("not a url with secret", "***"),
    ],
)
def test_a_url_sqlalchemy_cannot_parse_shows_nothing_after_its_scheme(
    url: str, shown: str
) -> None:
    assert masked_url(url) == shown


def test_importing_the_masker_does_not_import_sqlalchemy() -> None:
    code = "import sys, shardproxy.urls, shardproxy.cli; print('sqlalchemy' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"
