"""`flux serve APP`: run an unmodified Deno app and record every request it serves."""

from __future__ import annotations

import click

from flux_cli import loop
from flux_cli.errors import FluxError, one_line_errors


@click.command("serve", context_settings={"ignore_unknown_options": False})
@click.argument("app", type=click.Path(dir_okay=False))
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--workers", default=None, type=click.IntRange(1, 256),
              help="Deno worker processes, each serving one request at a time (default 2).")
@click.option("--server", default=None, envvar="FLUX_SERVER",
              help="flux-server address (default 127.0.0.1:50051; started in-process if none).")
@click.option("--sample", default=1.0, show_default=True, type=click.FloatRange(0.0, 1.0),
              help="Fraction of successful requests to record; errors are always recorded.")
@click.argument("deno_args", nargs=-1, type=click.UNPROCESSED)
@one_line_errors
def serve_command(app: str, port: int, host: str, workers: int | None, server: str | None,
                  sample: float, deno_args: tuple[str, ...]) -> None:
    """Serve APP under Flux: `flux serve app.ts [--port 8000] [-- DENO_ARGS]`."""
    from flux_runtime.front import FrontStartError
    from flux_runtime.serve import DEFAULT_WORKERS, ServeError, ServeOptions, serve_forever
    from flux_runtime.worker import WorkerStartError

    options = ServeOptions(app=app, host=host, port=port, workers=workers or DEFAULT_WORKERS,
                           server=server, sample=sample, deno_args=deno_args)
    try:
        loop.run(serve_forever(options))
    except (ServeError, FrontStartError, WorkerStartError) as exc:
        raise FluxError(str(exc)) from None
