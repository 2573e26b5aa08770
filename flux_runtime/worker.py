"""One Deno process running the app under the preload shim, serving one request at a time."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import re
import secrets
import signal
import socket
import sys
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flux_runtime.control import ControlServer, Message, ShimReport
from flux_runtime.deno import deno_binary, deno_dir, shim_path
from flux_server.records import DeterminismEntry, Mode

ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
PERMISSION_FLAG = re.compile(r"^(-A|-P(=.*)?|--no-prompt|--(allow|deny)-[a-z-]+(=.*)?"
                             r"|--permission-set(=.*)?)$")
STDERR_TAIL_LINES = 200
SHIM_ENV = ("FLUX_CONTROL_PORT", "FLUX_WORKER_TOKEN", "FLUX_WORKER_PORT", "FLUX_WORKER_HOST",
            "FLUX_MODE")
# `deno run` says this about `export default {fetch}` apps, which the shim serves itself.
IGNORED_STDERR = ('did you mean to run "deno serve"?',)
# The shim's report of the request being served when the app called `Deno.exit`, written to
# stderr synchronously (no time is left for the control connection): marker, token, JSON.
LAST_WORDS = "\x1eflux-report "
OUTPUT_LINE_LIMIT = 16 * 1024 * 1024  # such a report carries up to 1 MiB of console text


def batch_scheduling(pid: int) -> None:
    """Puts every thread of a worker under SCHED_BATCH (threads it starts later inherit it).

    Every request crosses the serving process's one event loop several times, and each time
    the loop hands a worker bytes, the woken worker preempted the loop on its CPU: the loop,
    and every other request with it, waited out the worker's slice in the middle of a write.
    A SCHED_BATCH thread does not preempt on wake-up; its share of the CPU is unchanged.
    Measured on 2 cores, alternating 3 s runs of `wrk -c32` against one `flux serve`: median
    +5 % and +9 % req/s, 13 of 18 pairs faster (docs/runtime.md). Linux only; elsewhere, or
    if the kernel refuses, workers keep the default policy."""
    setscheduler = getattr(os, "sched_setscheduler", None)
    if setscheduler is None:
        return
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return
    for tid in threads:
        with contextlib.suppress(OSError, ValueError):
            setscheduler(int(tid), os.SCHED_BATCH, os.sched_param(0))


class WorkerStartError(RuntimeError):
    """The app could not be started; the message is one line, with Deno's own words."""


class WorkerExited(ConnectionError):
    """The worker process ended while the runtime was waiting on it."""


@dataclass(slots=True)
class WorkerConfig:
    """How to run the app; shared by every worker of a pool."""

    app: Path
    mode: Mode = Mode.RECORD
    deno_args: Sequence[str] = ()
    env: Mapping[str, str] | None = None  # base environment; None = this process's
    deno_dir: str | None = None
    cwd: str | None = None
    start_timeout: float = 60.0
    echo_output: bool = False  # copy the app's stdout/stderr to ours, prefixed by worker id
    replay_permissions: Sequence[str] = ("--allow-read", "--allow-env", "--allow-sys")


@dataclass(slots=True)
class WorkerSlotSettings:
    """What differs per worker slot (flux serve runs one set of proxies per worker)."""

    env: dict[str, str] = field(default_factory=dict)  # e.g. rewritten upstream URLs
    net_allow: list[str] = field(default_factory=list)  # replay: host:port the app may reach


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def deno_error_line(lines: Sequence[str]) -> str | None:
    """Deno's own one-line error (`error: ...`, with its `at file:...` location if any)."""
    for index, line in enumerate(lines):
        if line.startswith("error:"):
            message = line.removeprefix("error:").strip()
            for follow in lines[index + 1:index + 8]:
                stripped = follow.strip()
                if stripped.startswith("at "):
                    return f"{message} ({stripped})"
            return message
    return None


@dataclass(frozen=True, slots=True)
class ProcessExit:
    """How one process of a slot ended, kept after the slot has started its successor."""

    generation: int
    returncode: int | None
    message: str  # one line
    stderr: str  # Deno's last words, whole


