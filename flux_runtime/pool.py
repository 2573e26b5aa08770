"""N Deno workers, each serving one request at a time, and the dispatch of one request to one.

Attribution is exact because a worker (and its proxies) never serves two requests at once: the
pool hands a request to an idle worker, and the worker becomes idle again only once the shim
has reported the request finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from flux_runtime.control import ShimReport
from flux_runtime.deno import deno_version
from flux_runtime.relay import (
    DEFAULT_BODY_CAP,
    EXECUTION_HEADER,
    FLUX_REQUEST_HEADERS,
    REMOTE_HEADER,
    BodyCapture,
    BufferSink,
    IncomingRequest,
    ResponseSink,
    end_to_end,
    new_execution_id,
)
from flux_runtime.upstream import UpstreamError, WorkerConnection
from flux_runtime.worker import (
    Worker,
    WorkerConfig,
    WorkerExited,
    WorkerSlotSettings,
    WorkerStartError,
)
from flux_server.records import DeterminismEntry, ErrorInfo, Execution, Mode

Hook = Callable[..., Awaitable[None] | None]

RESTART_BACKOFF = (0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


DEFAULT_WORKERS = 2  # docs/runtime.md and docs/integration.md give the figures behind it


def default_worker_count() -> int:
    """The pool size when none is given: the same default as `flux serve`."""
    return DEFAULT_WORKERS


@dataclass(slots=True)
class PoolHooks:
    """Where `flux serve` plugs in proxies, boot records and the shipper. Each may be async.

    - `worker_starting(worker)`: a worker process is about to start (again); its boot IO
      begins now, under `worker.boot_id`.
    - `worker_ready(worker)`: the app listens; boot is over.
    - `before_dispatch(worker, execution_id)`: right before the request goes to the worker
      (tag the worker's proxies with the id).
    - `after_completion(worker, execution)`: the worker is done with the request and not yet
      idle (untag the proxies, attach `execution.exchanges`).
    - `on_execution(execution)`: the finished record, after the worker went back to the pool.
    """

    worker_starting: Hook | None = None
    worker_ready: Hook | None = None
    before_dispatch: Hook | None = None
    after_completion: Hook | None = None
    on_execution: Hook | None = None


@dataclass(slots=True)
class ExecutionResult:
    execution: Execution
    report: ShimReport | None  # None when the worker died before reporting
    body: bytes = b""  # the whole response body, for `WorkerPool.execute` (not capped)


async def call_hook(hook: Hook | None, *args: Any) -> None:
    if hook is None:
        return
    result = hook(*args)
    if result is not None and inspect.isawaitable(result):
        await result


@functools.cache
def flux_version() -> str:
    try:
        return metadata.version("flux")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0"


class WorkerPool:
    """Starts N workers of one app, restarts crashed ones, and dispatches requests to idle ones.

    `worker_settings(index)` gives each slot its own env overrides (the lead's rewritten upstream
    URLs) and, in replay, the extra `host:port`s the sandbox lets it reach (its proxies). It is
    called again at every restart of that slot.
    """

    def __init__(self, app: str | Path, *, workers: int | None = None, mode: Mode = Mode.RECORD,
                 deno_args: Sequence[str] = (), env: Mapping[str, str] | None = None,
                 worker_settings: Callable[[int], WorkerSlotSettings] | None = None,
                 deno_dir: str | None = None, cwd: str | None = None,
                 start_timeout: float = 60.0, echo_output: bool = False,
                 body_cap: int = DEFAULT_BODY_CAP, report_timeout: float = 10.0,
                 acquire_timeout: float | None = 60.0,
                 hooks: PoolHooks | None = None) -> None:
        workers = default_worker_count() if workers is None else workers
        if workers < 1:
            raise ValueError("a pool needs at least one worker")
        self.app = Path(app).expanduser().absolute()
        self.mode = mode
        self.body_cap = body_cap
        self.report_timeout = report_timeout
        self.acquire_timeout = acquire_timeout
        self.hooks = hooks or PoolHooks()
        self.config = WorkerConfig(app=self.app, mode=mode, deno_args=tuple(deno_args), env=env,
                                   deno_dir=deno_dir, cwd=cwd, start_timeout=start_timeout,
                                   echo_output=echo_output)
        self.workers = [Worker(i, self.config, worker_settings, self._on_worker_exit)
                        for i in range(workers)]
        self._idle: asyncio.Queue[Worker] = asyncio.Queue()
        self._restarts: set[asyncio.Task[None]] = set()
        self._connections: dict[str, WorkerConnection] = {}
        self._started = False
        self._in_flight = 0
        self._drained = asyncio.Event()
        self._drained.set()
        self._closing = False
        self.deno_version = ""
        self.crashes = 0

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start every worker; one that cannot start stops them all and raises WorkerStartError."""
        self.deno_version = deno_version()
        self._started = True
        # The first worker runs the app's top-level start-up (CREATE TABLE IF NOT EXISTS, ...)
        # alone: N copies doing it at once race in the database, which one process never does.
        first, rest = self.workers[0], self.workers[1:]
        results: list[Any] = await asyncio.gather(self._start_worker(first),
                                                  return_exceptions=True)
        if not isinstance(results[0], BaseException):
            results += await asyncio.gather(*(self._start_worker(w) for w in rest),
                                            return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            await self.stop()
            first = failures[0]
            if isinstance(first, WorkerStartError):
                raise first
            raise WorkerStartError(f"{self.app}: {first}") from first
        for worker in self.workers:
            self._idle.put_nowait(worker)

    async def drain(self) -> None:
        """Wait until no request is being served."""
        await self._drained.wait()

    async def stop(self) -> None:
        """Finish in-flight requests, then stop every worker."""
        self._closing = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.drain(), 30)
        for task in list(self._restarts):
            task.cancel()
        await asyncio.gather(*(w.close() for w in self.workers), return_exceptions=True)
        for connection in self._connections.values():
            connection.close()
        self._connections.clear()

    async def _start_worker(self, worker: Worker) -> None:
        worker.boot_id = str(uuid.uuid4())  # known to `worker_starting`, before any boot IO
        await call_hook(self.hooks.worker_starting, worker)
        await worker.start(boot_id=worker.boot_id)
        await call_hook(self.hooks.worker_ready, worker)

    def _on_worker_exit(self, worker: Worker) -> None:
        """A serving worker died on its own: start it again (with backoff if it keeps failing)."""
        if self._closing:
            return
        self.crashes += 1
        sys.stderr.write(f"flux: {worker.exit_message()}; restarting it\n")
        task = asyncio.get_running_loop().create_task(self._restart(worker))
        self._restarts.add(task)
        task.add_done_callback(self._restarts.discard)

    async def _restart(self, worker: Worker) -> None:
        for attempt in range(1_000_000):
            if self._closing:
                return
            try:
                await self._start_worker(worker)
            except WorkerStartError as exc:
                delay = RESTART_BACKOFF[min(attempt, len(RESTART_BACKOFF) - 1)]
                sys.stderr.write(f"flux: worker {worker.id} failed to restart: {exc}\n")
                await asyncio.sleep(delay)
                continue
            if not worker.busy:
                self._idle.put_nowait(worker)
            return

    # ------------------------------------------------------------------ dispatch

    async def _acquire(self) -> Worker:
        """The next idle, ready worker; waiting here is the front's backpressure."""
        while True:
            worker = await self._idle.get()
            if self._claim(worker):
                return worker

    def _acquire_idle(self) -> Worker | None:
        """An idle worker without waiting (and without arming a timeout), if there is one."""
        while not self._idle.empty():
            worker = self._idle.get_nowait()
            if self._claim(worker):
                return worker
        return None

    def _claim(self, worker: Worker) -> bool:
        """Takes a worker off the idle queue for a request; a stale entry is skipped."""
        if not worker.ready or worker.busy:
            return False
        worker.busy = True
        self._in_flight += 1
        self._drained.clear()
        return True

    def _release(self, worker: Worker) -> None:
        worker.busy = False
        self._in_flight -= 1
        if self._in_flight == 0:
            self._drained.set()
        if worker.ready:
            self._idle.put_nowait(worker)

    async def serve(self, request: IncomingRequest, sink: ResponseSink, *,
                    execution_id: str | None = None,
                    determinism: Sequence[DeterminismEntry] | None = None,
                    shield: bool = True) -> ExecutionResult:
        """Run one request on the next idle worker, streaming the response into `sink`.

        `determinism` (replay) is handed to the shim first, to be fed back in order. Once a
        worker has the request, it runs to its end even if the caller is cancelled: a worker
        is only given back once it is done, or attribution would break. A caller that is never
        cancelled (the front's connection task) passes `shield=False` and saves a task.
        """
        execution_id = execution_id or new_execution_id()
        worker = self._acquire_idle()
        if worker is None:
            try:
                async with asyncio.timeout(self.acquire_timeout):
                    worker = await self._acquire()
            except TimeoutError:
                result = await self._unavailable(request, sink, execution_id)
                await call_hook(self.hooks.on_execution, result.execution)
                return result
        run = self._run(worker, request, sink, execution_id, determinism)
        if not shield:
            return await run
        return await asyncio.shield(asyncio.ensure_future(run))

    async def _run(self, worker: Worker, request: IncomingRequest, sink: ResponseSink,
                   execution_id: str,
                   determinism: Sequence[DeterminismEntry] | None) -> ExecutionResult:
        try:
            result = await self._serve_on(worker, request, sink, execution_id, determinism)
            await call_hook(self.hooks.after_completion, worker, result.execution)
        finally:
            self._release(worker)
        await call_hook(self.hooks.on_execution, result.execution)
        return result

    async def _unavailable(self, request: IncomingRequest, sink: ResponseSink,
                           execution_id: str) -> ExecutionResult:
        """No worker became free in time (all busy, or crashing at start): 503, recorded."""
        message = f"no worker became free within {self.acquire_timeout:g}s"
        text = f"flux: {message}\n".encode()
        headers = [("content-type", "text/plain; charset=utf-8"), (EXECUTION_HEADER, execution_id)]
        await sink.start(503, "Service Unavailable", headers)
        await sink.finish(text)
        execution = Execution(
            id=execution_id, started_at=time.time(), duration=0.0, method=request.method,
            path=request.path, query=request.query, request_headers=list(request.headers),
            status=503, response_headers=headers, response_body=text,
            error=ErrorInfo(name="NoWorkerAvailable", message=message), mode=self.mode,
            app_path=str(self.app), flux_version=flux_version(), deno_version=self.deno_version)
        return ExecutionResult(execution=execution, report=None)

    async def execute(self, method: str, target: str, *,
                      headers: Sequence[tuple[str, str]] = (), body: bytes = b"",
                      execution_id: str | None = None,
                      determinism: Sequence[DeterminismEntry] | None = None) -> ExecutionResult:
        """Send one request without the HTTP front (the replay runner); returns the whole body."""
        path, _, query = target.partition("?")
        sink = BufferSink()
        request = IncomingRequest(method=method, path=path, query=query, headers=list(headers),
                                  body=body or None)
        result = await self.serve(request, sink, execution_id=execution_id,
                                  determinism=determinism)
        result.body = sink.body
        return result

    async def _serve_on(self, worker: Worker, request: IncomingRequest, sink: ResponseSink,
                        execution_id: str,
                        determinism: Sequence[DeterminismEntry] | None) -> ExecutionResult:
        assert self._started, "the pool is not started"
        started_at = time.time()
        clock = time.perf_counter()
        request_capture = BodyCapture(self.body_cap)
        response_capture = BodyCapture(self.body_cap)
        status = 0
        response_headers: list[tuple[str, str]] = []
        error: ErrorInfo | None = None
        report: ShimReport | None = None
        report_future = worker.report(execution_id)
        generation, boot_id = worker.starts, worker.boot_id  # a crash starts a new boot
        # A crash record quotes what the worker printed while serving this request, not the
        # output of the requests before it.
        worker.stderr_tail.clear()
        try:
            await call_hook(self.hooks.before_dispatch, worker, execution_id)
            if determinism is not None:
                await worker.prime(execution_id, determinism)
            forwarded = [*((name, value) for name, value in end_to_end(request.headers)
                           if name.lower() not in FLUX_REQUEST_HEADERS),  # only Flux sets them
                         (EXECUTION_HEADER, execution_id)]
            if request.remote:
                forwarded.append((REMOTE_HEADER, request.remote))
            body: Any = None
            if isinstance(request.body, bytes):
                request_capture.feed(request.body)
                body = request.body
            elif request.body is not None:
                body = request_capture.tee(request.body)
            connection = await self._connection(worker)
            try:
                response = await connection.send(request.method, request.target, forwarded,
                                                 body)
            except UpstreamError:
                # A kept-alive connection the worker closed while idle: the request never
                # reached the app, so it goes again on a new connection (if it can be resent).
                if not connection.was_reused or connection.answered \
                        or not isinstance(body, bytes | None) or worker.exited:
                    raise
                connection = await self._connection(worker)
                response = await connection.send(request.method, request.target, forwarded,
                                                 body)
            status = response.status
            response_headers = [*end_to_end(response.headers), (EXECUTION_HEADER, execution_id)]
            await sink.start(status, response.reason, response_headers)
            whole = response.take_whole()
            if whole is not None:  # the usual small response: it all came with its head
                response_capture.feed(whole)
                await sink.finish(whole)
            else:
                finished = False
                async for chunk in response.chunks():
                    response_capture.feed(chunk)
                    if response.complete:  # the last bytes leave with the end of the response
                        await sink.finish(chunk)
                        finished = True
                    else:  # streamed at once: a slow stream (SSE) must not wait for the next
                        await sink.write(chunk)
                if not finished:
                    await sink.finish()
            if not report_future.done():
                async with asyncio.timeout(self.report_timeout):
                    await asyncio.shield(report_future)
            report = report_future.result()
        except (ConnectionError, TimeoutError) as exc:
            error = await self._failure(worker, generation, exc)
            if error.name == "WorkerCrashed":  # its last report may still be in the socket
                await asyncio.wait({report_future}, timeout=0.5)
            report = self._last_words(report_future)
            if not sink.started:
                status = 502
                response_headers = [("content-type", "text/plain; charset=utf-8"),
                                    (EXECUTION_HEADER, execution_id)]
                text = f"flux: {error.message}\n".encode()
                response_capture.feed(text)
                await sink.start(502, "Bad Gateway", response_headers)
                await sink.write(text)
                await sink.finish()
            elif not isinstance(exc, TimeoutError | WorkerExited):
                await sink.abort()
        finally:
            worker.forget(execution_id)
        if report is not None and report.error is not None:
            if error is None:
                error = report.error
            else:  # a crash: keep Flux's one-line account, with the app's own stack
                error.stack = report.error.stack or error.stack
        execution = Execution(
            id=execution_id, started_at=started_at, duration=time.perf_counter() - clock,
            method=request.method, path=request.path, query=request.query,
            request_headers=list(request.headers), request_body=request_capture.data,
            request_truncated=request_capture.truncated, status=status,
            response_headers=response_headers, response_body=response_capture.data,
            response_truncated=response_capture.truncated, error=error,
            console=report.console if report else [],
            determinism=report.determinism if report else [],
            mode=self.mode, app_path=str(self.app), flux_version=flux_version(),
            deno_version=self.deno_version, worker_id=worker.id, boot_id=boot_id or None,
        )
        return ExecutionResult(execution=execution, report=report)

    async def _connection(self, worker: Worker) -> WorkerConnection:
        """The worker's keep-alive connection, reopened after a restart or a close."""
        connection = self._connections.get(worker.id)
        if connection is not None and connection.reusable and connection.port == worker.port:
            return connection
        if connection is not None:
            connection.close()
        connection = await WorkerConnection.open("127.0.0.1", worker.port)
        self._connections[worker.id] = connection
        return connection

    @staticmethod
    def _last_words(report_future: asyncio.Future[ShimReport]) -> ShimReport | None:
        """The report a crashing worker managed to send before it died, if any."""
        if report_future.done() and not report_future.cancelled() \
                and report_future.exception() is None:
            return report_future.result()
        return None

    async def _failure(self, worker: Worker, generation: int, exc: BaseException) -> ErrorInfo:
        """What went wrong with the worker: it died (restart follows), or it did not report."""
        wait = 0.0 if isinstance(exc, TimeoutError) else 2.0
        ended = await worker.wait_exit(generation, wait)
        if ended is not None:
            return ErrorInfo(name="WorkerCrashed",
                             message=f"{ended.message} while serving the request",
                             stack=ended.stderr)
        if isinstance(exc, TimeoutError):
            return ErrorInfo(name="FluxReportMissing",
                             message=f"worker {worker.id} sent no report for the request "
                                     f"within {self.report_timeout:g}s")
        return ErrorInfo(name="WorkerConnectionError",
                         message=f"worker {worker.id}: {type(exc).__name__}: {exc}")
