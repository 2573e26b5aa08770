"""The front is transparent: the app sees the client's request, the client the app's response."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.runtime.conftest import Served, serving

MIRROR_APP = """
Deno.serve(async (request: Request) => {
  const url = new URL(request.url);
  if (url.pathname === "/exit") {
    console.log("leaving");
    Deno.exit(3);
  }
  if (url.pathname === "/empty") return new Response(null, { status: 204 });
  if (url.pathname === "/early") return new Response("too large", { status: 413 });
  if (url.pathname === "/duplex") {
    // answers "first", then waits for the client's next body bytes before "second"
    const reader = request.body!.getReader();
    const stream = new ReadableStream({
      async start(controller) {
        controller.enqueue(new TextEncoder().encode("first;"));
        const { value } = await reader.read();
        controller.enqueue(new TextEncoder().encode(`second ${new TextDecoder().decode(value)};`));
        controller.close();
      },
    });
    return new Response(stream);
  }
  const body = await request.text();
  const headers: [string, string][] = [];
  request.headers.forEach((value, name) => headers.push([name, value]));
  const response = Response.json({ method: request.method, url: url.pathname + url.search,
                                   headers, body });
  response.headers.append("set-cookie", "a=1");
  response.headers.append("set-cookie", "b=2");
  return response;
});
"""


@pytest.fixture(scope="module")
async def mirror(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Served]:
    app = Path(tmp_path_factory.mktemp("front")) / "mirror.ts"
    app.write_text(MIRROR_APP)
    async with serving(app, workers=1) as served:
        yield served


async def raw_exchange(served: Served, request: bytes) -> bytes:
    """One request on a fresh connection, exactly these bytes; the whole answer."""
    reader, writer = await asyncio.open_connection(served.front.host, served.front.port)
    writer.write(request)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    return answer


async def test_app_sees_exactly_the_client_headers_and_body(mirror: Served) -> None:
    answer = await raw_exchange(mirror, (
        b"POST /m?q=1%202 HTTP/1.1\r\nHost: example.test\r\nX-One: 1\r\nX-One: 2\r\n"
        b"x-flux-execution-id: forged\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n"
        b"Connection: close\r\n\r\nhello"))
    head, _, body = answer.partition(b"\r\n\r\n")
    seen = json.loads(body)
    assert seen["method"] == "POST" and seen["url"] == "/m?q=1%202" and seen["body"] == "hello"
    assert seen["headers"] == [["content-length", "5"], ["content-type", "text/plain"],
                               ["host", "example.test"], ["x-one", "1, 2"]]
    lines = head.decode().lower().split("\r\n")
    assert lines[0] == "http/1.1 200 ok"
    assert [line for line in lines if line.startswith("set-cookie")] == [
        "set-cookie: a=1", "set-cookie: b=2"]
    assert not any(line.startswith("server:") for line in lines)
    execution_id = next(line.split(": ")[1] for line in lines
                        if line.startswith("x-flux-execution-id"))
    execution = await mirror.record(execution_id)
    assert execution.query == "q=1%202"
    assert ("x-flux-execution-id", "forged") in execution.request_headers  # as the client sent
    assert [v for k, v in execution.response_headers if k.lower() == "set-cookie"] == ["a=1", "b=2"]


async def test_chunked_upload_head_and_empty_responses(mirror: Served) -> None:
    answer = await raw_exchange(mirror, (
        b"PUT /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"))
    seen = json.loads(answer.partition(b"\r\n\r\n")[2])
    assert seen["body"] == "abcde"
    assert ["transfer-encoding", "chunked"] in seen["headers"]

    async with mirror.client.head(mirror.front.url + "/h") as response:
        assert response.status == 200 and await response.read() == b""
        assert int(response.headers["content-length"]) > 0
        assert (await mirror.execution(response)).method == "HEAD"
    async with mirror.client.get(mirror.front.url + "/empty") as response:
        assert response.status == 204
        assert (await mirror.execution(response)).response_body == b""


async def test_app_exiting_mid_request_is_a_502_and_the_next_request_is_served(
        mirror: Served) -> None:
    async with mirror.client.get(mirror.front.url + "/exit") as response:
        assert response.status == 502
        execution = await mirror.execution(response)
    assert execution.error is not None and execution.error.name == "WorkerCrashed"
    assert "exited with code 3" in execution.error.message
    async with mirror.client.get(mirror.front.url + "/after") as response:
        assert response.status == 200
        assert json.loads(await response.read())["url"] == "/after"


async def test_app_answering_before_reading_the_body(mirror: Served) -> None:
    async def upload():  # type: ignore[no-untyped-def]
        for _ in range(64):
            yield b"z" * 32768

    async with mirror.client.post(mirror.front.url + "/early", data=upload()) as response:
        assert response.status == 413
        assert await response.read() == b"too large"
        execution = await mirror.execution(response)
    assert execution.status == 413 and execution.response_body == b"too large"
    async with mirror.client.get(mirror.front.url + "/next") as response:
        assert response.status == 200
        assert json.loads(await response.read())["url"] == "/next"


def test_front_and_pool_run_under_uvloop(tmp_path: Path) -> None:
    """`flux serve` may run on uvloop, whose transports are not asyncio's classes."""
    import uvloop

    app = tmp_path / "uv.ts"
    app.write_text(MIRROR_APP)

    async def scenario() -> tuple[int, dict[str, object], int]:
        async with serving(app, workers=1) as served:
            async with served.client.post(served.front.url + "/uv", data=b"body") as response:
                seen = json.loads(await response.read())
                execution = await served.execution(response)
            return response.status, seen, execution.status

    status, seen, recorded = uvloop.run(scenario())
    assert (status, recorded) == (200, 200)
    assert seen["body"] == "body" and seen["url"] == "/uv"


