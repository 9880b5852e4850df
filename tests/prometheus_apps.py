"""What the Prometheus tests serve through real servers, and how they read a scrape.

`wsgi()` and `asgi()` are app factories for `gunicorn` and `uvicorn --factory`:
the test registry with two images, wrapped by the middleware configured from
the environment, each answer naming the worker process that gave it in
`X-Worker`, so a test can prove several workers served it.
`Workers` runs such a server as a real process group on a free port.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from pullstats_middleware import PullStatsASGIMiddleware, PullStatsConfig, PullStatsMiddleware
from pullstats_middleware.demo_registry import MemoryRegistry, starlette_app
from tests.apps import wsgi_app
from tests.e2e.services import _RegistryEndpoint, http_status

ROOT = Path(__file__).resolve().parent.parent
IMAGES = (("library/hello", b"hello"), ("team/app", b"app"), ("team/tool", b"tool"))


def registry() -> MemoryRegistry:
    """The same images, so the same digests, in every worker process."""
    reg = MemoryRegistry()
    for repository, content in IMAGES:
        reg.push_image(repository, "v1", content)
    return reg


def upstream() -> Callable[..., Any]:
    """The registry alone, for `pullstats proxy` to stand in front of."""
    return starlette_app(registry())


def wsgi() -> Callable[..., Iterable[bytes]]:
    app = PullStatsMiddleware(wsgi_app(registry()), PullStatsConfig.from_env())

    def named(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            return start_response(status, [*headers, ("X-Worker", str(os.getpid()))], exc_info)

        return app(environ, start)

    return named


def asgi() -> Callable[..., Any]:
    app = PullStatsASGIMiddleware(starlette_app(registry()), PullStatsConfig.from_env())
    worker = str(os.getpid()).encode()

    async def named(scope: dict[str, Any], receive: Any, send: Any) -> None:
        async def send_named(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", ()), (b"x-worker", worker)]
                message = {**message, "headers": headers}
            await send(message)

        await app(scope, receive, send_named if scope["type"] == "http" else send)

    return named


class Workers(_RegistryEndpoint):
    """`gunicorn` (server "gunicorn") serving `wsgi()`, or `uvicorn --workers` ("uvicorn")
    serving `app` (default `asgi()`); `env` configures the middleware."""

    startup_timeout = 60.0

    def __init__(
        self, server: str, env: dict[str, str], workers: int = 2, app: str = "asgi"
    ) -> None:
        self.name = server
        self.server = server
        self.extra_env = env
        self.workers = workers
        self.app = app
        super().__init__()

    def _command(self) -> list[str]:
        if self.server == "gunicorn":
            return [
                sys.executable, "-m", "gunicorn",
                "--config", str(ROOT / "examples" / "gunicorn_prometheus.py"),
                "--workers", str(self.workers), "--preload",
                "--bind", f"{self.host}:{self.port}",
                "tests.prometheus_apps:wsgi()",
            ]  # fmt: skip
        return [
            sys.executable, "-m", "uvicorn", "--factory", f"tests.prometheus_apps:{self.app}",
            "--workers", str(self.workers), "--no-proxy-headers", "--lifespan", "on",
            "--host", self.host, "--port", str(self.port), "--log-level", "warning",
        ]  # fmt: skip

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PULL_METRICS_")}
        env.update(self.extra_env, PYTHONPATH=str(ROOT))
        return env

    def _ready(self) -> bool:
        return http_status(self.url + "/v2/") == 200


def families(text: str) -> dict[str, Any]:
    """A scrape parsed by prometheus-client's own parser, by family name."""
    return {family.name: family for family in text_string_to_metric_families(text)}


def value(scraped: dict[str, Any], sample: str, **labels: str) -> float | None:
    """The value of one sample (`pullstats_pulls_recorded_total`, labels), None if absent."""
    for family in scraped.values():
        for found in family.samples:
            if found.name == sample and found.labels == labels:
                return float(found.value)
    return None
