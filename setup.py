"""Builds relay's compiled core (relay/core/_core.pyx).

Compiler directives live here and only here. ``RELAY_DEBUG_BUILD=1`` builds with
line tracing, bounds checks and an annotated HTML report (relay/core/_core.html) for
profiling and coverage of the core.
"""

import os

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("RELAY_DEBUG_BUILD") == "1"

directives = {
    "language_level": "3",
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": True,
    "embedsignature": True,
}
macros = []
if DEBUG:
    directives.update(linetrace=True, profile=True)
    macros.append(("CYTHON_TRACE", "1"))

extensions = [
    Extension(
        "relay.core._core",
        ["relay/core/_core.pyx"],
        define_macros=macros,
        extra_compile_args=["-O0", "-g"] if DEBUG else ["-O2"],
    )
]

setup(ext_modules=cythonize(extensions, compiler_directives=directives, annotate=DEBUG))
