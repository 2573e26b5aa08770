"""The C part of the proxies' hot path (`flux_proxy._scan`); everything else is in pyproject.toml.

`optional`: without a compiler the install still succeeds and the pure-Python scanners run
(slower); `tests/test_scan_accelerator.py` fails in that case, so CI notices.
"""

from setuptools import Extension, setup

WARNINGS = ["-Wall", "-Wextra", "-Wno-unused-parameter"]

setup(ext_modules=[Extension("flux_proxy._scan", ["flux_proxy/_scan.c"], optional=True,
                             extra_compile_args=["-O2", *WARNINGS])])
