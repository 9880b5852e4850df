"""`GET /api/v1/pull_statistics/ui/{repository}`: one HTML page per repository.

Pulls and unique pullers per day of the repository and of one tag or digest (the
most pulled tag unless `ref` names one), over the last `days` days; the most
pulled tags and the least recently pulled ones (never-pulled tags from the
registry's own list first); the recorder's health. Authorized as the repository
listing is (the registry's `tags/list`, with the caller's credentials).

Rendered on the server, SVG included (chart.py): no script runs, so nothing is
fetched from anywhere and the policy can forbid every script. The same reads as
the JSON routes, through `PullMetrics`, so the page and the routes agree.
"""

from __future__ import annotations

import datetime as dt
import time
from urllib.parse import parse_qsl

from pullstats_middleware.matchers import is_digest, validate_digest, validate_tag
from pullstats_middleware.metrics import PullMetrics
from pullstats_middleware.routes.chart import Point
from pullstats_middleware.routes.dashboard_page import (
    CONTENT_SECURITY_POLICY,
    ROWS,
    Dashboard,
    Series,
    render,
)
from pullstats_middleware.routes.history import MAX_DAYS
from pullstats_middleware.routes.http import Response, RouteError
from pullstats_middleware.routes.listing import registry_tags
from pullstats_middleware.routes.router import JsonSchema, RouteContext
from pullstats_middleware.store.order import TagOrder

DEFAULT_DAYS = 30
QUERY: dict[str, JsonSchema] = {  # for the OpenAPI document
    "days": {"type": "integer", "minimum": 1, "maximum": MAX_DAYS,
             "description": f"days shown, ending today; default {DEFAULT_DAYS}"},
    "ref": {"type": "string", "description": "the tag or digest charted on its own; "
            "default: the most pulled tag"},
}  # fmt: skip
_PARAMS = ("days", "ref")


def _query(query: str) -> tuple[int, str | None]:
    """`days` and `ref` (a tag or a digest); RouteError 400 saying what is wrong."""
    try:
        params = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)))
    except ValueError:
        raise RouteError(400, f"malformed query string {query!r}") from None
    unknown = sorted(set(params) - set(_PARAMS))
    if unknown:
        detail = f"unknown query parameter {unknown[0]!r}; this page takes days and ref"
        raise RouteError(400, detail)
    text = params.get("days", str(DEFAULT_DAYS))
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= MAX_DAYS):
        raise RouteError(400, f"days must be a number from 1 to {MAX_DAYS}, got {text!r}")
    ref = params.get("ref") or None  # the form's empty field: no choice
    if ref is not None:
        problem = validate_digest(ref) if ":" in ref else validate_tag(ref)
        if problem:
            raise RouteError(400, f"ref must be a tag or a digest: {problem}")
    return int(text), ref


def dashboard(context: RouteContext) -> Response:
    days, ref = _query(context.request.query)
    repository, metrics = context.args["repository"], context.metrics
    listed = registry_tags(context)
    top, _ = metrics.get_tag_page(repository, listed, TagOrder("tag_pull_count", True), ROWS)
    stale, _ = metrics.get_tag_page(repository, listed, TagOrder("last_tag_pull_date"), ROWS)
    end = dt.datetime.now(dt.timezone.utc).date()
    start = end - dt.timedelta(days=days - 1)
    chosen = ref is not None
    if ref is None and top and top[0]["tag_pull_count"] > 0:
        ref = top[0]["tag_name"]
    repository_series = reference_series = None
    if metrics.database is not None:
        history = metrics.get_repository_history(repository, start, end)
        repository_series = Series(
            [Point(d.date, d.pull_count, d.unique_pullers) for d in history.days],
            history.unique_pullers,
            sum(day.tag_pull_count for day in history.days),
        )
        if ref is not None:
            kind = "manifest" if is_digest(ref) else "tag"
            one = metrics.get_history(kind, repository, ref, start, end)
            points = [Point(d.date, d.pull_count, d.unique_pullers) for d in one.days]
            reference_series = Series(points, one.unique_pullers)
    page = Dashboard(
        repository=repository,
        days=days,
        start=start.isoformat(),
        end=end.isoformat(),
        repository_history=repository_series,
        reference=ref,
        chosen=chosen,
        reference_history=reference_series,
        top=top,
        stale=stale,
        health=metrics.health(),
        flush=_since_flush(metrics),
        generated=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
    )
    body = render(page)
    headers = [
        ("Content-Type", "text/html; charset=utf-8"),
        ("Content-Length", str(len(body))),
        ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
        ("X-Content-Type-Options", "nosniff"),
        ("Referrer-Policy", "no-referrer"),
        ("Cache-Control", "no-store"),  # live counts, and a caller's own authorization
    ]
    return Response(200, headers, body)


def _since_flush(metrics: PullMetrics) -> str:
    if metrics.database is None:
        return "no database"
    if metrics.flusher is None:
        return "flushed by a separate pullstats flush"
    last = metrics.flusher.last_success
    if last is None:
        return "not yet"
    return f"{max(0.0, time.time() - last):.1f}"