async def test_streams_flow_both_ways_while_the_request_is_open(mirror: Served) -> None:
    """A chunk the app streams reaches the client at once, before the app needs more input."""
    reader, writer = await asyncio.open_connection(mirror.front.host, mirror.front.port)
    writer.write(b"POST /duplex HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
    await writer.drain()
    received = b""
    async with asyncio.timeout(10):
        while b"first;" not in received:
            received += await reader.read(65536)
        writer.write(b"2\r\ngo\r\n0\r\n\r\n")
        await writer.drain()
        while b"second" not in received or not received.endswith(b"0\r\n\r\n"):
            received += await reader.read(65536)
    writer.close()
    assert b"second go;" in received


async def read_responses(reader: asyncio.StreamReader, count: int) -> list[tuple[bytes, bytes]]:
    """`count` Content-Length framed responses from one connection, as (head, body)."""
    responses = []
    for _ in range(count):
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.lower().split(b"\r\n")
                      if line.startswith(b"content-length:"))
        responses.append((head, await reader.readexactly(length)))
    return responses


async def test_pipelined_requests_are_answered_in_order_each_with_its_own_record(
        mirror: Served) -> None:
    reader, writer = await asyncio.open_connection(mirror.front.host, mirror.front.port)
    writer.write(b"".join(b"GET /p%d HTTP/1.1\r\nHost: h\r\n\r\n" % i for i in range(3)))
    async with asyncio.timeout(10):
        responses = await read_responses(reader, 3)
    writer.close()
    assert [json.loads(body)["url"] for _, body in responses] == ["/p0", "/p1", "/p2"]
    ids = [next(line.split(b": ")[1].decode() for line in head.split(b"\r\n")
                if line.lower().startswith(b"x-flux-execution-id")) for head, _ in responses]
    assert len(set(ids)) == 3
    assert [(await mirror.record(i)).path for i in ids] == ["/p0", "/p1", "/p2"]


@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"GET / HTTP/1.1\r\nHost h\r\n\r\n", b"400"),  # a header line without a colon
    (b"NOT A REQUEST\r\n\r\n", b"400"),
    (b"GET / HTTP/1.1\r\nX-Big: " + b"x" * 70_000 + b"\r\n\r\n", b"431"),
    (b"GET /" + b"u" * 70_000 + b" HTTP/1.1\r\n\r\n", b"414"),
])
async def test_a_request_the_front_cannot_take_gets_an_error_and_the_front_stays_up(
        mirror: Served, request_bytes: bytes, status: bytes) -> None:
    answer = await raw_exchange(mirror, request_bytes)  # read to the end: the front closes
    assert answer.startswith(b"HTTP/1.1 " + status)
    assert b"connection: close" in answer.lower()
    async with mirror.client.get(mirror.front.url + "/still") as response:
        assert response.status == 200


async def test_an_http_1_0_client_gets_an_http_1_0_answer_and_the_close(mirror: Served) -> None:
    answer = await raw_exchange(mirror, b"GET /old HTTP/1.0\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200")
    assert b"connection: close" in head.lower() and b"transfer-encoding" not in head.lower()
    assert json.loads(body)["url"] == "/old"


