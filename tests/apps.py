"""The registry the tests wrap, as a raw WSGI and a raw ASGI app, plus drivers.

Both apps serve the same answers chunk by chunk, so every adapter test runs
the same case through both middlewares. Special repositories misbehave on
purpose: `broken/*` answers 500, `nodigest/*` omits Docker-Content-Digest,
`chunky/*` streams the manifest in three chunks, `explode/*` raises after the
first chunk.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
from werkzeug.test import EnvironBuilder

from pullstats_middleware import PullMetrics, PullStatsASGIMiddleware, PullStatsMiddleware
from pullstats_middleware.config import PullStatsConfig
from pullstats_middleware.demo_registry import MemoryRegistry
from pullstats_middleware.routes import ROUTES, Route

Chunks = list[bytes | Exception]

# The seed's tag statistics fields, in order (docs/design.md, "HTTP routes").
TAG_FIELDS = [
    "tag_name",
    "tag_pull_count",
    "last_tag_pull_date",
    "current_manifest_digest",
    "manifest_pull_count",
    "last_manifest_pull_date",
]


def answer(
    registry: MemoryRegistry, method: str, path: str, headers: dict[str, str]
) -> tuple[int, list[tuple[str, str]], Chunks]:
    repo = path[len("/v2/") :].split("/", 1)[0] if path.startswith("/v2/") else ""
    if repo == "broken":
        return 500, [("Content-Type", "text/plain")], [b"boom"]
    status, out_headers, body = registry.handle(
        method,
        path.replace(f"/{repo}/", "/library/", 1)
        if repo in ("nodigest", "chunky", "explode")
        else path,
        headers,
    )
    if method == "HEAD":
        return status, out_headers, []
    if repo == "nodigest":
        out_headers = [h for h in out_headers if h[0] != "Docker-Content-Digest"]
    if repo == "chunky":
        third = len(body) // 3 + 1
        return status, out_headers, [body[i : i + third] for i in range(0, len(body), third)]
    if repo == "explode":
        return status, out_headers, [body[:10], RuntimeError("the app failed mid-body")]
    return status, out_headers, [body]


def wsgi_app(registry: MemoryRegistry) -> Callable[..., Iterable[bytes]]:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
        headers = {
            k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")
        }
        status, out, chunks = answer(
            registry, environ["REQUEST_METHOD"], environ["PATH_INFO"], headers
        )
        start_response(f"{status} X", out)
        for chunk in chunks:
            if isinstance(chunk, Exception):
                raise chunk
            yield chunk

    return app


def asgi_app(registry: MemoryRegistry) -> Callable[..., Any]:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        path = scope["path"][len(scope.get("root_path", "")) :]
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        status, out, chunks = answer(registry, scope["method"], path, headers)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(k.lower().encode(), v.encode()) for k, v in out],
            }
        )
        for i, chunk in enumerate(chunks):
            if isinstance(chunk, Exception):
                raise chunk
            await send(
                {"type": "http.response.body", "body": chunk, "more_body": i < len(chunks) - 1}
            )
        if not chunks:
            await send({"type": "http.response.body", "body": b""})

    return app


@dataclass
class Result:
    status: int
    headers: dict[str, str]
    body: bytes
    error: BaseException | None = None

    def json(self) -> Any:
        import json

        return json.loads(self.body)


class ClientGone(OSError):
    """What a server raises into the app when the client hung up."""


@dataclass
class Driver:
    """Sends requests straight into one middleware, as a server would."""

    kind: str
    middleware: Any
    metrics: PullMetrics | None
    root_path: str = ""
    peer: str = "10.0.0.1"
    default_headers: dict[str, str] = field(default_factory=dict)

    def request(
        self,
        method: str,
        path: str,
        headers: dict[str, str] | None = None,
        *,
        hang_up_after: int | None = None,
    ) -> Result:
        headers = {**self.default_headers, **(headers or {})}
        if self.kind == "wsgi":
            return self._wsgi(method, path, headers, hang_up_after)
        return anyio.run(self._asgi, method, path, headers, hang_up_after)

    def get(self, path: str, **headers: str) -> Result:
        return self.request("GET", path, {k.replace("_", "-"): v for k, v in headers.items()})

    def head(self, path: str, **headers: str) -> Result:
        return self.request("HEAD", path, {k.replace("_", "-"): v for k, v in headers.items()})

    def flush(self) -> None:
        assert self.metrics is not None
        assert self.metrics.flush(10)

    def _wsgi(
        self, method: str, path: str, headers: dict[str, str], hang_up_after: int | None
    ) -> Result:
        path, _, query = path.partition("?")
        environ = EnvironBuilder(
            path=path[len(self.root_path) :],
            query_string=query,
            base_url="http://registry.test" + self.root_path,
            method=method,
            headers=headers,
        ).get_environ()
        environ["REMOTE_ADDR"] = self.peer
        started: dict[str, Any] = {}

        def start_response(status: str, out: list[tuple[str, str]], exc_info: Any = None) -> Any:
            started["status"] = int(status[:3])
            started["headers"] = {k.lower(): v for k, v in out}
            return lambda data: None

        body, error = b"", None
        iterable = self.middleware(environ, start_response)
        try:
            for n, chunk in enumerate(iterable):
                if hang_up_after is not None and n >= hang_up_after:
                    break
                body += chunk
        except Exception as exc:
            error = exc
        finally:
            close = getattr(iterable, "close", None)
            if close is not None:
                close()
        return Result(started.get("status", 0), started.get("headers", {}), body, error)

    async def _asgi(
        self, method: str, path: str, headers: dict[str, str], hang_up_after: int | None
    ) -> Result:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path.partition("?")[0],
            "raw_path": path.partition("?")[0].encode(),
            "root_path": self.root_path,
            "query_string": path.partition("?")[2].encode(),
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
            "client": (self.peer, 40000),
            "server": ("registry.test", 80),
        }
        out: dict[str, Any] = {"body": b"", "chunks": 0}

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                out["status"] = message["status"]
                out["headers"] = {k.decode(): v.decode() for k, v in message["headers"]}
            else:
                if hang_up_after is not None and out["chunks"] >= hang_up_after:
                    raise ClientGone("client disconnected")
                out["chunks"] += 1
                out["body"] += message.get("body", b"")

        error = None
        try:
            await self.middleware(scope, receive, send)
        except Exception as exc:
            error = exc
        return Result(out.get("status", 0), out.get("headers", {}), out["body"], error)


def make_driver(
    kind: str,
    registry: MemoryRegistry,
    config: PullStatsConfig,
    metrics: PullMetrics | None = None,
    routes: Sequence[Route] = ROUTES,
    **kw: Any,
) -> Driver:
    if kind == "wsgi":
        middleware: Any = PullStatsMiddleware(
            wsgi_app(registry), config, metrics=metrics, routes=routes
        )
    else:
        middleware = PullStatsASGIMiddleware(
            asgi_app(registry), config, metrics=metrics, routes=routes
        )
    return Driver(kind, middleware, middleware.metrics, **kw)


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()
