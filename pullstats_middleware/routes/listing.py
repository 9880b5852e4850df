"""The tags of one repository, with their statistics: what a retention job reads.

`GET /api/v1/repository/{repository}/pull_statistics?sort=…&order=…&limit=…&cursor=…
&pulled_before=YYYY-MM-DD&pulled_since=YYYY-MM-DD`. Tags the registry lists that were
never pulled are included (zero counts, null dates): the route's probe is the
registry's own `GET /v2/{repository}/tags/list`, with the caller's credentials.
Pages are cut by an opaque cursor naming the last row's place in the order, so
paging on while counts change never repeats a row whose sort key did not move.
"""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import parse_qsl

from pullstats_middleware.routes.history import date_param
from pullstats_middleware.routes.http import RETRY_AFTER, Response, RouteError, json_response
from pullstats_middleware.routes.router import RouteContext

SORTS = {
    "pull_count": "tag_pull_count",
    "last_pull_date": "last_tag_pull_date",
    "last_push_date": "last_push_date",
    "tag_name": "tag_name",
}
DEFAULT_LIMIT, MAX_LIMIT = 100, 1000
_PARAMS = {"sort", "order", "limit", "cursor", "pulled_before", "pulled_since"}


def _query(query: str) -> dict[str, str]:
    try:
        params = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)))
    except ValueError:
        raise RouteError(400, f"malformed query string {query!r}") from None
    unknown = sorted(set(params) - _PARAMS)
    if unknown:
        raise RouteError(400, f"unknown query parameter {unknown[0]!r}; known: "
                              f"{', '.join(sorted(_PARAMS))}")  # fmt: skip
    return params


def _sort_key(field: str, descending: bool) -> Any:
    """Rows in order, ties by tag name; null dates first ascending (never pulled is the
    least recently pulled), last descending."""

    def key(row: dict[str, Any]) -> tuple[Any, ...]:
        value = row[field]
        present = value is not None
        if descending:
            return (present, value if present else "", _Reverse(row["tag_name"]))
        return (present, value if present else "", row["tag_name"])

    return key


class _Reverse:
    """Sorts a tie-breaking name ascending inside a descending sort."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __lt__(self, other: _Reverse) -> bool:
        return self.name > other.name

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Reverse) and self.name == other.name


def _cursor(row: dict[str, Any], field: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([row[field], row["tag_name"]]).encode()).decode()


def _after(cursor: str) -> tuple[Any, str]:
    try:
        value, name = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        if not isinstance(name, str):
            raise ValueError(name)
        return value, name
    except (ValueError, TypeError):
        raise RouteError(400, f"invalid cursor {cursor!r}: pass back a next_cursor") from None


def repository_tags(context: RouteContext) -> Response:
    params = _query(context.request.query)
    sort = params.get("sort", "last_pull_date")
    if sort not in SORTS:
        raise RouteError(400, f"sort must be one of {', '.join(SORTS)}, got {sort!r}")
    order = params.get("order", "asc")
    if order not in ("asc", "desc"):
        raise RouteError(400, f"order must be asc or desc, got {order!r}")
    limit_text = params.get("limit", str(DEFAULT_LIMIT))
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= MAX_LIMIT:
        raise RouteError(400, f"limit must be a number from 1 to {MAX_LIMIT}, got {limit_text!r}")
    registry_tags = _registry_tags(context)
    rows = context.metrics.get_tags(context.args["repository"], registry_tags)
    if "pulled_before" in params:
        before = date_param("pulled_before", params["pulled_before"]).isoformat()
        rows = [r for r in rows if (r["last_tag_pull_date"] or "") < before]
    if "pulled_since" in params:
        since = date_param("pulled_since", params["pulled_since"]).isoformat()
        rows = [r for r in rows if (r["last_tag_pull_date"] or "") >= since]
    field, descending = SORTS[sort], order == "desc"
    key = _sort_key(field, descending)
    rows.sort(key=key, reverse=descending)
    if "cursor" in params:
        value, name = _after(params["cursor"])
        mark = key({field: value, "tag_name": name})
        rows = [r for r in rows if (key(r) < mark if descending else key(r) > mark)]
    page = rows[: int(limit_text)]
    more = len(rows) > len(page)
    payload = {
        "repository": context.args["repository"],
        "tags": page,
        "next_cursor": _cursor(page[-1], field) if more else None,
    }
    return json_response(200, payload)


def _registry_tags(context: RouteContext) -> list[str]:
    if context.probe is None:  # PULL_METRICS_AUTH none or a policy: no list was asked for
        return []
    try:
        listed = json.loads(context.probe.body).get("tags") or []
    except (ValueError, AttributeError):
        raise RouteError(
            503, "the registry's tag list is not JSON", [("Retry-After", RETRY_AFTER)]
        ) from None
    return [tag for tag in listed if isinstance(tag, str)]
