"""The examples, through the frameworks' own test clients, and the ASGI lifespan flush."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from pullstats_middleware import PullMetrics, PullStatsASGIMiddleware, PullStatsConfig
from pullstats_middleware.demo_registry import MemoryRegistry, starlette_app
from pullstats_middleware.store import MemoryStore

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.syspath_prepend(str(EXAMPLES))
    monkeypatch.setenv("PULL_METRICS_FLUSH_INTERVAL", "0.05")
    sys.modules.pop(name, None)
    return importlib.import_module(name)


def test_flask_example(monkeypatch: pytest.MonkeyPatch) -> None:
    module = load("flask_registry", monkeypatch)
    client = module.app.test_client()
    with client.get("/v2/library/hello/manifests/v1") as pulled:
        assert pulled.get_data()  # read to the end, then closed: a complete pull
        digest = pulled.headers["Docker-Content-Digest"]
    assert module.app.wsgi_app.metrics.flush(5)
    stats = client.get("/api/v1/repository/library/hello/tag/v1/pull_statistics").get_json()
    assert stats["tag_pull_count"] == 1 and stats["current_manifest_digest"] == digest
    module.app.wsgi_app.metrics.close()


def test_starlette_example(monkeypatch: pytest.MonkeyPatch) -> None:
    module = load("starlette_registry", monkeypatch)
    with TestClient(module.app) as client:
        digest = client.head("/v2/library/hello/manifests/v1").headers["docker-content-digest"]
        assert client.get(f"/v2/library/hello/manifests/{digest}").status_code == 200
    # leaving the client ran the lifespan shutdown, which flushed: no explicit flush here
    metrics = module.app.middleware_stack.app.metrics  # the built PullStatsASGIMiddleware
    stats = metrics.get_tag_statistics("library/hello", "v1")
    assert (stats["tag_pull_count"], stats["manifest_pull_count"]) == (1, 1)


def test_lifespan_shutdown_flushes_before_completing() -> None:
    registry = MemoryRegistry()
    registry.push_image("library/hello", "v1")
    config = PullStatsConfig(enabled=True, flush_interval=3600)  # only the shutdown flushes
    metrics = PullMetrics(config, store=MemoryStore())
    app = PullStatsASGIMiddleware(starlette_app(registry), metrics=metrics)
    with TestClient(app) as client:
        assert client.get("/v2/library/hello/manifests/v1").status_code == 200
        assert metrics.store.read_tag("library/hello", "v1").pull_count == 0
    assert metrics.store.read_tag("library/hello", "v1").pull_count == 1
