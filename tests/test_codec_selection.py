"""The selector picks the compiled codec when it is built, and the build lists it."""

from __future__ import annotations

import ast
import importlib.machinery
import importlib.util
from pathlib import Path

import pytest

import shardproxy
from shardproxy import _codec_py, codec
from tests.codec_strategies import IN_CI, NO_EXTENSIONS, compiled_codec

ROOT = Path(__file__).resolve().parent.parent


def _setup_compiled_modules() -> tuple[str, ...]:
    """COMPILED_MODULES as setup.py spells it, read without running setup()."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "COMPILED_MODULES"
            for target in node.targets
        ):
            return tuple(ast.literal_eval(node.value))
    raise AssertionError("setup.py defines no COMPILED_MODULES")


def _built_extensions() -> set[str]:
    """The extension modules found in the package that is imported."""
    package = Path(shardproxy.__file__).parent
    suffixes = sorted(importlib.machinery.EXTENSION_SUFFIXES, key=len, reverse=True)
    built = set()
    for path in package.rglob("*"):
        name = path.relative_to(package.parent).as_posix()
        suffix = next((s for s in suffixes if name.endswith(s)), None)
        if suffix is not None:
            built.add(name[: -len(suffix)].replace("/", "."))
    return built


def test_compiled_codec_is_active() -> None:
    if NO_EXTENSIONS:
        assert codec.impl is _codec_py
        assert not codec.IS_COMPILED
        assert "SHARDPROXY_NO_EXTENSIONS" in codec.describe()
        return
    compiled = compiled_codec()  # skips where it is not built, fails in CI
    assert codec.IS_COMPILED, codec.WHY_PURE
    assert codec.impl is compiled
    assert codec.describe() == "cython"
    assert codec.encode_trial is compiled.encode_trial


def test_setup_lists_exactly_the_built_extensions() -> None:
    listed = _setup_compiled_modules()
    built = _built_extensions()
    if not built:
        if IN_CI and not NO_EXTENSIONS:
            pytest.fail("no extension was built in CI")
        pytest.skip("pure-Python build")
    assert set(listed) == built
    for name in listed:
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin is not None
        assert spec.origin.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def test_both_codecs_raise_one_decode_error_class() -> None:
    assert issubclass(_codec_py.DecodeError, ValueError)
    assert codec.DecodeError is _codec_py.DecodeError
    compiled = compiled_codec()
    with pytest.raises(_codec_py.DecodeError):
        compiled.decode_id_request(b"\x08")


def test_both_codecs_export_the_same_functions() -> None:
    compiled = compiled_codec()
    public = {name for name in dir(_codec_py) if name.startswith(("decode_", "encode_"))}
    assert public == {name for name in dir(compiled) if name.startswith(("decode_", "encode_"))}
    assert public == {name for name in vars(codec) if name.startswith(("decode_", "encode_"))}
