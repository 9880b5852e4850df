"""docs/design.md, "What counts as a pull": through both adapters (the `client` fixture)."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from pullstats_middleware import PullMetrics
from pullstats_middleware.demo_registry import MemoryRegistry
from tests.apps import Driver

HELLO = "/v2/library/hello/manifests/v1"


def tag_stats(metrics: PullMetrics, repo: str, tag: str) -> dict[str, object]:
    return metrics.get_tag_statistics(repo, tag)


def test_pull_by_tag_counts_tag_and_manifest(client: Driver, metrics: PullMetrics) -> None:
    result = client.get(HELLO)
    assert result.status == 200 and result.error is None
    digest = result.headers["docker-content-digest"]
    client.flush()
    stats = tag_stats(metrics, "library/hello", "v1")
    assert stats["tag_pull_count"] == 1
    assert stats["current_manifest_digest"] == digest
    assert stats["manifest_pull_count"] == 1
    assert isinstance(stats["last_tag_pull_date"], str) and stats["last_tag_pull_date"].endswith(
        "Z"
    )


def test_pull_by_digest_counts_only_the_manifest(
    client: Driver, metrics: PullMetrics, registry: MemoryRegistry
) -> None:
    digest = registry.repositories["library/hello"].tags["v1"]
    assert client.get(f"/v2/library/hello/manifests/{digest}").status == 200
    client.flush()
    assert tag_stats(metrics, "library/hello", "v1")["tag_pull_count"] == 0
    assert metrics.get_manifest_statistics("library/hello", digest)["manifest_pull_count"] == 1


def test_repeated_pulls_coalesce_into_exact_counts(client: Driver, metrics: PullMetrics) -> None:
    for _ in range(25):
        client.get(HELLO)
    client.flush()
    stats = tag_stats(metrics, "library/hello", "v1")
    assert (stats["tag_pull_count"], stats["manifest_pull_count"]) == (25, 25)


def test_multi_arch_index_then_platform_manifest(
    client: Driver, metrics: PullMetrics, registry: MemoryRegistry
) -> None:
    index = client.get("/v2/library/multi/manifests/latest")
    assert index.status == 200
    amd64 = index.json()["manifests"][0]["digest"]
    assert client.get(f"/v2/library/multi/manifests/{amd64}").status == 200
    client.flush()
    stats = tag_stats(metrics, "library/multi", "latest")
    assert stats["tag_pull_count"] == 1
    assert stats["current_manifest_digest"] == index.headers["docker-content-digest"]
    assert stats["manifest_pull_count"] == 1  # the index digest
    assert metrics.get_manifest_statistics("library/multi", amd64)["manifest_pull_count"] == 1


def test_failed_and_non_get_requests_count_nothing(
    client: Driver, metrics: PullMetrics, registry: MemoryRegistry
) -> None:
    digest = registry.repositories["library/hello"].tags["v1"]
    assert client.get("/v2/private/app/manifests/v1").status == 401
    assert client.get("/v2/library/hello/manifests/nope").status == 404
    assert client.get("/v2/library/absent/manifests/v1").status == 404
    assert client.get("/v2/broken/thing/manifests/v1").status == 500
    assert client.request("DELETE", HELLO).status == 405
    assert client.head(HELLO).status == 200  # "is my image up to date?"
    assert client.head(f"/v2/library/hello/manifests/{digest}").status == 200
    client.flush()
    assert tag_stats(metrics, "library/hello", "v1")["tag_pull_count"] == 0
    assert metrics.get_manifest_statistics("library/hello", digest)["manifest_pull_count"] == 0
    for repo in ("private/app", "library/absent", "broken/thing"):
        assert tag_stats(metrics, repo, "v1")["tag_pull_count"] == 0


def test_a_body_not_sent_to_the_end_is_not_a_pull(client: Driver, metrics: PullMetrics) -> None:
    gone = client.request("GET", "/v2/chunky/hello/manifests/v1", hang_up_after=1)
    assert gone.status == 200
    client.flush()
    assert tag_stats(metrics, "chunky/hello", "v1")["tag_pull_count"] == 0
    # the same request, read to the end, counts
    assert client.get("/v2/chunky/hello/manifests/v1").status == 200
    client.flush()
    assert tag_stats(metrics, "chunky/hello", "v1")["tag_pull_count"] == 1


def test_the_apps_own_exception_propagates_unchanged_and_counts_nothing(
    client: Driver, metrics: PullMetrics
) -> None:
    result = client.get("/v2/explode/hello/manifests/v1")
    assert isinstance(result.error, RuntimeError)
    assert str(result.error) == "the app failed mid-body"
    client.flush()
    assert tag_stats(metrics, "explode/hello", "v1")["tag_pull_count"] == 0


def test_missing_digest_header_falls_back_to_sha256_of_the_body(
    client: Driver, metrics: PullMetrics
) -> None:
    result = client.get("/v2/nodigest/hello/manifests/v1")
    assert "docker-content-digest" not in result.headers
    client.flush()
    stats = tag_stats(metrics, "nodigest/hello", "v1")
    assert stats["tag_pull_count"] == 1
    assert stats["current_manifest_digest"] == "sha256:" + hashlib.sha256(result.body).hexdigest()


def test_a_repository_with_a_manifests_component(client: Driver, metrics: PullMetrics) -> None:
    assert client.get("/v2/library/multi/manifests/tools/manifests/v1").status == 200
    client.flush()
    assert tag_stats(metrics, "library/multi/manifests/tools", "v1")["tag_pull_count"] == 1


def test_pulls_with_credentials_are_counted(client: Driver, metrics: PullMetrics) -> None:
    import base64

    auth = "Basic " + base64.b64encode(b"alice:wonderland").decode()
    assert client.get("/v2/private/app/manifests/v1", authorization=auth).status == 200
    client.flush()
    assert tag_stats(metrics, "private/app", "v1")["tag_pull_count"] == 1


def test_containerd_head_by_tag_then_get_by_digest_is_one_tag_pull(
    client: Driver, metrics: PullMetrics
) -> None:
    head = client.head(HELLO, user_agent="containerd/1.7")
    digest = head.headers["docker-content-digest"]
    assert (
        client.get(f"/v2/library/hello/manifests/{digest}", user_agent="containerd/1.7").status
        == 200
    )
    # a second GET of the same digest is a digest pull, not another tag pull
    assert (
        client.get(f"/v2/library/hello/manifests/{digest}", user_agent="containerd/1.7").status
        == 200
    )
    client.flush()
    stats = tag_stats(metrics, "library/hello", "v1")
    assert (stats["tag_pull_count"], stats["manifest_pull_count"]) == (1, 2)


def test_a_get_by_digest_from_another_client_is_not_attributed(
    client: Driver, metrics: PullMetrics
) -> None:
    digest = client.head(HELLO, user_agent="containerd/1.7").headers["docker-content-digest"]
    client.get(f"/v2/library/hello/manifests/{digest}", user_agent="skopeo/1.9")
    client.flush()
    assert tag_stats(metrics, "library/hello", "v1")["tag_pull_count"] == 0
    assert metrics.get_manifest_statistics("library/hello", digest)["manifest_pull_count"] == 1


def test_non_manifest_requests_pass_through_untouched(
    client: Driver, metrics: PullMetrics, registry: MemoryRegistry
) -> None:
    blob = next(iter(registry.blobs))
    assert client.get("/v2/").status == 200
    assert client.get(f"/v2/library/hello/blobs/{blob}").body == registry.blobs[blob]
    assert client.get("/v2/_catalog").json()["repositories"]
    client.flush()
    assert len(metrics.recorder) == 0


@pytest.mark.parametrize(
    "method, reference, watched",
    [
        ("GET", "v1", True),
        ("HEAD", "v1", True),  # a resolution: half of a containerd tag pull
        ("PUT", "v1", True),  # a push names the tag
        ("GET", f"sha256:{'a' * 64}", True),
        ("HEAD", f"sha256:{'a' * 64}", False),  # records nothing: passed through
        ("PUT", f"sha256:{'a' * 64}", False),
        ("DELETE", "v1", False),
    ],
)
def test_the_adapters_watch_only_exchanges_that_can_record(
    kind: str, metrics: PullMetrics, method: str, reference: str, watched: bool
) -> None:
    from pullstats_middleware import PullStatsASGIMiddleware, PullStatsMiddleware

    adapter = PullStatsMiddleware if kind == "wsgi" else PullStatsASGIMiddleware
    target = adapter(None, metrics=metrics).target(method, f"/v2/a/b/manifests/{reference}")
    assert (target is not None) == watched
    if watched:
        assert (target.repository, target.reference) == ("a/b", reference)  # type: ignore[union-attr]


@pytest.mark.parametrize("method, status", [("HEAD", 200), ("PUT", 201)])
def test_an_exchange_of_a_head_or_put_by_digest_records_nothing(
    metrics: PullMetrics, method: str, status: int
) -> None:
    """Even built directly, not through an adapter's target()."""
    from pullstats_middleware.exchange import ManifestExchange, Watch
    from pullstats_middleware.matchers import ManifestRequest

    digest = "sha256:" + "a" * 64
    watch = Watch(metrics.recorder, lambda context: "client", 4 * 2**20)
    exchange = ManifestExchange(watch, ManifestRequest("a/b", digest, True), method, None)
    exchange.start(status, [(b"docker-content-digest", digest.encode())])
    exchange.finish()
    assert len(metrics.recorder) == 0


