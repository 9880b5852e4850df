"""Which upstream client should `pullstats proxy` use? Candidates side by side.

    python benchmarks/proxy_clients.py [--requests 3000] [--rounds 3]

Each candidate is a minimal forwarder (same header handling from
`proxy/headers.py`, same statistics middleware, same uvicorn with uvloop and
httptools, access log off) in its own process in front of the same
docker-registry; `pullstats proxy` itself is a row too. Interleaved rounds of
manifest GETs by tag at concurrency 32 (h2load, HTTP/1.1 keep-alive), the
forwarder's CPU during them, and a one-at-a-time p50; medians are printed.
Needs docker-registry and h2load (nghttp2-client). Candidates that are not
dependencies are left out unless installed: `pip install aiohttp pyreqwest aiosonic`.
"""

from __future__ import annotations

import argparse
import importlib.util
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


class Forwarder:
    """What every candidate shares: the upstream's address, the pullstats header
    handling, and an answer read whole (manifests are small)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.host = upstream.removeprefix("http://").encode()
        name, port = self.host.decode().rsplit(":", 1)
        self.origin = ("http", name, int(port))
        self.client: Any = None

    def open(self) -> Any:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def fetch(self, method: str, url: str, headers: list[tuple[str, str]]) -> Any:
        """(status, [(name, value) as bytes], body)"""
        raise NotImplementedError

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(self.open, self.close)(receive, send)
            return
        headers, _, public = request_headers(scope, self.host)
        names = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers]
        url = self.upstream + scope["raw_path"].decode()
        status, raw, body = await self.fetch(scope["method"], url, names)
        out = response_headers(raw, scope, self.origin, public)
        await send({"type": "http.response.start", "status": status, "headers": out})
        await send({"type": "http.response.body", "body": body})


class Httpx2Forwarder(Forwarder):
    """httpx2 (httpcore2's pool), sized to the load: what the proxy used first."""

    def open(self) -> None:
        import httpx2

        limits = httpx2.Limits(max_connections=1000, max_keepalive_connections=32)
        self.client = httpx2.AsyncClient(limits=limits, trust_env=False, timeout=60)

    async def close(self) -> None:
        await self.client.aclose()

    async def fetch(self, method: str, url: str, headers: list[tuple[str, str]]) -> Any:
        response = await self.client.request(method, url, headers=headers)
        return response.status_code, response.headers.raw, response.content


class AiohttpForwarder(Forwarder):
    """aiohttp's ClientSession with a TCPConnector pool: what the proxy used next."""

    def open(self) -> None:
        import aiohttp

        self.client = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1000, limit_per_host=0),
            auto_decompress=False,
            skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent"),
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def close(self) -> None:
        await self.client.close()

    async def fetch(self, method: str, url: str, headers: list[tuple[str, str]]) -> Any:
        import yarl

        async with self.client.request(
            method, yarl.URL(url, encoded=True), headers=headers, allow_redirects=False
        ) as response:
            return response.status, list(response.raw_headers), await response.read()


class PyreqwestForwarder(Forwarder):
    """pyreqwest: Rust's reqwest (hyper) on its own tokio threads."""

    def open(self) -> None:
        from pyreqwest.client import ClientBuilder

        self.client = ClientBuilder().follow_redirects(False).build()

    async def close(self) -> None:
        await self.client.close()

    async def fetch(self, method: str, url: str, headers: list[tuple[str, str]]) -> Any:
        headers = [(name, value) for name, value in headers if name != "host"]
        response = await self.client.request(method, url).headers(headers).build().send()
        raw = [(name.encode(), value.encode()) for name, value in response.headers.items()]
        return response.status, raw, bytes(await response.bytes())


class AiosonicForwarder(Forwarder):
    """aiosonic: a pure-Python asyncio client that bills itself as the fastest."""

    def open(self) -> None:
        import aiosonic

        self.client = aiosonic.HTTPClient()

    async def close(self) -> None:
        await self.client.shutdown()

    async def fetch(self, method: str, url: str, headers: list[tuple[str, str]]) -> Any:
        response = await self.client.request(url, method=method, headers=dict(headers))
        raw = [(name.encode(), value.encode()) for name, value in response.raw_headers]
        return response.status_code, raw, await response.content()


# The import each candidate needs: one that is not installed is left out, and said so.
CANDIDATES: dict[str, tuple[str, Callable[[str], Any]]] = {
    "httpx2 (pool of 32 kept alive)": ("httpx2", Httpx2Forwarder),
    "aiohttp ClientSession + TCPConnector": ("aiohttp", AiohttpForwarder),
    "pyreqwest": ("pyreqwest", PyreqwestForwarder),
    "aiosonic": ("aiosonic", AiosonicForwarder),
}


def run_candidate(name: str, upstream: str, port: int) -> None:
    import uvicorn

    from pullstats_middleware import PullStatsASGIMiddleware, PullStatsConfig

    config = PullStatsConfig(enabled=True, flush_interval=0.5)
    app = PullStatsASGIMiddleware(CANDIDATES[name][1](upstream), config=config)
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
        for name, (module, _) in CANDIDATES.items():
            if importlib.util.find_spec(module) is None:
                print(f"left out: {name} (pip install {module})")
                continue
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
