"""Ingest benchmark: executions per second through flux-server's gRPC API, with batching.

Each execution has 5 exchanges (4 Postgres, 1 Redis, raw frames included) and 2 console lines.
The server runs as its own process (`python -m flux_server`), as in production; this process
only sends pre-built RecordBatch requests, several in flight, and counts acknowledged
executions. Postgres is a throwaway cluster (tests/services.py) unless --database-url is given.

    .venv/bin/python bench/ingest.py [--executions 50000] [--batch 500] [--in-flight 4]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flux_server.convert import execution_to_proto
from flux_server.gen import flux_pb2 as pb
from flux_server.gen import flux_pb2_grpc as pb_grpc
from tests.server.factory import make_execution
from tests.services import PgCluster, free_port, wait_for_port


def build_requests(total: int, batch: int) -> list[pb.RecordBatchRequest]:
    now = time.time()
    executions = [execution_to_proto(make_execution(started_at=now - i * 0.001))
                  for i in range(total)]
    return [pb.RecordBatchRequest(executions=executions[i:i + batch])
            for i in range(0, total, batch)]


async def send_all(address: str, requests: list[pb.RecordBatchRequest],
                   in_flight: int) -> tuple[int, float]:
    async with grpc.aio.insecure_channel(address, options=[
            ("grpc.max_send_message_length", 64 * 1024 * 1024)]) as channel:
        stub = pb_grpc.FluxStub(channel)
        await stub.List(pb.ListRequest(limit=1))  # connected, store open
        queue = list(reversed(requests))
        stored = 0

        async def worker() -> None:
            nonlocal stored
            while queue:
                response = await stub.RecordBatch(queue.pop(), timeout=120)
                stored += response.executions_stored

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(in_flight)))
        return stored, time.perf_counter() - started


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes so far (Linux /proc)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def postgres_pids(cluster: PgCluster | None) -> list[int]:
    """The backends of a throwaway cluster (they are children of its postmaster)."""
    if cluster is None or cluster._dir is None:
        return []
    postmaster = int((cluster._dir / "data" / "postmaster.pid").read_text().split()[0])
    children = subprocess.run(["pgrep", "-P", str(postmaster)], capture_output=True, text=True)
    return [postmaster, *(int(p) for p in children.stdout.split())]


def run_one(label: str, server_args: list[str], env: dict[str, str],
            requests: list[pb.RecordBatchRequest], in_flight: int,
            cluster: PgCluster | None = None) -> float:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "flux_server", "--listen",
                               f"127.0.0.1:{port}", *server_args], env=env,
                              stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        server_cpu = cpu_seconds([server.pid])
        database_cpu = cpu_seconds(postgres_pids(cluster))
        stored, seconds = asyncio.run(send_all(f"127.0.0.1:{port}", requests, in_flight))
        server_cpu = cpu_seconds([server.pid]) - server_cpu
        database_cpu = cpu_seconds(postgres_pids(cluster)) - database_cpu
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
    rate = stored / seconds
    per_thousand = f"CPU per 1000: flux-server {server_cpu / stored * 1000:.3f} s"
    if cluster is not None:
        per_thousand += f", postgres {database_cpu / stored * 1000:.3f} s"
    print(f"{label:9s} {stored:7d} executions in {seconds:6.2f} s = {rate:7.0f} executions/s"
          f"  ({per_thousand})", flush=True)
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--executions", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--in-flight", type=int, default=4)
    parser.add_argument("--database-url", help="an existing Postgres (default: throwaway)")
    parser.add_argument("--only", choices=["postgres", "sqlite"])
    args = parser.parse_args()

    print(f"building {args.executions} executions (5 exchanges, 2 console lines each) in "
          f"batches of {args.batch}, {args.in_flight} in flight; {os.cpu_count()} cores",
          flush=True)
    requests = build_requests(args.executions, args.batch)
    size = sum(r.ByteSize() for r in requests) / args.executions
    print(f"{size:.0f} bytes per execution on the wire; load average "
          f"{os.getloadavg()[0]:.1f} (other work on the machine lowers the figures)", flush=True)
    env = {k: v for k, v in os.environ.items()
           if k not in ("FLUX_TOKEN", "FLUX_DATABASE_URL", "DATABASE_URL")}

    if args.only in (None, "postgres"):
        cluster = None if args.database_url else PgCluster(users=(), tls=False).start()
        try:
            url = args.database_url or cluster.url(database="postgres")  # type: ignore[union-attr]
            run_one("postgres", ["--database-url", url], env, requests, args.in_flight, cluster)
        finally:
            if cluster is not None:
                cluster.stop()
    if args.only in (None, "sqlite"):
        with tempfile.TemporaryDirectory() as home:
            run_one("sqlite", [], {**env, "FLUX_HOME": home}, requests, args.in_flight)


if __name__ == "__main__":
    main()
