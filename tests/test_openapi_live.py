"""Schemathesis against a live middleware over real HTTP, through the document it serves.

Both adapters, each under a real server (the ASGI one under uvicorn, the WSGI one
under werkzeug's threaded server), wrap the in-memory registry with images pushed
and pulled, counted in memory and a SQLite database (so the history routes answer
200). Generated requests, valid and not, and requests for the images the
registry holds: no answer is a 5xx, every status is documented and every body
matches its schema.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)
from werkzeug.serving import make_server

from pullstats_middleware import PullMetrics, PullStatsASGIMiddleware, PullStatsConfig
from pullstats_middleware.demo_registry import MemoryRegistry
from pullstats_middleware.durable import Database
from pullstats_middleware.routes import ROUTES
from pullstats_middleware.routes.openapi import OPENAPI_PATH, document
from pullstats_middleware.store import MemoryStore
from pullstats_middleware.wsgi import PullStatsMiddleware
from tests.apps import asgi_app, wsgi_app
from tests.test_proxy import Served

# No 5xx, every status documented, every body in its schema; and the content type and
# headers as documented, invalid input refused (4xx), other methods 405.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    response_schema_conformance,
    content_type_conformance,
    response_headers_conformance,
    negative_data_rejection,
    unsupported_method,
]
ALICE = "Basic " + base64.b64encode(b"alice:wonderland").decode()
# Bounded, so the file stays fast: the coverage phase's boundary and negative values,
# then a few random ones per operation. Stateful runs need links the document has not.
SCHEMATHESIS = schemathesis.Config.from_dict(
    {
        "generation": {"mode": "all", "max-examples": 10},
        "phases": {"stateful": {"enabled": False}},
    }
)


class Live:
    """One adapter under its real server, its registry, and what was pulled."""

    def __init__(self, kind: str, root: Path, config: PullStatsConfig) -> None:
        self.registry = registry = MemoryRegistry()
        self.hello = registry.push_image("library/hello", "v1")
        registry.push_image("library/hello", "v2", b"second")
        registry.push_index("library/multi", "latest", ["linux/amd64", "linux/arm64"])
        registry.push_image("private/app", "v1", b"secret layer")
        registry.protect("private/app", "alice", "wonderland")
        database = f"sqlite:///{root / 'pullstats.db'}"
        migrated = Database(database)
        migrated.upgrade()
        migrated.close()
        config = dataclasses.replace(config, database=database)
        self.metrics = PullMetrics(config, store=MemoryStore())
        self._stop: Any
        if kind == "asgi":
            app = PullStatsASGIMiddleware(asgi_app(registry), config, metrics=self.metrics)
            served = Served(app).__enter__()
            self.url, self._stop = served.url, lambda: served.__exit__(None, None, None)
        else:
            wsgi = PullStatsMiddleware(wsgi_app(registry), config, metrics=self.metrics)
            server = make_server("127.0.0.1", 0, wsgi, threaded=True)
            thread = threading.Thread(target=server.serve_forever, daemon=True)
            thread.start()
            self.url = f"http://127.0.0.1:{server.server_port}"
            self._stop = lambda: (server.shutdown(), thread.join(10), server.server_close())
        for reference in ("v1", "v1", self.hello, "v2"):
            self.get(f"/v2/library/hello/manifests/{reference}")
        self.get("/v2/library/multi/manifests/latest")
        self.get("/v2/private/app/manifests/v1", authorization=ALICE)
        assert self.metrics.flush(10)

    def get(self, path: str, **headers: str) -> bytes:
        request = urllib.request.Request(self.url + path, headers=headers)
        with urllib.request.urlopen(request, timeout=10) as response:
            return bytes(response.read())

    def close(self) -> None:
        self._stop()
        self.metrics.close()


# Loaded when the module is (schemathesis's lazy fixture loader is not usable with
# pytest 9.2: it sets a node attribute pytest no longer has); a test proves the
# live middleware serves these very documents.
REGISTRY_AUTH = PullStatsConfig(enabled=True, flush_interval=0.05)
# Without authorization every well-formed name reaches its handler (with it, most
# generated names are unknown to the registry: a 404 before the query is read).
NO_AUTH = dataclasses.replace(REGISTRY_AUTH, auth="none")
schema = schemathesis.openapi.from_dict(document(ROUTES, REGISTRY_AUTH), config=SCHEMATHESIS)
open_schema = schemathesis.openapi.from_dict(document(ROUTES, NO_AUTH), config=SCHEMATHESIS)


@pytest.fixture(scope="module", params=["wsgi", "asgi"])
def live(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Live]:
    server = Live(request.param, tmp_path_factory.mktemp(request.param), REGISTRY_AUTH)
    yield server
    server.close()


@pytest.fixture(scope="module", params=["wsgi", "asgi"])
def live_open(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Live]:
    server = Live(request.param, tmp_path_factory.mktemp(request.param), NO_AUTH)
    yield server
    server.close()


def test_the_middleware_serves_the_document(live: Live) -> None:
    assert json.loads(live.get(OPENAPI_PATH)) == document(ROUTES, REGISTRY_AUTH)


def test_the_middleware_serves_the_document_without_authorization(live_open: Live) -> None:
    assert json.loads(live_open.get(OPENAPI_PATH)) == document(ROUTES, NO_AUTH)


@schema.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck))
def test_every_answer_is_documented(case: Any, live: Live) -> None:
    case.call_and_validate(base_url=live.url, checks=CHECKS)


@open_schema.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck))
def test_every_answer_is_documented_without_authorization(case: Any, live_open: Live) -> None:
    case.call_and_validate(base_url=live_open.url, checks=CHECKS)


def test_the_registry_s_images_answer_in_their_schema(live: Live) -> None:
    """Generated names are mostly unknown to the registry (404): ask for the real ones,
    pulled above (v1 twice by tag, its manifest once more by digest, v2 once)."""
    repository = "/api/v1/repository/{repository}"
    asked: list[tuple[str, str, dict[str, str], Any]] = [
        ("/tag/{reference}/pull_statistics", "v1", {}, lambda b: b["tag_pull_count"]),
        ("/manifest/{reference}/pull_statistics", live.hello, {}, lambda b: b["manifest_pull_count"]),  # noqa: E501
        ("/pull_statistics", "", {"sort": "pull_count", "order": "desc", "limit": "1"},
         lambda b: b["tags"][0]["tag_pull_count"] if b["next_cursor"] else None),
        ("/tag/{reference}/pull_statistics/history", "v1", {}, lambda b: b["days"][-1]["pull_count"]),  # noqa: E501
        ("/manifest/{reference}/pull_statistics/history", live.hello, {},
         lambda b: b["days"][-1]["pull_count"]),
    ]  # fmt: skip
    counts = []
    for tail, reference, query, count in asked:
        path = {"repository": "library/hello"} | ({"reference": reference} if reference else {})
        case = schema[repository + tail]["GET"].Case(path_parameters=path, query=query)
        response = case.call_and_validate(base_url=live.url, checks=CHECKS)
        assert response.status_code == 200, (tail, response.text)
        counts.append(count(response.json()))
    assert counts == [2, 3, 2, 2, 3]
    private = schema[repository + "/tag/{reference}/pull_statistics"]["GET"]
    for headers, status in (({}, 401), ({"Authorization": ALICE}, 200)):
        case = private.Case(
            path_parameters={"repository": "private/app", "reference": "v1"}, headers=headers
        )
        response = case.call_and_validate(base_url=live.url, checks=CHECKS)
        assert response.status_code == status
