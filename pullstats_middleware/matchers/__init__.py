"""Request matchers: decide, from a method and a path alone, whether a request
is something the middleware cares about. Compiled once, no I/O."""

from pullstats_middleware.matchers.base import ManifestRequest, Matcher
from pullstats_middleware.matchers.oci import (
    DIGEST_RE,
    REPOSITORY_RE,
    TAG_RE,
    OCIMatcher,
    is_digest,
    validate_digest,
    validate_repository,
    validate_tag,
)
from pullstats_middleware.matchers.stats import StatsRequest, parse_stats_path

__all__ = [
    "DIGEST_RE",
    "REPOSITORY_RE",
    "TAG_RE",
    "ManifestRequest",
    "Matcher",
    "OCIMatcher",
    "StatsRequest",
    "is_digest",
    "parse_stats_path",
    "validate_digest",
    "validate_repository",
    "validate_tag",
]
