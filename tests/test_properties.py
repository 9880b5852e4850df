"""Property tests: whole classes of hostile input, through the matchers, the router
and both adapters, with every Redis key the store writes looked at afterwards.

Properties: nothing raises out of the middleware; the middleware itself never
answers 5xx (a 503 only relays a registry that failed its probe); every Redis
key starts with the prefix and is no longer than the name grammar allows; a
request the middleware does not claim reaches the wrapped app byte for byte,
and the app's answer reaches the client unchanged.
"""

from __future__ import annotations

import io
import json
from typing import Any

import anyio
import fakeredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pullstats_middleware import (
    PullMetrics,
    PullStatsASGIMiddleware,
    PullStatsConfig,
    PullStatsMiddleware,
    buffer,
)
from pullstats_middleware.matchers import OCIMatcher, is_digest, validate_repository
from pullstats_middleware.matchers.oci import MAX_DIGEST_LENGTH, MAX_REPOSITORY_LENGTH
from pullstats_middleware.recorder import Recorder
from pullstats_middleware.routes import ROUTES, Request, Response, RouteCall, RouteError, Router
from pullstats_middleware.routes.history import date_range
from pullstats_middleware.store import DigestFetch, MemoryStore, RedisStore, Resolution
from pullstats_middleware.store.base import Batch

SHA = "sha256:" + "ab" * 32
PREFIX = "pull_metrics"
# prefix/resolution/<24 hex>/<repository>/<digest>, the longest key family
MAX_KEY = len(PREFIX) + len("/resolution/") + 24 + 1 + MAX_REPOSITORY_LENGTH + 1 + MAX_DIGEST_LENGTH

LATIN1 = st.characters(max_codepoint=255)
SEGMENTS = st.one_of(
    st.sampled_from(
        [
            *("v2", "manifests", "api", "v1", "repository", "tag", "manifest"),
            *("pull_statistics", "library", "hello", "", ".", "..", "%2F", "%00", "a\r\nb"),
            *(SHA, "sha512:" + "0" * 128, "md5:00", "ünï", "latest", "x" * 300, "A" * 129),
        ]
    ),
    st.text(alphabet=LATIN1, max_size=12),
)
PATHS = st.lists(SEGMENTS, min_size=1, max_size=9).map(lambda parts: "/" + "/".join(parts))
ROOTED = st.sampled_from(
    ["/v2/", "/api/v1/repository/", "/v2/library/hello/manifests/", "/v2/a/manifests/", "/"]
)
# Valid names too, so the watched paths and the routes are reached often.
NAMES = st.sampled_from(["a", "library/hello", "team/manifests/app", "A", "a//b"])
REFERENCES = st.sampled_from(["v1", "latest", SHA, "md5:00", ".v1", "v" * 129])
ANY_PATH = st.one_of(
    st.tuples(ROOTED, PATHS).map(lambda p: p[0] + p[1].lstrip("/")),
    st.builds("/v2/{}/manifests/{}".format, NAMES, REFERENCES),
    st.builds(
        "/api/v1/repository/{}/{}/{}/pull_statistics".format,
        NAMES,
        st.sampled_from(["tag", "manifest", "labels"]),
        REFERENCES,
    ),
    st.builds("/api/v1/repository/{}/pull_statistics/history".format, NAMES),
    st.builds("/api/v1/pull_statistics/ui/{}".format, NAMES),
)
# Weighted toward what the middleware watches: GET and HEAD, status 200.
METHODS = st.one_of(
    st.sampled_from(["GET", "HEAD"]),
    st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]),
)
QUERIES = st.text(alphabet=LATIN1, max_size=30)
DIGEST_HEADERS = st.one_of(
    st.none(), st.just(SHA), st.text(alphabet=LATIN1, max_size=40), st.just("foo:" + "A" * 5000)
)
STATUSES = st.one_of(
    st.just(200), st.sampled_from([201, 204, 304, 401, 403, 404, 500]), st.integers(100, 599)
)
BODIES = st.binary(max_size=64)

FAST = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))


@FAST
@given(ANY_PATH)
def test_the_matcher_accepts_only_valid_names(path: str) -> None:
    request = OCIMatcher().match_manifest(path)
    if request is not None:
        assert validate_repository(request.repository) is None
        assert is_digest(request.reference) == request.by_digest
        assert len(request.reference) <= MAX_DIGEST_LENGTH


def _router() -> Router:
    config = PullStatsConfig(enabled=True)
    return Router(ROUTES, config, PullMetrics(config, store=MemoryStore()))


ROUTER = _router()


