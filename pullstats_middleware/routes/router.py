"""The statistics routes as one table, matched by werkzeug's router.

A `Route` is everything about one route: its path rule, the validator of each
path parameter, the probe that asks the registry whether the caller may see
it, and the handler that produces the answer. `Router.route()` turns a
`Request` into an immediate `Response` (a malformed name, a wrong method, a
policy's denial) or a `RouteCall`: the adapter runs `call.probe` in process,
then `call.respond(answer)` judges the registry's answer and runs the handler.
Adding a route is one handler and one entry in the table; no adapter changes.
The same entry describes the route in the OpenAPI document (routes/openapi.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, final

from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.routing import BaseConverter, Map, Rule

from pullstats_middleware.config import PullStatsConfig
from pullstats_middleware.matchers import StatsRequest
from pullstats_middleware.metrics import PullMetrics
from pullstats_middleware.routes.authorization import judge_policy, judge_probe
from pullstats_middleware.routes.http import (
    Probe,
    ProbeAnswer,
    Request,
    Response,
    RouteError,
    error,
    unavailable,
)
from pullstats_middleware.store import StoreDataError, StoreUnavailable

log = logging.getLogger("pullstats_middleware")

Validator = Callable[[str], "str | None"]  # the problem with a value, or None
JsonSchema = Mapping[str, Any]  # a JSON Schema (2020-12), as OpenAPI 3.1 takes it


@dataclass(frozen=True, slots=True)
class RouteContext:
    """What a handler gets: the validated path parameters and the registry's answer."""

    request: Request
    args: Mapping[str, str]
    probe: ProbeAnswer | None  # None when no probe ran (PULL_METRICS_AUTH none or a policy)
    metrics: PullMetrics
    routes: Sequence[Route] = ()  # the table the router mounts: what the OpenAPI route describes


Handler = Callable[[RouteContext], Response]


@dataclass(frozen=True, slots=True)
class Route:
    name: str  # unique; what a custom authorization policy sees as `request.kind`
    rule: str  # werkzeug rule, relative to PULL_METRICS_PATH_PREFIX
    handler: Handler
    params: Mapping[str, Validator] = field(default_factory=dict)
    # The registry request that authorizes this route; None: anyone may read it.
    probe: Callable[[Mapping[str, str]], Probe] | None = None
    methods: tuple[str, ...] = ("GET",)  # werkzeug adds HEAD wherever GET is
    summary: str = ""
    # What the OpenAPI document says of the route; the handler still parses and checks.
    query: Mapping[str, JsonSchema] = field(default_factory=dict)  # optional query parameters
    response: JsonSchema | None = None  # the schema of a 200 answer; None: not described
    media_type: str = "application/json"  # of a 200 answer
    errors: tuple[int, ...] = ()  # statuses the handler answers itself (RouteError, store)

    @property
    def root(self) -> str:
        """The constant start of the rule: what a path must start with to be ours."""
        return self.rule.split("<", 1)[0]


class _AnyPath(BaseConverter):
    """One or more segments, possibly empty or malformed: validation answers 400,
    where a stricter converter would pass the request to the wrapped app."""

    regex = r"[\s\S]*?"
    part_isolating = False


class _Segment(BaseConverter):
    regex = r"[^/]*"
    part_isolating = False


@dataclass(frozen=True, slots=True)
class RouteCall:
    """A matched, validated request waiting for its probe's answer."""

    route: Route
    request: Request
    args: Mapping[str, str]
    probe: Probe | None  # for the adapter to run in process; None: nothing to ask
    metrics: PullMetrics
    routes: Sequence[Route] = ()

    def respond(self, answer: ProbeAnswer | None) -> Response:
        """Judge the probe's answer, then run the handler (store I/O). Never raises."""
        response = judge_probe(answer) if self.probe is not None else None
        if response is None:
            context = RouteContext(self.request, self.args, answer, self.metrics, self.routes)
            response = _run(self.route.handler, context)
        if self.request.method == "HEAD":
            return response._replace(body=b"")
        return response


def _run(handler: Handler, context: RouteContext) -> Response:
    try:
        return handler(context)
    except RouteError as exc:
        return error(exc.status, exc.detail, exc.headers)
    except StoreDataError as exc:
        log.error("pull statistics: %s", exc)
        return error(500, f"stored statistics are malformed: {exc}")
    except StoreUnavailable as exc:
        log.warning("pull statistics: store unavailable for reading (%s)", exc)
        return unavailable("pull statistics are temporarily unavailable")
    except Exception:
        log.exception("pull statistics: the %s route failed", context.request.path)
        return error(500, "the statistics route failed")


@final  # the adapters test `type(target) is Router` on every request
class Router:
    __slots__ = ("_auth", "_metrics", "_prefix", "_routes", "_urls", "roots", "routes")

    def __init__(
        self, routes: Sequence[Route], config: PullStatsConfig, metrics: PullMetrics
    ) -> None:
        self.routes = tuple(routes)
        self._routes = {route.name: route for route in routes}
        if len(self._routes) != len(routes):
            raise ValueError("route names must be unique")
        self._prefix = config.path_prefix
        self._auth = config.auth
        self._metrics = metrics
        # The one test every request pays: a path that starts with none of these is not ours.
        roots = sorted({self._prefix + route.root for route in routes})
        self.roots: str | tuple[str, ...] = roots[0] if len(roots) == 1 else tuple(roots)
        rules = [Rule(r.rule, endpoint=r.name, methods=list(r.methods)) for r in routes]
        self._urls = Map(
            rules,
            converters={"anypath": _AnyPath, "segment": _Segment},
            strict_slashes=False,
            merge_slashes=False,
            redirect_defaults=False,
        ).bind("localhost")

    def route(self, request: Request) -> Response | RouteCall | None:
        """None: not a statistics route after all; the wrapped app serves it. Never raises."""
        try:
            outcome = self._route(request)
        except Exception:
            log.exception("pull statistics: failed to route %r", request.path)
            outcome = error(500, "the statistics route failed")
        if request.method == "HEAD" and isinstance(outcome, Response):
            return outcome._replace(body=b"")
        return outcome

    def _route(self, request: Request) -> Response | RouteCall | None:
        try:
            name, args = self._urls.match(request.path[len(self._prefix) :], request.method)
        except MethodNotAllowed as exc:
            allowed = ", ".join(sorted(exc.valid_methods or ()))
            detail = f"method {request.method} is not allowed here; use {allowed}"
            return error(405, detail, [("Allow", allowed)])
        except HTTPException:  # no rule matches: the path belongs to the wrapped app
            return None
        route = self._routes[name]
        for param, validate in route.params.items():
            problem = validate(args[param])
            if problem:
                return error(400, problem)
        if route.probe is None or self._auth == "none":
            return RouteCall(route, request, args, None, self._metrics, self.routes)
        if self._auth == "registry":
            probe = route.probe(args)
            probe = probe._replace(path=self._prefix + probe.path)
            return RouteCall(route, request, args, probe, self._metrics, self.routes)
        assert callable(self._auth)
        asked = StatsRequest(route.name, args.get("repository", ""), args.get("reference", ""))
        denied = judge_policy(self._auth, asked, request.headers)
        return denied or RouteCall(route, request, args, None, self._metrics, self.routes)
