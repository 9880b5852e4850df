"""The statistics routes (DESIGN §6), framework-neutral.

An adapter calls `route()` for a request; when it gets a `StatsRequest` back it
runs the authorization probe its own way (in-process WSGI or ASGI call),
hands the probe's answer to `authorize()`, then calls `answer()` (store I/O).
Every outcome is an `ApiResponse`: status, headers, JSON body.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from pullstats_middleware.matchers import is_digest
from pullstats_middleware.matchers.stats import StatsPathError, StatsRequest, parse_stats_path
from pullstats_middleware.metrics import PullMetrics
from pullstats_middleware.store import StoreDataError

log = logging.getLogger("pullstats_middleware")

RETRY_AFTER = "5"  # seconds; how long a 503 asks the caller to wait

_TITLES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    500: "internal_error",
    503: "service_unavailable",
}

# A custom policy gets the request and the caller's headers (lower-case
# names) and returns True (allow), False (403) or an HTTP status to answer.
AuthPolicy = Callable[[StatsRequest, Mapping[str, str]], "bool | int"]


class ApiResponse(NamedTuple):
    status: int
    headers: list[tuple[str, str]]
    body: bytes


def json_response(
    status: int, payload: Any, headers: list[tuple[str, str]] | None = None
) -> ApiResponse:
    body = json.dumps(payload).encode()
    return ApiResponse(
        status,
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            *(headers or []),
        ],
        body,
    )


def error(status: int, detail: str, headers: list[tuple[str, str]] | None = None) -> ApiResponse:
    """Quay's API error shape."""
    payload = {
        "status": status,
        "title": _TITLES.get(status, "error"),
        "detail": detail,
        "error_message": detail,
    }
    return json_response(status, payload, headers)


def route(method: str, path: str) -> StatsRequest | ApiResponse | None:
    """None: not a statistics route, the wrapped app serves it."""
    try:
        request = parse_stats_path(path)
    except StatsPathError as exc:
        return error(400, str(exc))
    if request is None:
        return None
    if method != "GET":
        return error(405, f"method {method} is not allowed here; use GET", [("Allow", "GET")])
    return request


def probe_path(request: StatsRequest) -> str:
    """The manifest HEAD that asks the registry whether the caller may see `request`."""
    return f"/v2/{request.repository}/manifests/{request.reference}"


class Authorization(NamedTuple):
    denied: ApiResponse | None
    current_digest: str | None = None


def judge_probe(status: int | None, headers: Mapping[str, str]) -> Authorization:
    """Turn the registry's answer to the probe into allow/deny (`headers`: lower-case
    names); `status` None: the registry raised instead of answering."""
    if status is None:
        return Authorization(
            error(
                503, "the registry failed the authorization check", [("Retry-After", RETRY_AFTER)]
            )
        )
    if 200 <= status < 300:
        digest = headers.get("docker-content-digest", "").strip()
        return Authorization(None, digest if is_digest(digest) else None)
    if status in (401, 403):
        passed = (
            [("WWW-Authenticate", headers["www-authenticate"])]
            if "www-authenticate" in headers
            else []
        )
        reason = "authentication required" if status == 401 else "access denied"
        return Authorization(error(status, f"{reason} by the registry", passed))
    if status == 404:
        return Authorization(error(404, "repository, tag or manifest not found in the registry"))
    return Authorization(
        error(
            503,
            f"the registry answered the authorization check with status {status}",
            [("Retry-After", RETRY_AFTER)],
        )
    )


def judge_policy(
    policy: AuthPolicy, request: StatsRequest, headers: Mapping[str, str]
) -> Authorization:
    try:
        verdict = policy(request, headers)
    except Exception:
        log.exception("pull statistics: the authorization policy raised")
        return Authorization(error(500, "the authorization policy failed"))
    if verdict is True:
        return Authorization(None)
    if verdict is False:
        return Authorization(error(403, "access denied"))
    if isinstance(verdict, int) and 200 <= verdict < 300:
        return Authorization(None)
    if isinstance(verdict, int) and verdict in _TITLES:
        return Authorization(error(verdict, "access denied by the authorization policy"))
    log.error("pull statistics: the authorization policy returned %r", verdict)
    return Authorization(error(500, "the authorization policy returned an invalid verdict"))


def answer(metrics: PullMetrics, request: StatsRequest, current_digest: str | None) -> ApiResponse:
    """Read the store; a store that cannot be read is a 503, never a made-up zero."""
    try:
        if request.kind == "tag":
            payload = metrics.get_tag_statistics(
                request.repository, request.reference, current_digest
            )
        else:
            payload = metrics.get_manifest_statistics(request.repository, request.reference)
    except StoreDataError as exc:
        log.error("pull statistics: %s", exc)
        return error(500, f"stored statistics are malformed: {exc}")
    except Exception as exc:
        log.warning(
            "pull statistics: store unavailable for reading (%s: %s)", type(exc).__name__, exc
        )
        return error(
            503, "pull statistics are temporarily unavailable", [("Retry-After", RETRY_AFTER)]
        )
    return json_response(200, payload)
