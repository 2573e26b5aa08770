"""The pool under load and under failure: attribution, crashes, start errors, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import socket
from pathlib import Path

import aiohttp
import pytest

from flux_runtime.pool import WorkerPool
from flux_runtime.worker import WorkerSlotSettings, WorkerStartError
from tests.runtime.conftest import APPS, DENO_DIR, FIXTURES, serving


async def test_fifty_concurrent_requests_over_four_workers_keep_their_own_console() -> None:
    async with serving(APPS["hono"], workers=4) as served:
        async def one(tag: int) -> tuple[str, bytes]:
            async with served.client.get(f"{served.front.url}/work?tag=t{tag}") as response:
                assert response.status == 200
                return response.headers["x-flux-execution-id"], await response.read()

        results = await asyncio.gather(*(one(tag) for tag in range(50)))
        executions = [await served.record(execution_id) for execution_id, _ in results]

    assert len({execution.id for execution in executions}) == 50
    for tag, (execution, (_, body)) in enumerate(zip(executions, results, strict=True)):
        assert body == f"done t{tag}".encode()
        assert [(c.level, c.text) for c in execution.console] == [
            ("log", f"start t{tag}"), ("info", f"middle t{tag}"), ("warn", f"end t{tag}")]
        assert [e.kind for e in execution.determinism] == ["math_random", "math_random"]
    by_worker: dict[str, list[tuple[float, float]]] = {}
    for execution in executions:
        by_worker.setdefault(execution.worker_id, []).append(
            (execution.started_at, execution.started_at + execution.duration))
    assert sorted(by_worker) == ["w0", "w1", "w2", "w3"]
    for spans in by_worker.values():  # one request at a time per worker
        spans.sort()
        assert all(end <= next_start for (_, end), (next_start, _) in itertools.pairwise(spans))


async def test_worker_crash_mid_request_is_a_502_an_error_record_and_a_restart() -> None:
    async with serving(APPS["deno_serve"], workers=1) as served:
        worker = served.pool.workers[0]
        first_pid = worker.pid
        async with served.client.get(served.front.url + "/crash") as response:
            assert response.status == 502
            assert b"worker crash" in await response.read()
            crashed = await served.execution(response)
        assert crashed.status == 502
        assert crashed.outcome.value == "error"
        assert crashed.error is not None and crashed.error.name == "WorkerCrashed"
        assert "worker crash" in crashed.error.message
        assert "\n" not in crashed.error.message
        # the shim reported before the worker died: the app's stack and the console lines
        assert crashed.error.stack.startswith("Error: worker crash\n")
        assert "behaviour.ts" in crashed.error.stack
        assert [(c.level, c.text) for c in crashed.console] == [("log", "crashing")]

        async with served.client.get(served.front.url + "/hello?name=after") as response:
            assert response.status == 200  # waited in the queue for the restarted worker
            assert json.loads(await response.read())["hello"] == "after"
            after = await served.execution(response)
        assert worker.pid != first_pid and worker.starts == 2
        assert after.boot_id != crashed.boot_id  # a new process is a new boot
        starts = [event[1][1] for event in served.events if event[0] == "starting"]
        readies = [event[1][1] for event in served.events if event[0] == "ready"]
        assert starts == readies == [crashed.boot_id, after.boot_id]
        assert served.pool.crashes == 1


async def test_console_lines_printed_just_before_deno_exit_are_kept() -> None:
    """`Deno.exit` leaves no time for the report's asynchronous write: the shim writes the
    request's report synchronously to stderr instead, where the runtime takes it back out."""
    async with serving(APPS["deno_serve"], workers=1) as served:
        worker = served.pool.workers[0]
        async with served.client.get(served.front.url + "/exit") as response:
            assert response.status == 502
            exited = await served.execution(response)
        assert exited.error is not None and exited.error.name == "WorkerCrashed"
        assert "code 3" in exited.error.message
        assert [(c.level, c.text) for c in exited.console] == [("log", "leaving"),
                                                               ("error", "bye")]
        assert not any("flux-report" in line for line in worker.stderr_tail)
        assert "flux-report" not in (exited.error.stack or "")


async def test_worker_leaves_when_the_runtime_goes_away() -> None:
    pool = WorkerPool(APPS["deno_serve"], workers=1, deno_dir=DENO_DIR)
    await pool.start()
    worker = pool.workers[0]
    try:
        generation = worker.starts
        await worker._control.close()  # as if flux had been killed
        ended = await worker.wait_exit(generation, 10.0)
        assert ended is not None and ended.returncode == 0
    finally:
        await pool.stop()


async def test_missing_app_file_is_a_one_line_error(tmp_path: Path) -> None:
    pool = WorkerPool(tmp_path / "nope.ts", workers=2, deno_dir=DENO_DIR)
    with pytest.raises(WorkerStartError) as raised:
        await pool.start()
    assert str(raised.value) == f"app file not found: {tmp_path / 'nope.ts'}"