PEER_APPS = {
    "deno_serve": "Deno.serve((_req, info) => "
                  "new Response(`${info.remoteAddr.hostname}:${info.remoteAddr.port}`));",
    "node_http": "import http from 'node:http';\n"
                 "http.createServer((req, res) => "
                 "res.end(`${req.socket.remoteAddress}:${req.socket.remotePort}`)).listen(3000);",
}


@pytest.mark.parametrize("style", sorted(PEER_APPS))
async def test_app_sees_the_client_address_not_the_fronts(style: str, tmp_path: Path) -> None:
    app = tmp_path / f"peer_{style}.ts"
    app.write_text(PEER_APPS[style] + "\n")
    async with serving(app, workers=1) as served:
        for _ in range(2):  # two clients, one worker connection
            reader, writer = await asyncio.open_connection(served.front.host, served.front.port)
            host, port = writer.get_extra_info("sockname")[:2]
            writer.write(b"GET / HTTP/1.1\r\nHost: h\r\nx-flux-remote-addr: 6.6.6.6:6\r\n"
                         b"Connection: close\r\n\r\n")
            answer = await reader.read()
            writer.close()
            assert answer.partition(b"\r\n\r\n")[2] == f"{host}:{port}".encode()


async def test_console_output_is_recorded_up_to_a_cap(tmp_path: Path) -> None:
    app = tmp_path / "chatty.ts"
    app.write_text("Deno.serve(() => {\n"
                   "  for (let i = 0; i < 3000; i++) console.log(`${i} ` + 'x'.repeat(1000));\n"
                   "  return new Response('ok');\n"
                   "});\n")
    async with serving(app, workers=1) as served:
        result = await served.pool.execute("GET", "/")
    lines = result.execution.console
    assert result.body == b"ok"
    assert 1000 < len(lines) < 1100  # about 1 MiB of text
    assert lines[0].text.startswith("0 x")
    dropped = 3000 - (len(lines) - 1)
    assert (lines[-1].level, lines[-1].text) == (
        "warn", f"[flux: {dropped} more console lines were printed but not recorded]")


async def test_a_failing_hook_still_answers_with_an_execution_id(tmp_path: Path) -> None:
    app = tmp_path / "ok.ts"
    app.write_text("Deno.serve(() => new Response('ok'));\n")
    async with serving(app, workers=1) as served:
        def broken(_worker: object, _execution_id: str) -> None:
            raise RuntimeError("hook exploded")

        served.pool.hooks.before_dispatch = broken
        async with served.client.get(served.front.url + "/") as response:
            assert response.status == 500
            assert b"hook exploded" in await response.read()
            assert response.headers["x-flux-execution-id"]
        served.pool.hooks.before_dispatch = None
        async with served.client.get(served.front.url + "/") as response:
            assert response.status == 200  # the worker went back to the pool


async def test_values_of_a_hot_random_loop_are_recorded_up_to_a_cap(tmp_path: Path) -> None:
    app = tmp_path / "hot.ts"
    app.write_text("Deno.serve(() => {\n"
                   "  let sum = 0;\n"
                   "  for (let i = 0; i < 150000; i++) sum += Math.random();\n"
                   "  return new Response(String(sum > 0));\n"
                   "});\n")
    async with serving(app, workers=1) as served:
        result = await served.pool.execute("GET", "/")
    assert result.body == b"true"
    assert len(result.execution.determinism) == 100_000
    assert result.report is not None and result.report.determinism_dropped == 50_000


async def test_a_keep_alive_connection_the_worker_dropped_is_replaced(mirror: Served) -> None:
    await mirror.pool.execute("GET", "/first")
    worker = mirror.pool.workers[0]
    connection = mirror.pool._connections[worker.id]
    real = connection._transport
    assert real is not None

    class ClosedUnderneath:
        """The worker's FIN crosses our request: the bytes are lost, the connection ends."""

        def write(self, _data: bytes) -> None:
            real.close()

        def __getattr__(self, name: str) -> object:
            return getattr(real, name)

    connection._transport = ClosedUnderneath()  # type: ignore[assignment]
    result = await mirror.pool.execute("POST", "/again", body=b"once")
    assert result.execution.status == 200 and result.execution.error is None
    assert json.loads(result.body)["body"] == "once"
    assert mirror.pool._connections[worker.id] is not connection


