"""`GET /metrics` at the root of `pullstats proxy`, the path Prometheus scrapes by
default (the middleware serves the same at its own prefix)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

    from pullstats_middleware.metrics import PullMetrics


class MetricsAtRoot:
    """`pullstats proxy` with PULL_METRICS_PROMETHEUS: also `GET /metrics`, the path
    Prometheus scrapes by default (the middleware serves the same at its own prefix)."""

    def __init__(self, app: ASGIApp, path: str = "/metrics") -> None:
        metrics: PullMetrics | None = getattr(app, "metrics", None)  # a PullStatsASGIMiddleware
        if metrics is None:
            raise ValueError("MetricsAtRoot wraps the statistics middleware, with pulls counted")
        self.app, self.metrics, self.path = app, metrics, path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        import anyio.to_thread

        from pullstats_middleware.prometheus import scrape
        from pullstats_middleware.routes import error

        if scope["method"] in ("GET", "HEAD"):
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            response = await anyio.to_thread.run_sync(scrape, self.metrics, headers)
        else:
            response = error(405, f"method {scope['method']} is not allowed here; use GET, HEAD")
            response.headers.append(("Allow", "GET, HEAD"))
        raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in response.headers]
        await send({"type": "http.response.start", "status": response.status, "headers": raw})
        body = b"" if scope["method"] == "HEAD" else response.body
        await send({"type": "http.response.body", "body": body})
