"""The route table and its router: matching, validation, probes, and a new route
added with one handler and one table entry, served by both adapters unchanged."""

from __future__ import annotations

import base64
import json

import pytest

from pullstats_middleware import PullMetrics, PullStatsConfig
from pullstats_middleware.demo_registry import MemoryRegistry
from pullstats_middleware.matchers import validate_repository
from pullstats_middleware.routes import (
    ROUTES,
    Probe,
    Request,
    Response,
    Route,
    RouteCall,
    RouteContext,
    RouteError,
    Router,
    json_response,
    tags_list,
)
from pullstats_middleware.store import MemoryStore
from tests.apps import make_driver

SHA256 = "sha256:" + "a" * 64
ALICE = "Basic " + base64.b64encode(b"alice:wonderland").decode()


def router(config: PullStatsConfig | None = None, routes: tuple[Route, ...] = ROUTES) -> Router:
    config = config or PullStatsConfig(enabled=True)
    return Router(routes, config, PullMetrics(config, store=MemoryStore()))


def route(path: str, method: str = "GET", r: Router | None = None) -> Response | RouteCall | None:
    return (r or router()).route(Request(method, path, "", {}, "10.0.0.1"))


@pytest.mark.parametrize(
    "path, expected",
    [
        ("/api/v1/repository/a/b/tag/v1/pull_statistics", ("tag", "a/b", "v1")),
        (f"/api/v1/repository/a/manifest/{SHA256}/pull_statistics", ("manifest", "a", SHA256)),
        ("/api/v1/repository/x/tag/tag/v1/pull_statistics", ("tag", "x/tag", "v1")),
        ("/api/v1/repository/a/manifests/b/tag/v1/pull_statistics", ("tag", "a/manifests/b", "v1")),
        ("/api/v1/repository/a/b/tag/v1", None),
        ("/api/v1/repository/a/b/labels/pull_statistics", ("repository", "a/b/labels", None)),
        ("/api/v1/repository/tag/v1/pull_statistics", ("repository", "tag/v1", None)),
        ("/api/v1/user/", None),
    ],
)
def test_paths(path: str, expected: tuple[str, str, str | None] | None) -> None:
    outcome = route(path)
    if expected is None:
        assert outcome is None
        return
    assert isinstance(outcome, RouteCall)
    args = outcome.args
    assert (outcome.route.name, args["repository"], args.get("reference")) == expected


@pytest.mark.parametrize(
    "path, detail",
    [
        ("/api/v1/repository/A/tag/v1/pull_statistics", "invalid repository name"),
        ("/api/v1/repository//a/tag/v1/pull_statistics", "invalid repository name"),
        ("/api/v1/repository/a/tag/-v1/pull_statistics", "invalid tag"),
        ("/api/v1/repository/a/tag//pull_statistics", "invalid tag"),
        ("/api/v1/repository/a/manifest/sha256:xyz/pull_statistics", "invalid digest"),
    ],
)
def test_malformed_names_are_400(path: str, detail: str) -> None:
    outcome = route(path)
    assert isinstance(outcome, Response) and outcome.status == 400
    assert detail in json.loads(outcome.body)["detail"]


def test_the_probe_is_a_manifest_head_under_the_path_prefix() -> None:
    r = router(PullStatsConfig(enabled=True, path_prefix="/registry"))
    assert "/registry/api/v1/repository/" in r.roots
    outcome = route("/registry/api/v1/repository/a/b/tag/v1/pull_statistics", r=r)
    assert isinstance(outcome, RouteCall) and outcome.probe is not None
    assert outcome.probe.method == "HEAD"
    assert outcome.probe.path == "/registry/v2/a/b/manifests/v1"
    assert "application/vnd.oci.image.index.v1+json" in outcome.probe.accept


def test_no_probe_without_registry_authorization() -> None:
    outcome = route(
        "/api/v1/repository/a/tag/v1/pull_statistics",
        r=router(PullStatsConfig(enabled=True, auth="none")),
    )
    assert isinstance(outcome, RouteCall) and outcome.probe is None


def test_route_names_are_unique() -> None:
    with pytest.raises(ValueError, match="unique"):
        router(routes=(*ROUTES, ROUTES[0]))


# -- a new route: one handler, one table entry, no adapter change --------------------


def tag_count(context: RouteContext) -> Response:
    """A toy repository-level route: how many tags the registry lists, and a query echo."""
    assert context.probe is not None
    tags = json.loads(context.probe.body)["tags"]
    limit = context.request.query.partition("limit=")[2]
    if limit and not limit.isdigit():
        raise RouteError(400, f"limit must be a number, got {limit!r}")
    return json_response(200, {"repository": context.args["repository"], "tags": len(tags)})


TOY = Route(
    "toy",
    "/api/v1/pull_statistics/toy/<anypath:repository>",
    tag_count,
    params={"repository": validate_repository},
    probe=tags_list,
    summary="How many tags a repository has",
)


@pytest.mark.parametrize("kind", ["wsgi", "asgi"])
def test_a_toy_route_is_served_by_both_adapters(registry: MemoryRegistry, kind: str) -> None:
    config = PullStatsConfig(enabled=True)
    metrics = PullMetrics(config, store=MemoryStore())
    driver = make_driver(kind, registry, config, metrics, routes=(*ROUTES, TOY))
    result = driver.get("/api/v1/pull_statistics/toy/library/hello")
    assert result.status == 200 and result.json() == {"repository": "library/hello", "tags": 1}
    # The probe it names (GET tags/list) carries the caller's credentials.
    assert driver.get("/api/v1/pull_statistics/toy/private/app").status == 401
    allowed = driver.get("/api/v1/pull_statistics/toy/private/app", authorization=ALICE)
    assert allowed.json() == {"repository": "private/app", "tags": 1}
    assert driver.get("/api/v1/pull_statistics/toy/Bad").status == 400
    assert driver.get("/api/v1/pull_statistics/toy/library/hello?limit=x").status == 400
    # The existing routes are untouched.
    assert driver.get("/api/v1/repository/library/hello/tag/v1/pull_statistics").status == 200
    metrics.close()


def test_the_repository_probe_lists_tags() -> None:
    probe = tags_list({"repository": "a/b"})
    assert probe == Probe("GET", "/v2/a/b/tags/list", "application/json")
