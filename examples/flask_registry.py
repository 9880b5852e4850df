"""A Flask registry app with pull statistics, in one line of wrapping.

Run:    [PORT=5000] python examples/flask_registry.py        (needs: pip install flask)
Then:   curl -i localhost:${PORT:-5000}/v2/library/hello/manifests/v1
        curl localhost:${PORT:-5000}/api/v1/repository/library/hello/tag/v1/pull_statistics

Counts go to the Redis named by PULL_METRICS_REDIS (e.g. redis://localhost:6379/0)
or, with none configured, to process memory.
"""

from __future__ import annotations

import os

from flask import Flask, Response, request

from pullstats_middleware import PullStatsConfig, PullStatsMiddleware
from pullstats_middleware.demo_registry import MemoryRegistry

registry = MemoryRegistry()
registry.push_image("library/hello", "v1", b"hello from flask")

app = Flask(__name__)
app.config.update(
    FEATURE_IMAGE_PULL_STATS=True,
    PULL_METRICS_REDIS=os.environ.get("PULL_METRICS_REDIS"),
    PULL_METRICS_AUTH="registry",
)


@app.route("/v2/", defaults={"path": ""}, methods=["GET", "HEAD"])
@app.route("/v2/<path:path>", methods=["GET", "HEAD"])
def v2(path: str) -> Response:
    status, headers, body = registry.handle(
        request.method, request.path, {k.lower(): v for k, v in request.headers.items()}
    )
    return Response(body, status, headers)


# The whole integration: wrap the WSGI app with the config Flask already holds.
app.wsgi_app = PullStatsMiddleware(app.wsgi_app, PullStatsConfig.from_mapping(app.config))  # type: ignore[method-assign]

if __name__ == "__main__":
    app.run(port=int(os.environ.get("PORT", "5000")))
