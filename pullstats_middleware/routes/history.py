"""Pulls per UTC day of a tag, a manifest or a whole repository: the history routes.

`?start=YYYY-MM-DD&end=YYYY-MM-DD`, both optional (the last 30 days to today),
at most 400 days; one entry per day, zero-filled. Unique pullers are HyperLogLog
estimates (about 0.8 % standard error; exact in practice below a few hundred),
per day and over the range (a puller on many days counts once). A repository's
pulls of a day are its manifest GETs (by tag or by digest; a multi-arch pull is the
index and the platform's manifest), with its pulls by tag apart.
"""

from __future__ import annotations

import datetime as dt
import re
from urllib.parse import parse_qsl

from pullstats_middleware.metrics import HistoryUnavailable
from pullstats_middleware.routes.http import Response, RouteError, json_response
from pullstats_middleware.routes.openapi import COUNT, DATE
from pullstats_middleware.routes.router import JsonSchema, RouteContext

DEFAULT_DAYS = 30
MAX_DAYS = 400
QUERY: dict[str, JsonSchema] = {  # for the OpenAPI document
    "start": {**DATE, "description": f"the first day; default: {DEFAULT_DAYS - 1} days before end"},
    "end": {**DATE, "description": f"the last day, at most {MAX_DAYS} after start; default: today"},
}


def answer_schema(field: str) -> JsonSchema:
    """The history of a tag (`field` tag_name) or a manifest (manifest_digest)."""
    day = {
        "type": "object",
        "additionalProperties": False,
        "required": ["date", "pull_count", "unique_pullers"],
        "properties": {"date": DATE, "pull_count": COUNT, "unique_pullers": COUNT},
    }
    return {
        "type": "object",
        "additionalProperties": False,
        "required": [field, "start", "end", "unique_pullers", "days"],
        "properties": {
            field: {"type": "string"},
            "start": DATE,
            "end": DATE,
            "unique_pullers": {**COUNT, "description": "over the range, estimated"},
            "days": {"type": "array", "items": day},
        },
    }


def repository_answer_schema() -> JsonSchema:
    """The history of a whole repository: every manifest pull, and those by tag."""
    day = {
        "type": "object",
        "additionalProperties": False,
        "required": ["date", "pull_count", "tag_pull_count", "unique_pullers"],
        "properties": {"date": DATE, "pull_count": COUNT, "tag_pull_count": COUNT,
                       "unique_pullers": COUNT},
    }  # fmt: skip
    schema = answer_schema("repository")
    schema["properties"]["days"] = {"type": "array", "items": day}
    return schema


def date_range(query: str) -> tuple[dt.date, dt.date]:
    """`start` and `end` from the query string; RouteError 400 saying what is wrong."""
    try:
        params = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)))
    except ValueError:
        raise RouteError(400, f"malformed query string {query!r}") from None
    unknown = sorted(set(params) - {"start", "end"})
    if unknown:
        raise RouteError(
            400, f"unknown query parameter {unknown[0]!r}; this route takes start and end"
        )
    end = (
        date_param("end", params["end"])
        if "end" in params
        else dt.datetime.now(dt.timezone.utc).date()
    )
    if "start" in params:
        start = date_param("start", params["start"])
    else:  # the default range, cut at the first representable day (end=0001-01-01)
        start = end - dt.timedelta(days=min(DEFAULT_DAYS - 1, (end - dt.date.min).days))
    if start > end:
        raise RouteError(400, f"start {start} is after end {end}")
    if (end - start).days + 1 > MAX_DAYS:
        raise RouteError(
            400, f"at most {MAX_DAYS} days per request, asked {(end - start).days + 1}"
        )
    return start, end


# What the document says (RFC 3339 full-date); fromisoformat also takes week dates (2026-W01-1).
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def date_param(name: str, value: str) -> dt.date:
    try:
        if _DATE.fullmatch(value) is None:
            raise ValueError(value)
        return dt.date.fromisoformat(value)
    except ValueError:
        raise RouteError(400, f"{name} must be a date YYYY-MM-DD, got {value!r}") from None


def _history(context: RouteContext, kind: str, field: str) -> Response:
    start, end = date_range(context.request.query)
    repository, name = context.args["repository"], context.args["reference"]
    try:
        history = context.metrics.get_history(kind, repository, name, start, end)
    except HistoryUnavailable as exc:
        raise RouteError(501, str(exc)) from None
    return json_response(
        200,
        {
            field: name,
            "start": start.isoformat(),
            "end": end.isoformat(),
            "unique_pullers": history.unique_pullers,
            "days": [
                {"date": day, "pull_count": count, "unique_pullers": pullers}
                for day, count, pullers in history.days
            ],
        },
    )


def tag_history(context: RouteContext) -> Response:
    return _history(context, "tag", "tag_name")


def manifest_history(context: RouteContext) -> Response:
    return _history(context, "manifest", "manifest_digest")


def repository_history(context: RouteContext) -> Response:
    start, end = date_range(context.request.query)
    repository = context.args["repository"]
    try:
        history = context.metrics.get_repository_history(repository, start, end)
    except HistoryUnavailable as exc:
        raise RouteError(501, str(exc)) from None
    return json_response(
        200,
        {
            "repository": repository,
            "start": start.isoformat(),
            "end": end.isoformat(),
            "unique_pullers": history.unique_pullers,
            "days": [
                {
                    "date": day,
                    "pull_count": count,
                    "tag_pull_count": by_tag,
                    "unique_pullers": pullers,
                }
                for day, count, by_tag, pullers in history.days
            ],
        },
    )