async def test_module_error_is_one_line_with_denos_message(tmp_path: Path) -> None:
    pool = WorkerPool(FIXTURES / "module_error_app.ts", workers=1, deno_dir=DENO_DIR)
    with pytest.raises(WorkerStartError) as raised:
        await pool.start()
    message = str(raised.value)
    assert "\n" not in message
    assert "Module not found" in message and "does_not_exist.ts" in message
    assert message.startswith(str(FIXTURES / "module_error_app.ts"))

    broken = tmp_path / "broken.ts"
    broken.write_text("const x = ;\nDeno.serve(() => new Response('x'));\n")
    pool = WorkerPool(broken, workers=1, deno_dir=DENO_DIR)
    with pytest.raises(WorkerStartError) as raised:
        await pool.start()
    message = str(raised.value)
    assert "\n" not in message
    assert "Expression expected" in message and "broken.ts:1" in message


async def test_app_that_never_listens_is_an_error(tmp_path: Path) -> None:
    quiet = tmp_path / "quiet.ts"
    quiet.write_text("console.log('no server here');\n")
    pool = WorkerPool(quiet, workers=1, deno_dir=DENO_DIR)
    with pytest.raises(WorkerStartError) as raised:
        await pool.start()
    assert "exited with code 0 before serving HTTP" in str(raised.value)


LISTEN_FORMS = {
    "handler_only": "Deno.serve((_req) => new Response('handler_only'));",
    "options_and_handler": "Deno.serve({ port: PORT, hostname: '0.0.0.0' }, "
                           "() => new Response('options_and_handler'));",
    "handler_in_options": "Deno.serve({ port: PORT, onListen() { console.log('up'); },"
                          " handler: () => new Response('handler_in_options') });",
    "fetch_object": "class App { fetch(_req: Request) { return new Response('fetch_object'); } }\n"
                    "Deno.serve(new App());",
    "node_http": "import http from 'node:http';\n"
                 "http.createServer((_q, s) => s.end('node_http'))"
                 ".listen({ port: PORT, host: '0.0.0.0' });",
    "node_http_port_host_cb": "import { createServer } from 'node:http';\n"
                              "createServer((_q, s) => s.end('node_http_port_host_cb'))"
                              ".listen(PORT, '0.0.0.0', () => console.log('up'));",
}


def hard_coded_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("form", sorted(LISTEN_FORMS))
async def test_every_listen_form_is_moved_to_the_worker_port(form: str, tmp_path: Path) -> None:
    own_port = hard_coded_port()
    app = tmp_path / f"{form}.ts"
    app.write_text(LISTEN_FORMS[form].replace("PORT", str(own_port)) + "\n")
    async with serving(app, workers=2) as served:
        for _ in range(2):
            async with served.client.get(served.front.url + "/") as response:
                assert await response.read() == form.encode()
                execution = await served.execution(response)
                assert execution.status == 200
        with socket.socket() as probe:  # the app's own port was never bound
            assert probe.connect_ex(("127.0.0.1", own_port)) != 0


async def test_per_worker_environment_overrides(tmp_path: Path) -> None:
    app = tmp_path / "env.ts"
    app.write_text("Deno.serve(async () => {\n"
                   "  await new Promise((resolve) => setTimeout(resolve, 50));\n"
                   "  return new Response(Deno.env.get('DATABASE_URL') ?? 'unset');\n"
                   "});\n")

    def settings(index: int) -> WorkerSlotSettings:
        url = f"postgres://app@127.0.0.1:{7000 + index}/db"
        return WorkerSlotSettings(env={"DATABASE_URL": url})

    async with serving(app, workers=2, worker_settings=settings) as served:
        results = await asyncio.gather(served.pool.execute("GET", "/"),
                                       served.pool.execute("GET", "/"))
    assert sorted((r.execution.worker_id, r.body.decode()) for r in results) == [
        ("w0", "postgres://app@127.0.0.1:7000/db"), ("w1", "postgres://app@127.0.0.1:7001/db")]


async def test_the_app_does_not_see_fluxs_own_variables(tmp_path: Path) -> None:
    app = tmp_path / "env_names.ts"
    app.write_text("Deno.serve(() => Response.json(Object.keys(Deno.env.toObject())"
                   ".filter((name) => name.startsWith('FLUX_'))));\n")
    env = {**os.environ, "FLUX_APP_OWN": "kept"}
    async with serving(app, workers=1, env=env) as served:
        assert json.loads((await served.pool.execute("GET", "/")).body) == ["FLUX_APP_OWN"]


