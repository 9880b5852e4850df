"""A Starlette registry app with pull statistics, in one line of wrapping.

Run:    [PORT=8000] python examples/starlette_registry.py     (uvicorn comes with the [proxy] extra)
Then:   curl -i localhost:${PORT:-8000}/v2/library/hello/manifests/v1
        curl localhost:${PORT:-8000}/api/v1/repository/library/hello/tag/v1/pull_statistics

Configured from the environment: FEATURE_IMAGE_PULL_STATS, PULL_METRICS_REDIS, ...
(the feature is switched on here so the example does something by default).
"""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pullstats_middleware import PullStatsASGIMiddleware, PullStatsConfig
from pullstats_middleware.demo_registry import MemoryRegistry

registry = MemoryRegistry()
registry.push_image("library/hello", "v1", b"hello from starlette")


async def v2(request: Request) -> Response:
    status, headers, body = registry.handle(
        request.method, request.url.path, {k.lower(): v for k, v in request.headers.items()}
    )
    response = Response(body, status)
    response.headers.update(dict(headers))
    return response


app = Starlette(routes=[Route("/v2/{path:path}", v2, methods=["GET", "HEAD"])])
# The whole integration: one line.
app.add_middleware(PullStatsASGIMiddleware, config=PullStatsConfig.from_env(enabled=True))

if __name__ == "__main__":
    import uvicorn

    # proxy_headers=False: the middleware believes X-Forwarded-For only from
    # PULL_METRICS_TRUSTED_PROXIES; uvicorn's default would let a client choose its address.
    uvicorn.run(app, port=int(os.environ.get("PORT", "8000")), proxy_headers=False)
