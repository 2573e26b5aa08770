"""wrk, run and read: the figures both serve benchmarks print."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


@dataclass
class Figures:
    label: str
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: str
    requests: int = 0
    flux_cpu_us: float = float("nan")  # the Flux process's CPU per request
    app_cpu_us: float = float("nan")  # the Deno processes' CPU per request


def milliseconds(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    return float(match.group(1)) * UNITS[match.group(2)] if match else float("nan")


async def wrk(label: str, url: str, duration: int, connections: int) -> Figures:
    threads = min(2, connections)
    process = await asyncio.create_subprocess_exec(
        "wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency", url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out = (await process.communicate())[0].decode()
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    errors = re.search(r"(Non-2xx or 3xx responses: \d+|Socket errors: .*)", out)
    total = re.search(r"(\d+) requests in", out)
    return Figures(label, float(rps.group(1)) if rps else 0.0,
                   milliseconds(p50.group(1)) if p50 else float("nan"),
                   milliseconds(p99.group(1)) if p99 else float("nan"),
                   errors.group(1) if errors else "", int(total.group(1)) if total else 0)