LOGGING_APP = """
Deno.serve((request: Request) => {
  const path = new URL(request.url).pathname;
  const indented = (text: string) => "\\n  " + text.replace(/\\n/g, "\\n  ");
  if (path === "/koa") console.error(indented(new SyntaxError("bad json").stack!));
  if (path === "/note") console.error("Note: disk almost full\\n    at the usual place");
  if (path === "/value") console.error("failed with", { code: 7 });
  return new Response("logged");
});
"""


@pytest.mark.parametrize(("path", "error"), [
    ("/koa", ("SyntaxError", "bad json")),  # a stack printed as indented text
    ("/note", None),  # looks like a stack, but names no error
    ("/value", None),  # console.error without an Error is just output
])
async def test_which_console_error_output_is_the_requests_error(
        path: str, error: tuple[str, str] | None, tmp_path: Path) -> None:
    app = tmp_path / "logging.ts"
    app.write_text(LOGGING_APP)
    async with serving(app, workers=1) as served:
        result = await served.pool.execute("GET", path)
    found = result.execution.error
    assert (None if found is None else (found.name, found.message)) == error
    if found is not None:
        assert found.stack.startswith("SyntaxError: bad json\n")


async def test_an_idle_keep_alive_connection_is_closed_and_a_busy_one_is_not(
        mirror: Served) -> None:
    mirror.front.keep_alive_timeout = 0.4
    sweeper = mirror.front._sweeper
    assert sweeper is not None
    sweeper.cancel()  # restart it with the short timeout
    mirror.front._sweeper = asyncio.get_running_loop().create_task(
        mirror.front._close_idle_connections())
    try:
        idle_reader, idle_writer = await asyncio.open_connection(mirror.front.host,
                                                                 mirror.front.port)
        idle_writer.write(b"GET /idle HTTP/1.1\r\nHost: h\r\n\r\n")
        await read_responses(idle_reader, 1)
        busy_reader, busy_writer = await asyncio.open_connection(mirror.front.host,
                                                                 mirror.front.port)
        busy_writer.write(b"POST /duplex HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
                          b"\r\n")  # its app waits for more body: busy for as long as we like
        await busy_reader.readuntil(b"first;")
        async with asyncio.timeout(5):
            assert await idle_reader.read() == b""  # the front closed the idle one
        await asyncio.sleep(0.5)
        busy_writer.write(b"2\r\ngo\r\n0\r\n\r\n")
        async with asyncio.timeout(5):
            assert b"second go;" in await busy_reader.readuntil(b"0\r\n\r\n")
        idle_writer.close()
        busy_writer.close()
    finally:
        mirror.front.keep_alive_timeout = 75.0


async def test_a_request_trickled_byte_by_byte_reaches_the_app_whole(mirror: Served) -> None:
    request = (b"POST /slow?x=1 HTTP/1.1\r\nHost: h\r\nContent-Type: text/plain\r\n"
               b"Content-Length: 11\r\nConnection: close\r\n\r\nhello world")
    reader, writer = await asyncio.open_connection(mirror.front.host, mirror.front.port)
    for i in range(len(request)):
        writer.write(request[i:i + 1])
        await writer.drain()
        if i % 16 == 0:
            await asyncio.sleep(0.001)  # separate reads, not one coalesced segment
    async with asyncio.timeout(10):
        answer = await reader.read()
    writer.close()
    seen = json.loads(answer.partition(b"\r\n\r\n")[2])
    assert (seen["method"], seen["url"], seen["body"]) == ("POST", "/slow?x=1", "hello world")


async def test_a_hook_failing_after_the_response_keeps_the_connection(tmp_path: Path) -> None:
    """The response was whole when the hook failed: the client keeps it and its connection."""
    app = tmp_path / "ok.ts"
    app.write_text("Deno.serve(() => new Response('ok'));\n")
    async with serving(app, workers=1) as served:
        def broken(_worker: object, _execution: object) -> None:
            raise RuntimeError("hook exploded")

        served.pool.hooks.after_completion = broken
        reader, writer = await asyncio.open_connection(served.front.host, served.front.port)
        writer.write(b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\n")
        async with asyncio.timeout(10):
            [(head, body)] = await read_responses(reader, 1)
        served.pool.hooks.after_completion = None
        writer.write(b"GET /2 HTTP/1.1\r\nHost: h\r\n\r\n")
        async with asyncio.timeout(10):
            [(again, _)] = await read_responses(reader, 1)
        writer.close()
        assert head.startswith(b"HTTP/1.1 200") and body == b"ok"
        assert again.startswith(b"HTTP/1.1 200")
