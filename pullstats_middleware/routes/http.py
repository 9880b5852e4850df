"""The plain values a statistics request is made of, and the JSON error shape.

Adapters translate environ/scope into a `Request`, run a route's `Probe` in
process and hand back its `ProbeAnswer`, and write the `Response` they get:
nothing here knows WSGI or ASGI.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any, NamedTuple

RETRY_AFTER = "5"  # seconds; how long a 503 asks the caller to wait

ERROR_TITLES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    500: "internal_error",
    501: "not_implemented",
    503: "service_unavailable",
}
ERROR_STATUSES = frozenset(ERROR_TITLES)
# The body of every error answer, as the OpenAPI document states it.
ERROR_SCHEMA = {
    "type": "object",
    "required": ["status", "title", "detail", "error_message"],
    "additionalProperties": False,
    "properties": {
        "status": {"type": "integer", "description": "the HTTP status, repeated"},
        "title": {"enum": [*ERROR_TITLES.values(), "error"]},
        "detail": {"type": "string", "description": "what is wrong, naming the value"},
        "error_message": {"type": "string", "description": "the same as detail (Quay's field)"},
    },
}


class Request(NamedTuple):
    method: str
    path: str  # relative to the server's mount point (SCRIPT_NAME, root_path)
    query: str  # the raw query string
    headers: Mapping[str, str]  # lower-case names
    client: str  # the peer address as the server reports it


class Response(NamedTuple):
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def status_line(self) -> str:
        """`200 OK`, as WSGI's start_response wants it."""
        try:
            return f"{self.status} {HTTPStatus(self.status).phrase}"
        except ValueError:
            return f"{self.status} Unknown"


class Probe(NamedTuple):
    """The request that asks the wrapped registry whether the caller may see a route's
    answer: sent in process with the caller's Authorization and Cookie headers."""

    method: str
    path: str  # relative to the server's mount point, the configured path prefix included
    accept: str


class ProbeAnswer(NamedTuple):
    status: int
    headers: Mapping[str, str]  # lower-case names
    body: bytes


class RouteError(Exception):
    """Raised by a handler: answer with this status and detail (Quay's error shape)."""

    def __init__(self, status: int, detail: str, headers: list[tuple[str, str]] | None = None):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or []


def json_response(
    status: int, payload: Any, headers: list[tuple[str, str]] | None = None
) -> Response:
    body = json.dumps(payload).encode()
    return Response(
        status,
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            *(headers or []),
        ],
        body,
    )


def error(status: int, detail: str, headers: list[tuple[str, str]] | None = None) -> Response:
    """Quay's API error shape."""
    payload = {
        "status": status,
        "title": ERROR_TITLES.get(status, "error"),
        "detail": detail,
        "error_message": detail,
    }
    return json_response(status, payload, headers)


def unavailable(detail: str) -> Response:
    return error(503, detail, [("Retry-After", RETRY_AFTER)])
