"""Who may read a route's answer: the registry's own answer to the probe, or a policy.

With `PULL_METRICS_AUTH=registry` (the default) the registry decides, through
the probe the route names; `none` allows everyone; a callable decides itself.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from pullstats_middleware.config import AuthPolicy
from pullstats_middleware.matchers import StatsRequest
from pullstats_middleware.routes.http import (
    ERROR_STATUSES,
    ProbeAnswer,
    Response,
    error,
    unavailable,
)

log = logging.getLogger("pullstats_middleware")


def judge_probe(answer: ProbeAnswer | None) -> Response | None:
    """None: allowed. `answer` None: the registry raised instead of answering."""
    if answer is None:
        return unavailable("the registry failed the authorization check")
    status = answer.status
    if 200 <= status < 300:
        return None
    if status in (401, 403):
        challenge = answer.headers.get("www-authenticate")
        passed = [("WWW-Authenticate", challenge)] if challenge is not None else []
        reason = "authentication required" if status == 401 else "access denied"
        return error(status, f"{reason} by the registry", passed)
    if status == 404:
        return error(404, "repository, tag or manifest not found in the registry")
    return unavailable(f"the registry answered the authorization check with status {status}")


def judge_policy(
    policy: AuthPolicy, request: StatsRequest, headers: Mapping[str, str]
) -> Response | None:
    """None: allowed."""
    try:
        verdict = policy(request, headers)
    except Exception:
        log.exception("pull statistics: the authorization policy raised")
        return error(500, "the authorization policy failed")
    if verdict is True:
        return None
    if verdict is False:
        return error(403, "access denied")
    if isinstance(verdict, int) and 200 <= verdict < 300:
        return None
    if isinstance(verdict, int) and verdict in ERROR_STATUSES:
        return error(verdict, "access denied by the authorization policy")
    log.error("pull statistics: the authorization policy returned %r", verdict)
    return error(500, "the authorization policy returned an invalid verdict")