@FAST
@given(METHODS, ANY_PATH, QUERIES)
def test_the_router_never_raises_and_never_answers_5xx(method: str, path: str, query: str) -> None:
    outcome = ROUTER.route(Request(method, path, query, {}, "10.0.0.1"))
    if isinstance(outcome, Response):
        assert outcome.status in (400, 405)
        assert method != "HEAD" or outcome.body == b""
    elif isinstance(outcome, RouteCall):
        assert validate_repository(outcome.args["repository"]) is None
        assert outcome.probe is not None and outcome.probe.path.startswith("/v2/")


# -- both adapters, against a registry that answers whatever the example says ---------


class Echo:
    """The wrapped app: records what reached it, answers with the example's response."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str]] = []
        self.status, self.digest, self.body = 200, None, b""

    def answer_headers(self) -> list[tuple[str, str]]:
        headers = [("Content-Type", "application/octet-stream")]
        return headers + ([("Docker-Content-Digest", self.digest)] if self.digest else [])

    def wsgi(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        self.seen.append((environ["REQUEST_METHOD"], environ["PATH_INFO"], environ["QUERY_STRING"]))
        start_response(f"{self.status} X", self.answer_headers())
        return [self.body]

    async def asgi(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.seen.append((scope["method"], scope["path"], scope["query_string"].decode("latin-1")))
        headers = [(k.lower().encode(), v.encode("latin-1")) for k, v in self.answer_headers()]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})


def _wsgi(app: Any, method: str, path: str, query: str, forwarded: str) -> tuple[int, bytes]:
    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "SCRIPT_NAME": "",
        "REMOTE_ADDR": "10.0.0.1",
        "SERVER_NAME": "registry.test",
        "SERVER_PORT": "80",
        "HTTP_X_FORWARDED_FOR": forwarded,
        "wsgi.input": io.BytesIO(b""),
    }
    out: dict[str, Any] = {}

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        out["status"] = int(status[:3])
        return lambda data: None

    body = b"".join(app(environ, start_response))
    return out["status"], body


def _asgi(app: Any, method: str, path: str, query: str, forwarded: str) -> tuple[int, bytes]:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode("utf-8", "surrogateescape"),
        "root_path": "",
        "query_string": query.encode("latin-1"),
        "headers": [(b"x-forwarded-for", forwarded.encode("latin-1"))],
        "client": ("10.0.0.1", 40000),
        "server": ("registry.test", 80),
    }
    out: dict[str, Any] = {"body": b""}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            out["status"] = message["status"]
        else:
            out["body"] += message.get("body", b"")

    anyio.run(app, scope, receive, send)
    return out["status"], out["body"]


def _adapters() -> list[tuple[Echo, Any, Any, PullMetrics, fakeredis.FakeRedis]]:
    built = []
    for adapter, drive in ((PullStatsMiddleware, _wsgi), (PullStatsASGIMiddleware, _asgi)):
        server = fakeredis.FakeRedis()
        config = PullStatsConfig(enabled=True, flush_interval=3600.0)
        metrics = PullMetrics(config, store=RedisStore(server))
        echo = Echo()
        app = adapter(echo.wsgi if adapter is PullStatsMiddleware else echo.asgi, metrics=metrics)
        built.append((echo, app, drive, metrics, server))
    return built


ADAPTERS = _adapters()


@settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))
@given(METHODS, ANY_PATH, QUERIES, STATUSES, DIGEST_HEADERS, BODIES, QUERIES)
def test_adapters_under_hostile_input(
    method: str,
    path: str,
    query: str,
    status: int,
    digest: str | None,
    body: bytes,
    forwarded: str,
) -> None:
    outcome = ROUTER.route(Request(method, path, query, {}, "10.0.0.1"))
    for echo, app, drive, metrics, server in ADAPTERS:
        echo.seen.clear()
        echo.status, echo.digest, echo.body = status, digest, body
        got_status, got_body = drive(app, method, path, query, forwarded)
        if outcome is None:
            # Not ours: the registry saw exactly this request, the client exactly its answer.
            assert echo.seen == [(method, path, query)]
            assert (got_status, got_body) == (status, body)
            continue
        if isinstance(outcome, Response):
            expected = {outcome.status}  # 400 or 405, before asking the registry
        elif not 200 <= status < 300:  # the registry's refusal, or a registry that failed
            expected = {status if status in (401, 403, 404) else 503}
        elif outcome.route.name.endswith("history"):
            expected = {history(query)}
        elif outcome.route.name in ("repository", "dashboard"):  # its query, and the tag list
            expected = {200, 400, 503}  # the registry sent (the body of this example: JSON or not)
        else:
            expected = {200}
        assert got_status in expected
        probes = [seen[0] for seen in echo.seen]
        assert probes in ([], ["HEAD"], ["GET"])  # at most the probe the route names
        page = isinstance(outcome, RouteCall) and outcome.route.name == "dashboard"
        if method != "HEAD" and page and got_status == 200:
            assert got_body.startswith(b"<!doctype html>")
        elif method != "HEAD":
            assert isinstance(json.loads(got_body), dict)
        assert metrics.flush(10)
        for key in server.keys():  # noqa: SIM118 -- a Redis client, not a dict
            assert key.startswith(PREFIX.encode() + b"/") and len(key) <= MAX_KEY, key


def history(query: str) -> int:
    """Without a database a history route is a 501, once its query is valid."""
    try:
        date_range(query)
    except RouteError as error:
        return error.status
    return 501


# -- folding a run of attribution events never changes what the store ends with -------

EVENTS = st.lists(
    st.tuples(st.sampled_from(["h:v1", "h:v2", "g"]), st.floats(0, 5)), min_size=1, max_size=12
)


@FAST
@given(EVENTS, st.sampled_from([0.5, 2.0, 30.0]))
def test_folding_events_keeps_the_store_result(
    events: list[tuple[str, float]], window: float
) -> None:
    """The buffer folds runs of repeated HEADs and GETs: the store ends the same with
    the events it takes as with every event, one by one."""
    ts, stream = 1000.0, []
    for kind, gap in events:
        ts += gap
        if kind == "g":
            stream.append(DigestFetch("c", "r", SHA, ts))
        else:
            stream.append(Resolution("c", "r", kind[2:], SHA, ts))
    recorder = Recorder(MemoryStore(), flush_interval=3600)
    for event in stream:
        recorder.add_attribution_event(event)
    _tags, _manifests, folded, _indexes, _pushes = recorder._take_buffer()
    recorder.close()
    assert len(folded) <= len(stream)
    results = []
    for sequence in (stream, folded):
        store = MemoryStore()
        store.apply(Batch("b", "p", attribution_events=list(sequence)), window=window, skew=1.0)
        results.append([store.read_tag("r", tag) for tag in ("v1", "v2")])
    assert results[0] == results[1]


# -- the buffer's counters: what it hands the recorder is what was pulled -------------

PULLS = st.lists(
    st.tuples(
        st.sampled_from(["tag", "digest", "manifest"]),
        st.sampled_from(["v1", "v2"]),
        st.sampled_from([SHA, "sha256:" + "cd" * 32]),
        st.sampled_from(["node-a", "node-b", None]),
        st.sampled_from([0.5, 1.0, 86_400.0]),  # apart: two pulls at one instant tie
    ),
    max_size=30,
)


@FAST
@given(PULLS)
def test_the_buffer_hands_over_every_count_and_puller(
    pulls: list[tuple[str, str, str, str | None, float]],
) -> None:
    """Tag pulls share one entry per (tag, manifest, day) on the request's side; taken,
    they are the tag and manifest counters a plain tally of the same pulls gives:
    counts, latest time, the digest a tag was pulled as last, and the pullers."""
    tags: dict[tuple[str, str, int], list[Any]] = {}
    manifests: dict[tuple[str, str, int], list[Any]] = {}

    def tally(table: dict[Any, list[Any]], key: Any, ts: float, client: str | None) -> None:
        entry = table.setdefault(key, [0, 0.0, set()])
        entry[0] += 1
        entry[1] = max(entry[1], ts)
        if client is not None:
            entry[2].add(client)

    recorder = Recorder(MemoryStore(), flush_interval=3600)
    clock = [1_700_000_000.0]
    original = buffer._now
    buffer._now = lambda: clock[0]
    try:
        for kind, tag, digest, client, step in pulls:
            clock[0] += step
            now, day = clock[0], int(clock[0] // 86400)
            if kind == "tag":
                recorder.add_tag_pull("r", tag, digest, client)
                tally(tags, ("r", tag, day), now, client)
                tags[("r", tag, day)][3:] = [digest]  # pulled as this digest last
            elif kind == "digest" and client is not None:
                recorder.add_digest_fetch(client, "r", digest)
            else:
                recorder.add_manifest_pull("r", digest, client=client)
            tally(manifests, ("r", digest, day), now, client)  # every pull is the manifest's
        taken_tags, taken_manifests, *_ = recorder._take_buffer()
    finally:
        buffer._now = original
        recorder.close()
    assert {k: (e[0], e[1], e[2], e[3] or set()) for k, e in taken_tags.items()} == {
        k: (count, ts, digest, clients) for k, (count, ts, clients, digest) in tags.items()
    }
    assert {k: (e[0], e[1], e[2] or set()) for k, e in taken_manifests.items()} == {
        k: tuple(e) for k, e in manifests.items()
    }