def test_wsgi_counts_when_the_body_is_read_to_the_end_without_close(
    registry: MemoryRegistry, metrics: PullMetrics
) -> None:
    """werkzeug's and Flask's test clients read the body and never call close()."""
    from flask import Flask
    from werkzeug.test import Client

    from pullstats_middleware import PullStatsMiddleware
    from tests.apps import wsgi_app

    plain = Client(PullStatsMiddleware(wsgi_app(registry), metrics=metrics))
    response = plain.get(HELLO)
    assert response.status_code == 200 and response.data
    flask = Flask(__name__)
    flask.wsgi_app = PullStatsMiddleware(wsgi_app(registry), metrics=metrics)  # type: ignore[method-assign]
    assert flask.test_client().get(HELLO).data
    assert metrics.flush(10)
    assert tag_stats(metrics, "library/hello", "v1")["tag_pull_count"] == 2


def test_wsgi_close_after_the_end_does_not_count_twice(
    registry: MemoryRegistry, metrics: PullMetrics
) -> None:
    from pullstats_middleware import PullStatsMiddleware
    from tests.apps import wsgi_app

    middleware = PullStatsMiddleware(wsgi_app(registry), metrics=metrics)
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": HELLO, "REMOTE_ADDR": "10.0.0.1"}
    body = middleware(environ, lambda status, headers, exc_info=None: None)
    assert b"".join(body)
    body.close()  # type: ignore[attr-defined]
    body.close()  # type: ignore[attr-defined]
    assert metrics.flush(10)
    assert tag_stats(metrics, "library/hello", "v1")["tag_pull_count"] == 1