class Worker:
    """A worker slot: its Deno process comes and goes (crash, restart), the slot stays."""

    def __init__(self, index: int, config: WorkerConfig,
                 settings: Callable[[int], WorkerSlotSettings] | None = None,
                 on_exit: Callable[[Worker], None] | None = None) -> None:
        self.index = index
        self.id = f"w{index}"
        self.config = config
        self._settings = settings
        self._on_exit = on_exit
        self._control = ControlServer(self._on_message)
        self._process: asyncio.subprocess.Process | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._listening: asyncio.Future[int] | None = None
        self._exited = asyncio.Event()
        self._reports: dict[str, asyncio.Future[ShimReport]] = {}
        self._primed: dict[str, asyncio.Future[None]] = {}
        self._last_download = 0.0  # loop time of Deno's last "Download ..." line
        self._stopping = False
        self._exits: dict[int, ProcessExit] = {}
        self._exit_events: dict[int, asyncio.Event] = {}
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self.port = 0
        self.boot_id = ""  # fresh for every process start: the boot record's id
        self.starts = 0
        self.returncode: int | None = None
        self.ready = False  # listening and not exited
        self.busy = False  # serving a request (managed by the pool)

    # ------------------------------------------------------------------ lifecycle

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def command(self, control_port: int, settings: WorkerSlotSettings) -> list[str]:
        """The `deno run` command line: permissions, preload shim, DENO_ARGS, app."""
        user_args = list(self.config.deno_args)
        if self.config.mode is Mode.REPLAY:
            user_args = [a for a in user_args if not PERMISSION_FLAG.match(a)]
            allowed = [f"127.0.0.1:{self.port}", f"127.0.0.1:{control_port}", *settings.net_allow]
            permissions = [*self.config.replay_permissions, f"--allow-net={','.join(allowed)}",
                           "--no-prompt"]
        else:
            permissions = (self.shim_grants(user_args, control_port)
                           if any(PERMISSION_FLAG.match(a) for a in user_args) else ["-A"])
        return [deno_binary(), "run", *permissions, "--preload", str(shim_path()), *user_args,
                str(self.config.app)]

    def shim_grants(self, user_args: Sequence[str], control_port: int) -> list[str]:
        """What the shim needs on top of permissions the user chose: its own loopback ports and
        FLUX_* variables. Deno merges `--allow-x=list` flags, but a list after a bare
        `--allow-x` narrows it, so nothing is added where the user already granted all."""
        if any(a in ("-A", "--allow-all") or a.startswith(("-P", "--permission-set"))
               for a in user_args):
            return []
        grants = []
        if "--allow-net" not in user_args:
            grants.append(f"--allow-net=127.0.0.1:{self.port},127.0.0.1:{control_port}")
        if "--allow-env" not in user_args:
            grants.append("--allow-env=" + ",".join(SHIM_ENV))
        return grants

    def environment(self, control_port: int, token: str, settings: WorkerSlotSettings
                    ) -> dict[str, str]:
        env = dict(os.environ if self.config.env is None else self.config.env)
        env.update(settings.env)
        directory = deno_dir(self.config.deno_dir)
        if directory:
            env["DENO_DIR"] = directory
        env.setdefault("DENO_NO_UPDATE_CHECK", "1")
        env.update({
            "FLUX_CONTROL_PORT": str(control_port),
            "FLUX_WORKER_TOKEN": token,
            "FLUX_WORKER_PORT": str(self.port),
            "FLUX_WORKER_HOST": "127.0.0.1",
            "FLUX_MODE": self.config.mode.value,
        })
        return env

    async def start(self, boot_id: str | None = None) -> None:
        """Start the process and return once the app listens; raise WorkerStartError otherwise.

        `boot_id` names this process's boot record (a fresh one if not given). The worker's
        port is picked free just before Deno binds it; if another process took it meanwhile,
        the start is tried again on another port."""
        for attempt in range(3):
            try:
                await self._start_once(boot_id)
                return
            except WorkerStartError as exc:
                if "AddrInUse" not in str(exc) or attempt == 2:
                    raise

    async def _start_once(self, boot_id: str | None) -> None:
        app = self.config.app
        if not app.is_file():
            raise WorkerStartError(f"app file not found: {app}")
        if self._control.port == 0:
            await self._control.start()
        settings = self._settings(self.index) if self._settings else WorkerSlotSettings()
        token = secrets.token_hex(16)
        self._control.expect(token)
        self.port = free_port()
        self.boot_id = boot_id or str(uuid.uuid4())
        self.starts += 1
        generation = self.starts
        self.ready = False
        self.returncode = None
        self._stopping = False
        self._exited = self._exit_events[generation] = asyncio.Event()
        for old in [g for g in self._exit_events if g < generation - 4]:
            self._exit_events.pop(old, None)
            self._exits.pop(old, None)
        self.stderr_tail.clear()
        loop = asyncio.get_running_loop()
        self._listening = loop.create_future()
        self._process = await asyncio.create_subprocess_exec(
            *self.command(self._control.port, settings),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self.environment(self._control.port, token, settings),
            cwd=self.config.cwd,
            limit=OUTPUT_LINE_LIMIT,
            start_new_session=True,  # Ctrl-C reaches flux, which stops workers gracefully
        )
        process = self._process
        self._tasks = [
            asyncio.create_task(self._drain(process.stdout, sys.stdout, keep=False)),
            asyncio.create_task(self._drain(process.stderr, sys.stderr, keep=True,
                                            last_words=f"{LAST_WORDS}{token} ")),
        ]
        self._tasks.append(asyncio.create_task(self._watch(process, generation,
                                                           self._tasks[:2])))
        waiter = asyncio.ensure_future(self._exited.wait())
        self._last_download = loop.time()
        try:
            # start_timeout counts from the last package Deno downloaded: a first run that
            # fetches many npm packages is slow, not stuck
            while True:
                done, _ = await asyncio.wait({self._listening, waiter}, timeout=1.0,
                                             return_when=asyncio.FIRST_COMPLETED)
                if done or loop.time() - self._last_download >= self.config.start_timeout:
                    break
        finally:
            waiter.cancel()
        if self._listening in done and not self._exited.is_set():
            self.ready = True
            batch_scheduling(process.pid)
            return
        if self._exited.is_set():
            raise WorkerStartError(self.exit_message(before_ready=True))
        await self.stop()
        raise WorkerStartError(
            f"{app}: the app did not start an HTTP server within {self.config.start_timeout:g}s"
            " (Deno.serve, node:http listen, or `export default {fetch}`)")

    async def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after `timeout`; returns once the process is gone."""
        self._stopping = True
        self.ready = False
        process = self._process
        if process is None:
            return
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        watcher = self._tasks[-1] if self._tasks else None
        if watcher is not None and not watcher.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(watcher), timeout)

    async def close(self) -> None:
        """Stop the process and the control listener for good."""
        await self.stop()
        await self._control.close()

    @property
    def exited(self) -> bool:
        return self._exited.is_set()

    async def wait_exit(self, generation: int, timeout: float) -> ProcessExit | None:
        """How process `generation` ended, waiting up to `timeout`; None if it still runs."""
        event = self._exit_events.get(generation)
        if event is None:
            return self._exits.get(generation)
        if not event.is_set():
            try:
                await asyncio.wait_for(event.wait(), timeout)
            except TimeoutError:
                return None
        return self._exits.get(generation)

    def exit_message(self, before_ready: bool = False) -> str:
        """One line: Deno's own error when it printed one, else the exit code and last words."""
        lines = [line for line in self.stderr_tail if line.strip()]
        deno_says = deno_error_line(lines)
        code = self.returncode
        if before_ready:
            if deno_says:
                return f"{self.config.app}: {deno_says}"
            last = f": {lines[-1].strip()}" if lines else ""
            return (f"{self.config.app}: the app exited with code {code} before serving HTTP"
                    f"{last}")
        detail = f": {deno_says}" if deno_says else (f": {lines[-1].strip()}" if lines else "")
        return f"worker {self.id} (pid {self.pid}) exited with code {code}{detail}"

    # ------------------------------------------------------------------ per request

    def report(self, execution_id: str) -> asyncio.Future[ShimReport]:
        """The shim's report for this request (it may arrive before anyone asks)."""
        future = self._reports.get(execution_id)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            if self._exited.is_set():
                future.set_exception(WorkerExited(self.exit_message()))
            self._reports[execution_id] = future
        return future

    def forget(self, execution_id: str) -> None:
        future = self._reports.pop(execution_id, None)
        if future is None:
            return
        if not future.done():
            future.cancel()
        elif not future.cancelled():
            future.exception()  # mark a crash as seen: it is reported through the dispatch

    async def prime(self, execution_id: str, entries: Sequence[DeterminismEntry],
                    timeout: float = 10.0) -> None:
        """Replay: hand the shim the values this request will observe, before sending it."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._primed[execution_id] = future
        try:
            await self._control.send({"type": "prime", "id": execution_id,
                                      "determinism": [{"kind": e.kind, "value": e.value}
                                                      for e in entries]})
            await asyncio.wait_for(future, timeout)
        finally:
            self._primed.pop(execution_id, None)

    # ------------------------------------------------------------------ internals

    def _on_message(self, message: Message) -> None:
        kind = message.get("type")
        if kind == "listening":
            if self._listening is not None and not self._listening.done():
                self._listening.set_result(int(message.get("port") or 0))
        elif kind == "done":
            # The pool asks for every report before dispatching; a report nobody waits for
            # any more (it came after the report timeout) is not kept.
            future = self._reports.get(str(message.get("id")))
            if future is not None and not future.done():
                future.set_result(ShimReport.from_message(message))
        elif kind == "primed":
            primed = self._primed.get(str(message.get("id")))
            if primed is not None and not primed.done():
                primed.set_result(None)

    async def _drain(self, stream: asyncio.StreamReader | None, echo: Any, keep: bool,
                     last_words: str | None = None) -> None:
        if stream is None:
            return
        while True:
            try:
                raw = await stream.readline()
            except ValueError:  # a line longer than the reader's limit
                raw = await stream.read(65536)
            if not raw:
                return
            text = raw.decode("utf-8", "replace").rstrip("\n")
            if last_words is not None and text.startswith(last_words) \
                    and self._take_last_words(text[len(last_words):]):
                continue
            line = ANSI_ESCAPE.sub("", text)
            if any(ignored in line for ignored in IGNORED_STDERR):
                continue
            if keep:
                self.stderr_tail.append(line)
                if line.startswith("Download "):
                    self._last_download = asyncio.get_running_loop().time()
            if self.config.echo_output:
                echo.write(f"[{self.id}] {line}\n")
                echo.flush()

    def _take_last_words(self, payload: str) -> bool:
        """The report the shim wrote on `Deno.exit`; False (kept as output) if unreadable."""
        try:
            message = json.loads(payload)
        except ValueError:
            return False
        if not isinstance(message, dict) or message.get("type") != "done":
            return False
        self._on_message(message)
        return True

    async def _watch(self, process: asyncio.subprocess.Process, generation: int,
                     drains: list[asyncio.Task[Any]]) -> None:
        self.returncode = await process.wait()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.gather(*drains), 2.0)
        was_serving = self.ready
        self.ready = False
        self._exits[generation] = ProcessExit(generation, self.returncode, self.exit_message(),
                                              "\n".join(self.stderr_tail))
        self._exit_events[generation].set()
        error = WorkerExited(self.exit_message())
        for future in list(self._reports.values()) + list(self._primed.values()):
            if not future.done():
                future.set_exception(error)
                future.exception()  # retrieved: nobody may be waiting any more
        if was_serving and not self._stopping and self._on_exit is not None:
            self._on_exit(self)
