"""HEAD load over HTTP/1.1 keep-alive connections, for bench_server.py.

h2load and wrk both wait for the body a HEAD response announces in its
Content-Length, and hang; this client reads the head of each response only.
Each connection sends one request, waits for its answer, sends the next (no
pipelining), and reconnects when the server closes (gunicorn's sync workers
answer every request with `Connection: close`). It runs on asyncio (uvloop
when installed) in the benchmark's own process, whose CPU is not the server's.
"""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit

# Not h2load's user agent: HEADs and GETs by digest from one client identity
# would pair into tag pulls (the attribution rule), and the counts would not add up.
USER_AGENT = "bench-server-head/1"


async def _connection(host: str, port: int, request: bytes, left: list[int]) -> int:
    ok = 0
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while left[0] > 0:
            left[0] -= 1
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            ok += head[9:12] == b"200"
            if b"\r\nconnection: close" in head.lower():
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
    finally:
        writer.close()
    return ok


async def _load(url: str, requests: int, concurrency: int) -> tuple[float, int]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = (
        f"HEAD {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"User-Agent: {USER_AGENT}\r\nAccept: application/vnd.oci.image.manifest.v1+json\r\n\r\n"
    ).encode()
    left = [requests]
    started = time.perf_counter()
    answered = await asyncio.gather(
        *(_connection(host, port, request, left) for _ in range(concurrency))
    )
    return requests / (time.perf_counter() - started), sum(answered)


def head_load(url: str, requests: int, concurrency: int) -> tuple[float, int]:
    """HEAD `url` `requests` times over `concurrency` keep-alive connections:
    (requests per second, how many were answered 200)."""
    try:
        import uvloop

        return uvloop.run(_load(url, requests, concurrency))
    except ImportError:
        return asyncio.run(_load(url, requests, concurrency))
