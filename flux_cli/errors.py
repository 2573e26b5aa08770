"""One-line errors and exit codes (DESIGN.md): never a traceback for an operational error."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK = 0
EXIT_OPERATIONAL = 1
EXIT_USAGE = 2
EXIT_DIVERGED = 3
EXIT_STOPPED = 4


class FluxError(Exception):
    """An operational error the user can act on; its message is printed as one line."""

    exit_code = EXIT_OPERATIONAL


def fail(message: str, code: int = EXIT_OPERATIONAL) -> NoReturn:
    click.echo(f"flux: {message}", err=True)
    sys.exit(code)


def one_line_errors(func: F) -> F:
    """Turn FluxError, OSError and client errors into `flux: message` on stderr and exit 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            fail("interrupted", 130)
        except FluxError as exc:
            fail(str(exc), exc.exit_code)
        except Exception as exc:  # the contract: one line, never a traceback
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            fail(text)

    return wrapper  # type: ignore[return-value]
