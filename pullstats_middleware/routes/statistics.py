"""The statistics routes of a tag and of a manifest (docs/design.md, "HTTP routes").

Each route is one handler and one `Route` in `ROUTES`; the router does the
rest (matching, validation, authorization, errors), and routes/openapi.py
describes the table (each entry's `query`, `response` and `errors` say the rest).
"""

from __future__ import annotations

from collections.abc import Mapping

from pullstats_middleware.matchers import (
    is_digest,
    validate_digest,
    validate_repository,
    validate_tag,
)
from pullstats_middleware.routes import history, listing
from pullstats_middleware.routes.dashboard import QUERY as DASHBOARD_QUERY
from pullstats_middleware.routes.dashboard import dashboard
from pullstats_middleware.routes.history import manifest_history, repository_history, tag_history
from pullstats_middleware.routes.http import Probe, Response, json_response
from pullstats_middleware.routes.listing import repository_tags
from pullstats_middleware.routes.openapi import COUNT, DOCUMENT, OPENAPI_PATH, WHEN, openapi
from pullstats_middleware.routes.router import JsonSchema, Route, RouteContext

# What the manifest probe accepts, so the registry answers with the digest a
# client would pull (an index stays an index).
MANIFEST_ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
    ]
)


def manifest_head(args: Mapping[str, str]) -> Probe:
    """May the caller pull this manifest? The registry's HEAD answers, and names its digest."""
    return Probe("HEAD", f"/v2/{args['repository']}/manifests/{args['reference']}", MANIFEST_ACCEPT)


def tags_list(args: Mapping[str, str]) -> Probe:
    """May the caller list this repository's tags? For routes about a whole repository."""
    return Probe("GET", f"/v2/{args['repository']}/tags/list", "application/json")


def _answer(fields: dict[str, JsonSchema]) -> JsonSchema:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": list(fields),
        "properties": fields,
    }


# The seed's six tag fields: a listing row without last_push_date.
TAG_STATISTICS = _answer({k: v for k, v in listing.TAG_FIELDS.items() if k != "last_push_date"})
MANIFEST_STATISTICS = _answer(
    {
        "manifest_digest": {"type": "string"},
        "manifest_pull_count": COUNT,
        "last_manifest_pull_date": WHEN,
    }
)


def tag_statistics(context: RouteContext) -> Response:
    # What the tag points to now, when the registry said so, beats the digest of its last pull.
    current = None
    if context.probe is not None:
        header = context.probe.headers.get("docker-content-digest", "").strip()
        current = header if is_digest(header) else None
    args = context.args
    payload = context.metrics.get_tag_statistics(args["repository"], args["reference"], current)
    return json_response(200, payload)


def manifest_statistics(context: RouteContext) -> Response:
    args = context.args
    payload = context.metrics.get_manifest_statistics(args["repository"], args["reference"])
    return json_response(200, payload)


_REPOSITORY = "/api/v1/repository/<anypath:repository>"

ROUTES: tuple[Route, ...] = (
    Route(
        "tag",
        f"{_REPOSITORY}/tag/<segment:reference>/pull_statistics",
        tag_statistics,
        params={"repository": validate_repository, "reference": validate_tag},
        probe=manifest_head,
        summary="Pull statistics of one tag and of the manifest it points to",
        response=TAG_STATISTICS,
        errors=(503,),
    ),
    Route(
        "manifest",
        f"{_REPOSITORY}/manifest/<segment:reference>/pull_statistics",
        manifest_statistics,
        params={"repository": validate_repository, "reference": validate_digest},
        probe=manifest_head,
        summary="Pull statistics of one manifest, by digest",
        response=MANIFEST_STATISTICS,
        errors=(503,),
    ),
    Route(
        "repository",
        f"{_REPOSITORY}/pull_statistics",
        repository_tags,
        params={"repository": validate_repository},
        probe=tags_list,
        summary="Every tag of a repository with its statistics, never-pulled tags included",
        query=listing.QUERY,
        response=listing.LISTING,
        errors=(503,),
    ),
    Route(
        "tag_history",
        f"{_REPOSITORY}/tag/<segment:reference>/pull_statistics/history",
        tag_history,
        params={"repository": validate_repository, "reference": validate_tag},
        probe=manifest_head,
        summary="Pulls per UTC day of one tag (needs a database)",
        query=history.QUERY,
        response=history.answer_schema("tag_name"),
        errors=(501, 503),
    ),
    Route(
        "manifest_history",
        f"{_REPOSITORY}/manifest/<segment:reference>/pull_statistics/history",
        manifest_history,
        params={"repository": validate_repository, "reference": validate_digest},
        probe=manifest_head,
        summary="Pulls per UTC day of one manifest (needs a database)",
        query=history.QUERY,
        response=history.answer_schema("manifest_digest"),
        errors=(501, 503),
    ),
    # Public: it names no repository. Describes the table the router mounts.
    Route(
        "openapi",
        OPENAPI_PATH,
        openapi,
        summary="This API's OpenAPI 3.1 document",
        response=DOCUMENT,
    ),
    Route(
        "repository_history",
        f"{_REPOSITORY}/pull_statistics/history",
        repository_history,
        params={"repository": validate_repository},
        probe=tags_list,
        summary="Pulls per UTC day of a whole repository (needs a database)",
        query=history.QUERY,
        response=history.repository_answer_schema(),
        errors=(501, 503),
    ),
    Route(
        "dashboard",
        "/api/v1/pull_statistics/ui/<anypath:repository>",
        dashboard,
        params={"repository": validate_repository},
        probe=tags_list,
        summary="An HTML page of a repository's pulls per day, top and stale tags, and health",
        query=DASHBOARD_QUERY,
        response={"type": "string"},
        media_type="text/html",
        errors=(503,),
    ),
)
