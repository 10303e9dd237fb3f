"""A loopback load generator: keep-alive clients on raw asyncio sockets, each sending its next request
as soon as the last is answered; used by tuning, the `serve` stage, benchmarks and tests."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass


@dataclass
class LoadResult:
    statuses: list[int]  # per request, in completion order; 0 = connection error
    latencies_ms: list[float]
    bodies: dict[int, bytes]  # request index -> body, when kept
    seconds: float

    def summary(self) -> dict:
        import numpy as np

        ok = [t for s, t in zip(self.statuses, self.latencies_ms) if s == 200]
        pct = np.percentile(ok, [50, 95, 99]) if ok else [float("nan")] * 3
        counts: dict[str, int] = {}
        for s in self.statuses:
            counts[str(s)] = counts.get(str(s), 0) + 1
        return {"requests": len(self.statuses), "ok": len(ok), "error_count": len(self.statuses) - len(ok),
                "status_counts": counts, "requests_per_s": len(ok) / self.seconds if self.seconds else 0.0,
                "http_latency_p50_ms": float(pct[0]), "http_latency_p95_ms": float(pct[1]),
                "http_latency_p99_ms": float(pct[2]), "seconds": self.seconds}


def json_request(port: int, payload: dict, path: str = "/classify") -> bytes:
    body = json.dumps(payload).encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


def run_load(port: int, requests: list[bytes], clients: int, duration_s: float | None = None,
             max_requests: int | None = None, keep_bodies: bool = False, host: str = "127.0.0.1") -> LoadResult:
    """`clients` keep-alive connections, each sending the next request as soon as the last one is answered,
    until max_requests were sent or duration_s passed. Raw asyncio sockets rather than an HTTP client
    library: on 2 shared cores the load generator's own CPU cost must stay small next to the server's."""
    import asyncio

    if duration_s is None and max_requests is None:
        raise ValueError("bound the load: give duration_s, max_requests or both")
    statuses: list[int] = []
    latencies: list[float] = []
    bodies: dict[int, bytes] = {}
    counter = iter(range(max_requests if max_requests is not None else sys.maxsize))

    async def client(deadline: float) -> None:
        reader = writer = None
        for i in counter:
            if time.perf_counter() > deadline:
                return
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(host, port)
                t0 = time.perf_counter()
                writer.write(requests[i % len(requests)])
                status, body, close = await _read_response(reader)
                latencies.append((time.perf_counter() - t0) * 1000)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
                status, body, close = 0, b"", True
                latencies.append(float("nan"))
            statuses.append(status)
            if keep_bodies:
                bodies[i] = body
            if close and writer is not None:
                writer.close()
                reader = writer = None
        if writer is not None:
            writer.close()

    async def main() -> float:
        start = time.perf_counter()
        await asyncio.gather(*(client(start + (duration_s or 1e9)) for _ in range(clients)))
        return time.perf_counter() - start

    try:  # uvloop (with uvicorn's httptools, what the server uses too) halves the client's CPU per request
        import uvloop

        seconds = uvloop.run(main())
    except ImportError:
        seconds = asyncio.run(main())
    return LoadResult(statuses, latencies, bodies, seconds)


async def _read_response(reader) -> tuple[int, bytes, bool]:
    head = await reader.readuntil(b"\r\n\r\n")  # one read for the whole head: the client's CPU counts too
    lines = head.split(b"\r\n")
    status, length, close = int(lines[0].split()[1]), 0, False
    for line in lines[1:]:
        key, _, value = line.partition(b":")
        key = key.strip().lower()
        if key == b"content-length":
            length = int(value)
        elif key == b"connection" and value.strip().lower() == b"close":
            close = True
    return status, await reader.readexactly(length), close