def test_a_bogus_digest_header_is_ignored_and_the_body_hashed(
    kind: str, metrics: PullMetrics
) -> None:
    """An upstream's 10 KB `foo:AAAA...` header never becomes a key."""
    body = b'{"schemaVersion": 2}'

    def wsgi(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Docker-Content-Digest", "foo:" + "A" * 10_000)])
        return [body]

    async def asgi(scope: Any, receive: Any, send: Any) -> None:
        headers = [(b"docker-content-digest", b"foo:" + b"A" * 10_000)]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    from pullstats_middleware import PullStatsASGIMiddleware, PullStatsMiddleware

    middleware: Any = (
        PullStatsMiddleware(wsgi, metrics=metrics)
        if kind == "wsgi"
        else PullStatsASGIMiddleware(asgi, metrics=metrics)
    )
    Driver(kind, middleware, metrics).get("/v2/a/b/manifests/v1")
    assert metrics.flush(10)
    stats = tag_stats(metrics, "a/b", "v1")
    assert stats["tag_pull_count"] == 1
    assert stats["current_manifest_digest"] == "sha256:" + hashlib.sha256(body).hexdigest()


@pytest.mark.parametrize(
    "method, path, status, counted",
    [
        ("PUT", "/v2/a/b/manifests/v2", 201, True),
        ("PUT", "/v2/a/b/manifests/v2", 400, False),
        ("PUT", f"/v2/a/b/manifests/sha256:{'c' * 64}", 201, False),  # by digest: no tag
        ("POST", "/v2/a/b/manifests/v2", 201, False),
    ],
)
def test_a_push_by_tag_names_the_tag_and_counts_no_pull(
    kind: str, metrics: PullMetrics, method: str, path: str, status: int, counted: bool
) -> None:
    pushed = "sha256:" + "e" * 64

    def wsgi(environ: Any, start_response: Any) -> list[bytes]:
        start_response(f"{status} X", [("Docker-Content-Digest", pushed)])
        return [b""]

    async def asgi(scope: Any, receive: Any, send: Any) -> None:
        headers = [(b"docker-content-digest", pushed.encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    from pullstats_middleware import PullStatsASGIMiddleware, PullStatsMiddleware

    middleware: Any = (
        PullStatsMiddleware(wsgi, metrics=metrics)
        if kind == "wsgi"
        else PullStatsASGIMiddleware(asgi, metrics=metrics)
    )
    assert Driver(kind, middleware, metrics).request(method, path).status == status
    assert metrics.flush(10)
    record = metrics.store.read_tag("a/b", "v2")
    assert record.pull_count == 0
    assert (record.current_manifest_digest, record.last_push_date is not None) == (
        (pushed, True) if counted else (None, False)
    )
