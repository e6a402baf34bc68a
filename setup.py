"""Builds the Cython codec; the package falls back to pure Python without it.

Build switches (environment variables):
  SHARDPROXY_NO_EXTENSIONS=1       build no extension: a pure-Python install.
  SHARDPROXY_REQUIRE_EXTENSIONS=1  fail the build if the extension cannot be compiled
                                   (CI uses this; on a user's machine a missing
                                   compiler only costs speed).
"""

from __future__ import annotations

import os
import sys

from setuptools import Extension, setup


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


NO_EXTENSIONS = _flag("SHARDPROXY_NO_EXTENSIONS")
REQUIRE_EXTENSIONS = _flag("SHARDPROXY_REQUIRE_EXTENSIONS")
if NO_EXTENSIONS and REQUIRE_EXTENSIONS:
    sys.exit("SHARDPROXY_NO_EXTENSIONS and SHARDPROXY_REQUIRE_EXTENSIONS contradict each other")

# The compiled modules; tests/test_codec_selection.py checks this against what was built.
COMPILED_MODULES = ("shardproxy._codec",)


def _extensions() -> list[Extension]:
    if NO_EXTENSIONS:
        print("shardproxy: pure Python build (SHARDPROXY_NO_EXTENSIONS is set)")
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        if REQUIRE_EXTENSIONS:
            raise
        print("shardproxy: Cython is missing, pure Python build")
        return []
    extension = Extension(
        "shardproxy._codec",
        ["_codec/codec.pyx"],
        extra_compile_args=["-O2"],
        optional=not REQUIRE_EXTENSIONS,
    )
    print("shardproxy: accelerated build (Cython codec)")
    return cythonize(
        [extension],
        compiler_directives={
            "language_level": "3",
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "linetrace": _flag("SHARDPROXY_CYTHON_TRACE"),
        },
        annotate=_flag("SHARDPROXY_CYTHON_ANNOTATE"),
    )


setup(ext_modules=_extensions())
