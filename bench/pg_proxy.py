"""pgbench through the Flux record proxy vs pgbouncer vs direct, ratios from one run.

    .venv/bin/python bench/pg_proxy.py [--seconds 10] [--rounds 1] [--clients 8] [--eager]

Starts a throwaway cluster (no TLS), pgbouncer (session pooling, run as the `postgres` user
when we are root) and the Flux proxy in its own process on uvloop (as the `flux` commands run
it), in record mode with a sink that keeps the last 100,000 exchanges, as the shipper holds
unsent ones (`--keep 0` keeps all; `--eager` also decodes each exchange's semantic
request/response in the sink, which the default leaves lazy). Then runs `pgbench -S -c N` in
simple and extended protocol against each, interleaved, and prints tps and ratios.
"""

from __future__ import annotations

import argparse
import os
import pwd
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.services import PgCluster, free_port, pg_bindir, wait_for_port  # noqa: E402


def pgbench(port: int, database: str, *args: str) -> str:
    cmd = [str(pg_bindir() / "pgbench"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
           *args, database]
    env = {**os.environ, "PGSSLMODE": "disable"}
    return subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout


def tps(output: str) -> float:
    match = re.search(r"tps = ([\d.]+) \(without initial connection time\)", output)
    if match is None:
        raise RuntimeError(f"no tps in pgbench output:\n{output}")
    return float(match.group(1))


def transactions(output: str) -> int:
    match = re.search(r"number of transactions actually processed: (\d+)", output)
    if match is None:
        raise RuntimeError(f"no transaction count in pgbench output:\n{output}")
    return int(match.group(1))


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def report(args: argparse.Namespace, names: list[str],
           results: dict[tuple[str, str], list[float]],
           cpu: dict[tuple[str, str], list[float]],
           user: dict[tuple[str, str], list[float]]) -> None:
    """tps (median and best of the rounds), proxy CPU per transaction, and ratios: each is
    the median of the per-round ratios, since runs of one round saw the same machine load."""
    print(f"pgbench -S -c {args.clients} -T {args.seconds}, {args.rounds} interleaved rounds, "
          f"record mode ({'eager' if args.eager else 'lazy'} semantics, sink keeps "
          f"{args.keep or 'all'} exchanges)")
    print(f"{'protocol':<9} {'target':<10} {'tps median':>10} {'tps best':>9} "
          f"{'proxy CPU/tx':>13} {'of it user':>11}")
    for mode in ("simple", "extended"):
        for name in names:
            runs = results[(mode, name)]
            cpu_text = (f"{statistics.median(cpu[(mode, name)]):>10.1f} us "
                        f"{statistics.median(user[(mode, name)]):>8.1f} us"
                        if (mode, name) in cpu else f"{'-':>13}")
            print(f"{mode:<9} {name:<10} {statistics.median(runs):>10.0f} {max(runs):>9.0f} "
                  f"{cpu_text}")
    pairs = [(a, b) for a, b in [("flux", "pgbouncer"), ("flux", "direct"),
                                 ("pgbouncer", "direct"), ("relay", "pgbouncer")]
             if a in names and b in names]
    print("ratios (median of per-round ratios):")
    for mode in ("simple", "extended"):
        parts = []
        for a, b in pairs:
            per_round = [x / y for x, y in zip(results[(mode, a)], results[(mode, b)],
                                               strict=True)]
            parts.append(f"{a}/{b} {statistics.median(per_round):.2f}")
        print(f"  {mode:<9} " + "   ".join(parts))


def start_pgbouncer(cluster: PgCluster, workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not Path(binary).exists():
        raise RuntimeError("pgbouncer is not installed (apt-get install -y pgbouncer)")
    port = free_port()
    (workdir / "users.txt").write_text('"postgres" ""\n')
    (workdir / "pgbouncer.ini").write_text(f"""[databases]
{cluster.database} = host=127.0.0.1 port={cluster.port} dbname={cluster.database}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {workdir}/users.txt
pool_mode = session
max_client_conn = 100
default_pool_size = 20
logfile = {workdir}/pgbouncer.log
pidfile = {workdir}/pgbouncer.pid
""")
    cmd = [binary, str(workdir / "pgbouncer.ini")]
    if os.getuid() == 0:
        pw = pwd.getpwnam("postgres")
        for path in [workdir, *workdir.iterdir()]:
            os.chown(path, pw.pw_uid, pw.pw_gid)
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port)
    return proc, port


def start_child(*args: str) -> tuple[subprocess.Popen[str], int]:
    cmd = [sys.executable, __file__, *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    return proc, port


def serve_plain_relay(upstream_port: int) -> None:
    """Child process: a byte relay with no framing (the ceiling for any Python proxy)."""
    import asyncio

    import uvloop

    class Side(asyncio.Protocol):
        peer: asyncio.Transport | None = None
        transport: asyncio.Transport
        buffered: list[bytes]

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport  # type: ignore[assignment]
            self.buffered = []

        def data_received(self, data: bytes) -> None:
            if self.peer is None:
                self.buffered.append(data)
            else:
                self.peer.write(data)

        def connection_lost(self, exc: Exception | None) -> None:
            if self.peer is not None:
                self.peer.close()

    class Client(Side):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            self.task = asyncio.ensure_future(self.connect())

        async def connect(self) -> None:
            loop = asyncio.get_running_loop()
            up_transport, up = await loop.create_connection(Side, "127.0.0.1", upstream_port)
            up.peer = self.transport
            self.peer = up_transport
            for chunk in self.buffered:
                up_transport.write(chunk)

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(Client, "127.0.0.1", 0)
        print(server.sockets[0].getsockname()[1], flush=True)
        stop = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set_result, None)
        await stop

    uvloop.run(main())


KEEP = 100_000
"""Exchanges the sink holds, as the shipper of `flux serve` holds the ones not yet sent.
Records leave a real proxy and are freed; a list that only grows measures the collector."""


def serve_flux(upstream: str, eager: bool, keep: int) -> None:
    """Child process: the record proxy on uvloop; the sink keeps exchanges in memory (all of
    them, or the last `keep`, as a shipper that drains its queue would)."""
    import asyncio
    import collections

    from flux_cli.loop import run
    from flux_proxy.model import Exchange
    from flux_proxy.pg.proxy import PgRecordProxy

    kept: collections.deque[Exchange] = collections.deque(maxlen=keep or None)
    total = 0

    def sink(exchange: Exchange) -> None:
        nonlocal total
        if eager:
            _ = exchange.request, exchange.response
        kept.append(exchange)
        total += 1

    async def main() -> None:
        proxy = await PgRecordProxy(upstream, sink).start()
        print(proxy.port, flush=True)
        stop = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set_result, None)
        await stop
        print(f"flux recorded {total} exchanges, kept {len(kept)}", file=sys.stderr)
        await proxy.close()

    run(main())  # as the `flux` commands run their loop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--eager", action="store_true")
    parser.add_argument("--keep", type=int, default=KEEP,
                        help=f"the sink keeps the last N exchanges (default {KEEP}; 0: all)")
    parser.add_argument("--relay", action="store_true",
                        help="also measure a plain byte relay (no framing, no recording)")
    parser.add_argument("--serve-flux")
    parser.add_argument("--serve-relay", type=int)
    parser.add_argument("--only", choices=["direct", "pgbouncer", "flux", "relay"],
                        action="append")
    args = parser.parse_args()
    if args.serve_flux:
        serve_flux(args.serve_flux, args.eager, args.keep)
        return
    if args.serve_relay:
        serve_plain_relay(args.serve_relay)
        return

    cluster = PgCluster(users=(), tls=False).start()
    workdir = Path(tempfile.mkdtemp(prefix="flux-bench-"))
    procs: list[subprocess.Popen] = []  # type: ignore[type-arg]
    try:
        pgbench(cluster.port, cluster.database, "-i", "-s", "1", "-q")
        bouncer, bouncer_port = start_pgbouncer(cluster, workdir)
        procs.append(bouncer)
        flux, flux_port = start_child("--serve-flux", cluster.url(sslmode="disable"),
                                      "--keep", str(args.keep),
                                      *(["--eager"] if args.eager else []))
        procs.append(flux)
        targets = {"direct": cluster.port, "pgbouncer": bouncer_port, "flux": flux_port}
        if args.relay:
            relay, targets["relay"] = start_child("--serve-relay", str(cluster.port))
            procs.append(relay)
        if args.only:
            targets = {k: v for k, v in targets.items() if k in args.only}
        pids = {"pgbouncer": int((workdir / "pgbouncer.pid").read_text()), "flux": flux.pid}
        if args.relay:
            pids["relay"] = relay.pid
        results: dict[tuple[str, str], list[float]] = {}
        cpu: dict[tuple[str, str], list[float]] = {}
        user: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.rounds):
            for mode in ("simple", "extended"):
                for name, port in targets.items():
                    before = cpu_seconds(pids[name]) if name in pids else (0.0, 0.0)
                    out = pgbench(port, cluster.database, "-S", "-c", str(args.clients),
                                  "-T", str(args.seconds), "-M", mode)
                    results.setdefault((mode, name), []).append(tps(out))
                    if name in pids:
                        after = cpu_seconds(pids[name])
                        count = transactions(out)
                        used = after[0] + after[1] - before[0] - before[1]
                        cpu.setdefault((mode, name), []).append(used / count * 1e6)
                        user.setdefault((mode, name), []).append(
                            (after[0] - before[0]) / count * 1e6)
                    time.sleep(0.5)
        report(args, list(targets), results, cpu, user)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
