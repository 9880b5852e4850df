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
from pullstats_middleware.routes.openapi import COUNT, DATE, WHEN
from pullstats_middleware.routes.router import JsonSchema, RouteContext
from pullstats_middleware.store.order import SORTS, TagOrder

DEFAULT_LIMIT, MAX_LIMIT = 100, 1000
# The query and the answer, for the OpenAPI document.
QUERY: dict[str, JsonSchema] = {
    "sort": {"enum": list(SORTS), "default": "last_pull_date"},
    "order": {"enum": ["asc", "desc"], "default": "asc"},
    "limit": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
    "cursor": {"type": "string", "description": "the next_cursor of the previous page"},
    "pulled_before": {**DATE, "description": "not pulled since that day (never pulled too)"},
    "pulled_since": {**DATE, "description": "pulled on or after that day"},
}
_PARAMS = set(QUERY)
TAG_FIELDS: dict[str, JsonSchema] = {  # the seed's six tag fields and last_push_date
    "tag_name": {"type": "string"},
    "tag_pull_count": COUNT,
    "last_tag_pull_date": WHEN,
    "current_manifest_digest": {"type": ["string", "null"]},
    "manifest_pull_count": COUNT,
    "last_manifest_pull_date": WHEN,
    "last_push_date": WHEN,
}
TAG_ROW: JsonSchema = {
    "type": "object",
    "additionalProperties": False,
    "required": list(TAG_FIELDS),
    "properties": TAG_FIELDS,
}
LISTING: JsonSchema = {
    "type": "object",
    "additionalProperties": False,
    "required": ["repository", "tags", "next_cursor"],
    "properties": {
        "repository": {"type": "string"},
        "tags": {"type": "array", "items": TAG_ROW},
        "next_cursor": {"type": ["string", "null"], "description": "null: the last page"},
    },
}


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


def _cursor(row: dict[str, Any], field: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([row[field], row["tag_name"]]).encode()).decode()


def _after(cursor: str, field: str) -> tuple[Any, str]:
    """The (value, name) a cursor holds; a value of the wrong type for `field` (which
    SQL could not compare) is as invalid as a cursor that is not JSON."""
    try:
        value, name = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        expected = int if field == "tag_pull_count" else str
        if not isinstance(name, str) or not (value is None or type(value) is expected):
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
    # isascii: str.isdigit and int() take other scripts' digits too ("٣"), no integer to JSON
    if not (limit_text.isascii() and limit_text.isdigit()) or not 1 <= int(limit_text) <= MAX_LIMIT:
        raise RouteError(400, f"limit must be a number from 1 to {MAX_LIMIT}, got {limit_text!r}")
    field = SORTS[sort]
    wanted = TagOrder(
        field,
        descending=order == "desc",
        after=_after(params["cursor"], field) if "cursor" in params else None,
        pulled_before=_date(params, "pulled_before"),
        pulled_since=_date(params, "pulled_since"),
    )
    listed = registry_tags(context)
    repository = context.args["repository"]
    page, more = context.metrics.get_tag_page(repository, listed, wanted, int(limit_text))
    payload = {
        "repository": repository,
        "tags": page,
        "next_cursor": _cursor(page[-1], field) if more else None,
    }
    return json_response(200, payload)


def _date(params: dict[str, str], name: str) -> str | None:
    return date_param(name, params[name]).isoformat() if name in params else None


def registry_tags(context: RouteContext) -> list[str]:
    if context.probe is None:  # PULL_METRICS_AUTH none or a policy: no list was asked for
        return []
    try:
        listed = json.loads(context.probe.body).get("tags") or []
    except (ValueError, AttributeError):
        raise RouteError(
            503, "the registry's tag list is not JSON", [("Retry-After", RETRY_AFTER)]
        ) from None
    return [tag for tag in listed if isinstance(tag, str)]
