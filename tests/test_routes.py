"""docs/design.md, "HTTP routes": the statistics routes, through both adapters."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from pullstats_middleware import PullMetrics, PullStatsConfig
from pullstats_middleware.demo_registry import MemoryRegistry
from pullstats_middleware.store import MemoryStore
from tests.apps import TAG_FIELDS, Driver, make_driver

ALICE = "Basic " + base64.b64encode(b"alice:wonderland").decode()
MALLORY = "Basic " + base64.b64encode(b"mallory:guess").decode()


def stats(client: Driver, path: str, **headers: str) -> Any:
    return client.get(f"/api/v1/repository/{path}/pull_statistics", **headers)


def assert_error(result: Any, status: int) -> dict[str, Any]:
    assert result.status == status
    assert result.headers["content-type"] == "application/json"
    body = result.json()
    assert set(body) == {"status", "title", "detail", "error_message"}
    assert body["status"] == status and body["detail"] == body["error_message"] != ""
    return body


def test_tag_statistics_shape_and_values(client: Driver, registry: MemoryRegistry) -> None:
    digest = client.get("/v2/library/hello/manifests/v1").headers["docker-content-digest"]
    client.get("/v2/library/hello/manifests/v1")
    client.get(f"/v2/library/hello/manifests/{digest}")
    client.flush()
    result = stats(client, "library/hello/tag/v1")
    assert result.status == 200
    body = result.json()
    assert list(body) == TAG_FIELDS
    assert body["tag_name"] == "v1" and body["tag_pull_count"] == 2
    assert body["current_manifest_digest"] == digest and body["manifest_pull_count"] == 3
    assert body["last_tag_pull_date"] <= body["last_manifest_pull_date"]


def test_manifest_statistics_shape(client: Driver, registry: MemoryRegistry) -> None:
    digest = registry.repositories["library/hello"].tags["v1"]
    client.get(f"/v2/library/hello/manifests/{digest}")
    client.flush()
    body = stats(client, f"library/hello/manifest/{digest}").json()
    assert list(body) == ["manifest_digest", "manifest_pull_count", "last_manifest_pull_date"]
    assert body["manifest_digest"] == digest and body["manifest_pull_count"] == 1


def test_never_pulled_is_zero_and_null(client: Driver, registry: MemoryRegistry) -> None:
    digest = registry.repositories["library/hello"].tags["v1"]
    body = stats(client, "library/hello/tag/v1").json()
    # the registry's own answer names what the tag points to now
    assert body == {
        "tag_name": "v1",
        "tag_pull_count": 0,
        "last_tag_pull_date": None,
        "current_manifest_digest": digest,
        "manifest_pull_count": 0,
        "last_manifest_pull_date": None,
    }
    body = stats(client, f"library/hello/manifest/{digest}").json()
    assert body == {
        "manifest_digest": digest,
        "manifest_pull_count": 0,
        "last_manifest_pull_date": None,
    }


@pytest.mark.parametrize(
    "path, detail",
    [
        ("Library/hello/tag/v1", "invalid repository name"),
        ("library//hello/tag/v1", "invalid repository name"),
        ("library/hello-/tag/v1", "invalid repository name"),
        ("library/hello/tag/.v1", "invalid tag"),
        ("library/hello/tag/" + "v" * 129, "invalid tag"),
        ("library/hello/manifest/sha256:abc", "invalid digest"),
        ("library/hello/manifest/sha256:" + "A" * 64, "invalid digest"),
        ("library/hello/manifest/v1", "invalid digest"),
        ("a" * 256 + "/tag/v1", "at most 255"),
    ],
)
def test_malformed_names_are_400(client: Driver, path: str, detail: str) -> None:
    assert detail in assert_error(stats(client, path), 400)["detail"]


def test_other_methods_are_405(client: Driver) -> None:
    result = client.request("POST", "/api/v1/repository/library/hello/tag/v1/pull_statistics")
    assert_error(result, 405)
    assert result.headers["allow"] == "GET, HEAD"


def test_head_answers_like_get_without_a_body(client: Driver) -> None:
    client.get("/v2/library/hello/manifests/v1")
    client.flush()
    path = "/api/v1/repository/library/hello/tag/v1/pull_statistics"
    got, head = client.get(path), client.head(path)
    assert head.status == 200 and head.body == b""
    assert head.headers["content-length"] == got.headers["content-length"] == str(len(got.body))
    assert got.json()["tag_pull_count"] == 1
    bad = client.head("/api/v1/repository/Library/hello/tag/v1/pull_statistics")
    assert bad.status == 400 and bad.body == b""
    client.flush()
    assert stats(client, "library/hello/tag/v1").json()["tag_pull_count"] == 1  # never counted


def test_repository_with_a_manifests_component(client: Driver) -> None:
    """The statistics root is tested before the manifest path, so a repository
    named `.../manifests/...` still reaches its statistics."""
    assert client.get("/v2/library/multi/manifests/tools/manifests/v1").status == 200
    client.flush()
    result = stats(client, "library/multi/manifests/tools/tag/v1")
    assert result.status == 200 and result.json()["tag_pull_count"] == 1


def test_unknown_repository_tag_and_manifest_are_404(client: Driver) -> None:
    assert_error(stats(client, "library/absent/tag/v1"), 404)
    assert_error(stats(client, "library/hello/tag/v9"), 404)
    assert_error(stats(client, "library/hello/manifest/sha256:" + "0" * 64), 404)


def test_authorization_follows_the_registry(client: Driver) -> None:
    client.get("/v2/private/app/manifests/v1", authorization=ALICE)
    client.flush()
    denied = stats(client, "private/app/tag/v1")
    assert_error(denied, 401)
    assert denied.headers["www-authenticate"] == 'Basic realm="registry"'
    assert_error(stats(client, "private/app/tag/v1", authorization=MALLORY), 403)
    allowed = stats(client, "private/app/tag/v1", authorization=ALICE)
    assert allowed.status == 200 and allowed.json()["tag_pull_count"] == 1


def test_the_authorization_probe_is_never_counted(client: Driver, metrics: PullMetrics) -> None:
    for _ in range(3):
        stats(client, "library/hello/tag/v1")
    client.flush()
    assert stats(client, "library/hello/tag/v1").json()["tag_pull_count"] == 0
    assert len(metrics.recorder) == 0


def test_auth_none_answers_without_asking(registry: MemoryRegistry, kind: str) -> None:
    config = PullStatsConfig(enabled=True, auth="none")
    driver = make_driver(kind, registry, config, PullMetrics(config, store=MemoryStore()))
    assert stats(driver, "private/app/tag/v1").status == 200
    assert stats(driver, "library/absent/tag/v1").json()["tag_pull_count"] == 0


def test_auth_callable_policy(registry: MemoryRegistry, kind: str) -> None:
    seen = []

    def policy(request: Any, headers: Any) -> bool | int:
        seen.append((request.repository, headers.get("x-team")))
        if headers.get("x-team") == "ops":
            return True
        return 404 if request.repository == "library/absent" else False

    config = PullStatsConfig(enabled=True, auth=policy)
    driver = make_driver(kind, registry, config, PullMetrics(config, store=MemoryStore()))
    assert stats(driver, "private/app/tag/v1", x_team="ops").status == 200
    assert_error(stats(driver, "private/app/tag/v1", x_team="dev"), 403)
    assert_error(stats(driver, "library/absent/tag/v1"), 404)
    assert seen[0] == ("private/app", "ops")


def test_a_failing_policy_is_500_and_the_registry_keeps_serving(
    registry: MemoryRegistry, kind: str
) -> None:
    def policy(request: Any, headers: Any) -> bool:
        raise KeyError("boom")

    config = PullStatsConfig(enabled=True, auth=policy)
    driver = make_driver(kind, registry, config, PullMetrics(config, store=MemoryStore()))
    assert_error(stats(driver, "library/hello/tag/v1"), 500)
    assert driver.get("/v2/library/hello/manifests/v1").status == 200


def test_feature_off_is_a_pass_through(registry: MemoryRegistry, kind: str) -> None:
    driver = make_driver(kind, registry, PullStatsConfig(enabled=False))
    assert driver.middleware.metrics is None
    assert driver.get("/v2/library/hello/manifests/v1").status == 200
    result = stats(driver, "library/hello/tag/v1")
    assert result.status == 404  # the wrapped registry's own 404
    assert result.json() == {"errors": [{"code": "NOT_FOUND", "message": "no such route"}]}


def test_store_unreadable_is_503_with_retry_after(registry: MemoryRegistry, kind: str) -> None:
    import redis

    from pullstats_middleware.store import RedisStore

    config = PullStatsConfig(enabled=True)
    dead = redis.Redis(port=1, socket_connect_timeout=0.2, socket_timeout=0.2)
    metrics = PullMetrics(config, store=RedisStore(dead))
    driver = make_driver(kind, registry, config, metrics)
    result = stats(driver, "library/hello/tag/v1")
    assert_error(result, 503)
    assert result.headers["retry-after"] == "5"
    assert driver.get("/v2/library/hello/manifests/v1").status == 200  # pulls go on
    metrics.close(timeout=0.1)


def test_malformed_stored_value_is_a_precise_500(registry: MemoryRegistry, kind: str) -> None:
    import fakeredis

    from pullstats_middleware.store import RedisStore

    server = fakeredis.FakeRedis()
    server.hset("pull_metrics/tag/library/hello/v1", "pull_count", "many")
    config = PullStatsConfig(enabled=True)
    driver = make_driver(kind, registry, config, PullMetrics(config, store=RedisStore(server)))
    detail = assert_error(stats(driver, "library/hello/tag/v1"), 500)["detail"]
    assert "pull_metrics/tag/library/hello/v1" in detail and "'many'" in detail


def test_a_key_of_the_wrong_type_is_a_500_naming_it(registry: MemoryRegistry, kind: str) -> None:
    import fakeredis

    from pullstats_middleware.store import RedisStore

    server = fakeredis.FakeRedis()
    server.set("pull_metrics/tag/library/hello/v1", "hello")
    config = PullStatsConfig(enabled=True)
    driver = make_driver(kind, registry, config, PullMetrics(config, store=RedisStore(server)))
    detail = assert_error(stats(driver, "library/hello/tag/v1"), 500)["detail"]
    assert "pull_metrics/tag/library/hello/v1" in detail and "not a hash" in detail


def test_unregistered_digest_algorithms_are_400(client: Driver) -> None:
    for digest in ("md5:0123456789abcdef0123456789abcdef", "foo:" + "A" * 10_000):
        detail = assert_error(stats(client, f"library/hello/manifest/{digest}"), 400)["detail"]
        assert "invalid digest" in detail and len(detail) < 200


def test_mount_prefix(registry: MemoryRegistry, kind: str) -> None:
    """Under SCRIPT_NAME / root_path the paths the middleware sees are relative."""
    config = PullStatsConfig(enabled=True)
    metrics = PullMetrics(config, store=MemoryStore())
    driver = make_driver(kind, registry, config, metrics, root_path="/registry")
    assert driver.get("/registry/v2/library/hello/manifests/v1").status == 200
    driver.flush()
    body = driver.get("/registry/api/v1/repository/library/hello/tag/v1/pull_statistics").json()
    assert body["tag_pull_count"] == 1


def test_registry_errors_during_the_check_are_503(client: Driver) -> None:
    result = stats(client, "broken/thing/tag/v1")  # the registry answers 500
    assert "status 500" in assert_error(result, 503)["detail"]
    assert result.headers["retry-after"] == "5"


def test_a_registry_that_raises_during_the_check_is_503(kind: str) -> None:
    from tests.apps import Driver

    def wsgi(environ: Any, start_response: Any) -> Any:
        raise RuntimeError("registry bug")

    async def asgi(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("registry bug")

    from pullstats_middleware import PullStatsASGIMiddleware, PullStatsMiddleware

    config = PullStatsConfig(enabled=True)
    metrics = PullMetrics(config, store=MemoryStore())
    middleware = (
        PullStatsMiddleware(wsgi, metrics=metrics)
        if kind == "wsgi"
        else PullStatsASGIMiddleware(asgi, metrics=metrics)
    )
    driver = Driver(kind, middleware, metrics)
    detail = assert_error(stats(driver, "library/hello/tag/v1"), 503)["detail"]
    assert detail == "the registry failed the authorization check"
