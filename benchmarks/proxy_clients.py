"""Which upstream client should `pullstats proxy` use? Candidates side by side.

    python benchmarks/proxy_clients.py [--requests 3000] [--rounds 3]

Each candidate is a minimal forwarder (same header handling from
`proxy/headers.py`, same statistics middleware, same uvicorn with uvloop and
httptools, access log off) in its own process in front of the same
docker-registry; `pullstats proxy` itself is a row too. Interleaved rounds of
manifest GETs by tag at concurrency 32 (h2load, HTTP/1.1 keep-alive), the
forwarder's CPU during them, and a one-at-a-time p50; medians are printed.
Needs docker-registry and h2load (nghttp2-client).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from figures import print_table  # type: ignore[import-not-found]

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from registry_load import (  # type: ignore[import-not-found]
    MANIFEST_PATH,
    free_port,
    h2load,
    one_at_a_time,
    registry,
    seed,
    serve,
    tree_cpu,
)

from pullstats_middleware.proxy.headers import request_headers, response_headers

Scope = dict[str, Any]


def lifespan(open_client: Callable[[], Any], close: Callable[[], Any]) -> Any:
    async def run(receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                open_client()
                await send({"type": "lifespan.startup.complete"})
            else:
                await close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    return run


class Httpx2Forwarder:
    """httpx2 (httpcore2's pool), as `pullstats proxy` used it, or with a pool sized to the load."""

    def __init__(self, upstream: str, keepalive: int) -> None:
        import httpx2

        self.upstream, self.keepalive, self.httpx2 = upstream, keepalive, httpx2
        self.host = upstream.removeprefix("http://").encode()
        self.origin = ("http", *self.host.decode().split(":"))
        self.client: Any = None

    def open(self) -> None:
        limits = self.httpx2.Limits(max_connections=1000, max_keepalive_connections=self.keepalive)
        self.client = self.httpx2.AsyncClient(limits=limits, trust_env=False, timeout=60)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(self.open, lambda: self.client.aclose())(receive, send)
            return
        headers, _ = request_headers(scope, self.host)
        request = self.client.build_request(
            scope["method"], self.upstream + scope["raw_path"].decode(), headers=headers
        )
        response = await self.client.send(request, stream=True)
        try:
            out = response_headers(response.headers.raw, scope, self.origin)
            start = {"type": "http.response.start", "status": response.status_code}
            await send({**start, "headers": out})
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            await response.aclose()


class AiohttpForwarder:
    """aiohttp's ClientSession with a TCPConnector pool."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.host = upstream.removeprefix("http://").encode()
        self.origin = ("http", *self.host.decode().split(":"))
        self.session: Any = None

    def open(self) -> None:
        import aiohttp

        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1000, limit_per_host=0),
            auto_decompress=False,
            skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent"),
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(self.open, lambda: self.session.close())(receive, send)
            return
        import yarl

        headers, _ = request_headers(scope, self.host)
        url = yarl.URL(self.upstream + scope["raw_path"].decode(), encoded=True)
        names = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers]
        async with self.session.request(
            scope["method"], url, headers=names, allow_redirects=False
        ) as response:
            out = response_headers(list(response.raw_headers), scope, self.origin)
            await send({"type": "http.response.start", "status": response.status, "headers": out})
            async for chunk in response.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})


CANDIDATES: dict[str, Callable[[str], Any]] = {
    "httpx2, pool as shipped before (keep-alive 100)": lambda u: Httpx2Forwarder(u, 100),
    "httpx2, pool sized to the load (keep-alive 32)": lambda u: Httpx2Forwarder(u, 32),
    "aiohttp ClientSession + TCPConnector": AiohttpForwarder,
}


def run_candidate(name: str, upstream: str, port: int) -> None:
    import uvicorn

    from pullstats_middleware import PullStatsASGIMiddleware, PullStatsConfig

    config = PullStatsConfig(enabled=True, flush_interval=0.5)
    app = PullStatsASGIMiddleware(CANDIDATES[name](upstream), config=config)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=3000, help="GETs per round (3000)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (3)")
    parser.add_argument("--serve", nargs=3, metavar=("NAME", "UPSTREAM", "PORT"), help="internal")
    args = parser.parse_args()
    if args.serve:
        run_candidate(args.serve[0], args.serve[1], int(args.serve[2]))
        return
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULL_METRICS_")}
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        direct, registry_proc = stack.enter_context(registry(Path(tmp)))
        seed(direct, 1)
        # The registry's row: its own CPU, for scale.
        setups: dict[str, tuple[str, int]] = {"registry directly": (direct, registry_proc.pid)}
        for name in CANDIDATES:
            port = free_port()
            command = [sys.executable, __file__, "--serve", name, direct, str(port)]
            proc = stack.enter_context(serve(command, f"http://127.0.0.1:{port}/v2/", env))
            setups[name] = (f"http://127.0.0.1:{port}", proc.pid)
        port = free_port()
        command = [
            sys.executable, "-m", "pullstats_middleware.cli", "proxy", "--upstream", direct,
            "--port", str(port), "--log-level", "warning",
        ]  # fmt: skip
        proc = stack.enter_context(serve(command, f"http://127.0.0.1:{port}/v2/", env))
        setups["pullstats proxy (this checkout)"] = (f"http://127.0.0.1:{port}", proc.pid)

        rates: dict[str, list[float]] = {name: [] for name in setups}
        cpus: dict[str, list[float]] = {name: [] for name in setups}
        for base, _ in setups.values():  # warm up: connections, caches
            h2load(base + MANIFEST_PATH, 500, 32)
        for _ in range(args.rounds):
            for name, (base, pid) in setups.items():
                before = tree_cpu(pid)
                rate, ok = h2load(base + MANIFEST_PATH, args.requests, 32)
                cpus[name].append((tree_cpu(pid) - before) / ok * 10_000)
                rates[name].append(rate)
        latencies = one_at_a_time([base for base, _ in setups.values()], 1000)

    rows = [("candidate", "req/s at c=32", "p50 one at a time", "CPU s / 10,000 requests")]
    for name, times in zip(setups, latencies, strict=True):
        rows.append(
            (
                name,
                f"{statistics.median(rates[name]):,.0f}",
                f"{statistics.median(times) * 1000:.2f} ms",
                f"{statistics.median(cpus[name]):.1f} s",
            )
        )
    print(f"median of {args.rounds} interleaved rounds of {args.requests} manifest GETs by tag")
    print_table(rows[0], rows[1:])


if __name__ == "__main__":
    main()
