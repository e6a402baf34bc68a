"""A non-editable install ships every package: pyproject lists each one.

setuptools installs only the packages `[tool.setuptools] packages` names, so a new
subpackage left off the list works in the source tree and is missing from a wheel.
"""

from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parent.parent


def test_pyproject_lists_every_package() -> None:
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        init.parent.relative_to(ROOT).as_posix().replace("/", ".")
        for init in (ROOT / "shardproxy").rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    assert "shardproxy._codec_py" in found
    assert listed == found
