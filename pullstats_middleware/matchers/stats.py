"""Paths of the statistics routes the middleware mounts (DESIGN §6)."""

from __future__ import annotations

from typing import NamedTuple

from pullstats_middleware.matchers.oci import validate_digest, validate_repository, validate_tag

STATS_ROOT = "/api/v1/repository/"
_SUFFIX = "/pull_statistics"


class StatsRequest(NamedTuple):
    """`kind` is "tag" or "manifest"; `reference` the tag or the digest."""

    kind: str
    repository: str
    reference: str


class StatsPathError(ValueError):
    """The path is a statistics route, but a name in it is malformed."""


def parse_stats_path(path: str) -> StatsRequest | None:
    """Parse `/api/v1/repository/<repo>/{tag|manifest}/<ref>/pull_statistics`.

    Returns None when the path is not a statistics route at all (the request
    belongs to the wrapped app); raises StatsPathError when it is one but a
    name is malformed. The reference is the last segment and its kind the one
    before it, so a repository may contain `tag` or `manifest` components.
    """
    if not path.startswith(STATS_ROOT) or not path.endswith(_SUFFIX):
        return None
    segments = path[len(STATS_ROOT) : -len(_SUFFIX)].split("/")
    if len(segments) < 3 or segments[-2] not in ("tag", "manifest"):
        return None
    kind, reference = segments[-2], segments[-1]
    repository = "/".join(segments[:-2])
    problem = validate_repository(repository) or (
        validate_tag(reference) if kind == "tag" else validate_digest(reference)
    )
    if problem:
        raise StatsPathError(problem)
    return StatsRequest(kind, repository, reference)