async def test_graceful_shutdown_finishes_in_flight_requests() -> None:
    async with serving(APPS["deno_serve"], workers=1) as served:
        in_flight = asyncio.create_task(
            served.client.get(served.front.url + "/work?tag=last"))
        while served.pool._in_flight == 0:  # the request reached the worker
            await asyncio.sleep(0.005)
        await served.front.stop()
        response = await in_flight
        assert response.status == 200
        assert await response.read() == b"done last"
        response.release()
        await served.pool.stop()
        assert all(worker.exited for worker in served.pool.workers)


SLOW_APP = """
Deno.serve(async (request: Request) => {
  const tag = new URL(request.url).searchParams.get("tag");
  console.log(`begin ${tag}`);
  await new Promise((resolve) => setTimeout(resolve, tag === "slow" ? 600 : 1));
  console.log(`end ${tag}`);
  return new Response(`done ${tag}`);
});
"""


async def test_no_free_worker_in_time_is_a_recorded_503(tmp_path: Path) -> None:
    app = tmp_path / "slow.ts"
    app.write_text(SLOW_APP)
    async with serving(app, workers=1, acquire_timeout=0.2) as served:
        slow = asyncio.create_task(served.pool.execute("GET", "/?tag=slow"))
        while served.pool._in_flight == 0:
            await asyncio.sleep(0.005)
        async with served.client.get(served.front.url + "/?tag=late") as response:
            assert response.status == 503
            execution = await served.execution(response)
        assert execution.error is not None and execution.error.name == "NoWorkerAvailable"
        assert (await slow).body == b"done slow"


async def test_a_cancelled_caller_does_not_free_the_worker_early(tmp_path: Path) -> None:
    app = tmp_path / "slow.ts"
    app.write_text(SLOW_APP)
    async with serving(app, workers=1) as served:
        slow = asyncio.create_task(served.pool.execute("GET", "/?tag=slow"))
        while served.pool._in_flight == 0:
            await asyncio.sleep(0.005)
        slow.cancel()
        after = await served.pool.execute("GET", "/?tag=next")
        assert [c.text for c in after.execution.console] == ["begin next", "end next"]
        slow_record = next(e for e in served.executions.values() if e.query == "tag=slow")
        assert [c.text for c in slow_record.console] == ["begin slow", "end slow"]


async def test_a_port_taken_before_deno_binds_it_is_retried_elsewhere(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import flux_runtime.worker as worker_module

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        taken_port = taken.getsockname()[1]
        picks = iter([taken_port])
        real_free_port = worker_module.free_port
        monkeypatch.setattr(worker_module, "free_port",
                            lambda host="127.0.0.1": next(picks, None) or real_free_port(host))
        pool = WorkerPool(APPS["deno_serve"], workers=1, deno_dir=DENO_DIR)
        await pool.start()
        try:
            worker = pool.workers[0]
            assert worker.port != taken_port and worker.starts == 2
            assert (await pool.execute("GET", "/hello")).execution.status == 200
        finally:
            await pool.stop()


async def test_deno_args_reach_deno(tmp_path: Path) -> None:
    app = tmp_path / "location.ts"
    app.write_text("Deno.serve(() => new Response(globalThis.location?.href ?? 'none'));\n")
    async with serving(app, workers=1, deno_args=["--location=https://example.test/base"]) \
            as served:
        result = await served.pool.execute("GET", "/")
        assert result.body == b"https://example.test/base"
        assert "-A" in served.pool.workers[0].command(1, WorkerSlotSettings())


async def test_shutdown_ends_keep_alive_clients_instead_of_waiting_on_them() -> None:
    async with serving(APPS["deno_serve"], workers=1) as served:
        answered = 0

        async def busy_client() -> None:
            nonlocal answered
            with contextlib.suppress(aiohttp.ClientError):
                while True:  # one keep-alive connection, one request after another
                    async with served.client.get(served.front.url + "/work?tag=k") as response:
                        assert await response.read() == b"done k"
                        answered += 1

        client = asyncio.create_task(busy_client())
        while answered < 3:
            await asyncio.sleep(0.01)
        async with asyncio.timeout(20):  # not a speed check: without the fix it never returns
            await served.front.stop()
            await client
        assert answered >= 3


async def test_workers_run_under_batch_scheduling_and_a_restart_does_too() -> None:
    """A woken worker must not preempt the serving loop (flux_runtime.worker.batch_scheduling)."""
    def policies(pid: int) -> set[int]:
        return {os.sched_getscheduler(int(tid)) for tid in os.listdir(f"/proc/{pid}/task")}

    async with serving(APPS["deno_serve"], workers=1) as served:
        worker = served.pool.workers[0]
        first_pid = worker.pid
        assert first_pid is not None
        assert policies(first_pid) == {os.SCHED_BATCH}
        async with served.client.get(served.front.url + "/crash") as response:
            assert response.status == 502
        async with asyncio.timeout(30):
            while worker.pid in (None, first_pid) or not worker.ready:
                await asyncio.sleep(0.05)
        assert policies(worker.pid) == {os.SCHED_BATCH}  # type: ignore[arg-type]
