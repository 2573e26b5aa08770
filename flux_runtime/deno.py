"""Where Deno comes from: the PyPI `deno` package, never a separate install."""

from __future__ import annotations

import functools
import os
import subprocess
from importlib import resources
from pathlib import Path


class DenoNotFound(RuntimeError):
    """The `deno` PyPI package is missing or its binary cannot run."""


@functools.cache
def deno_binary() -> str:
    """Path of the Deno binary shipped by the `deno` PyPI package."""
    try:
        import deno  # type: ignore[import-untyped]
    except ImportError as exc:  # pragma: no cover - it is a declared dependency
        raise DenoNotFound("the `deno` Python package is not installed (pip install deno)") from exc
    path = deno.find_deno_bin()
    if not path or not Path(path).exists():
        raise DenoNotFound(f"the `deno` Python package has no binary at {path!r}")
    return str(path)


@functools.cache
def deno_version() -> str:
    """Deno's version, e.g. `2.9.8` (asked once per process)."""
    out = subprocess.run([deno_binary(), "--version"], capture_output=True, text=True,
                         check=True).stdout
    first = out.splitlines()[0] if out else ""
    parts = first.split()
    return parts[1] if len(parts) > 1 else first


def deno_dir(explicit: str | os.PathLike[str] | None = None) -> str | None:
    """The DENO_DIR workers use: the one given, else the environment's, else Deno's default.

    None means "let Deno choose" (its own cache under ~/.cache/deno), so npm packages the user
    already downloaded with plain `deno` are reused by Flux workers and the other way round.
    """
    if explicit:
        return str(Path(explicit).expanduser())
    return os.environ.get("DENO_DIR") or None


def shim_path() -> Path:
    """The preload shim, shipped as package data."""
    return Path(str(resources.files("flux_runtime") / "shim" / "shim.ts"))
