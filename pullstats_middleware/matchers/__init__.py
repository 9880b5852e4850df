"""Request matchers and the OCI name grammar: decide, from a path alone, whether a
request names a manifest, and whether a name is valid. Compiled once, no I/O."""

from pullstats_middleware.matchers.base import ManifestRequest, Matcher, StatsRequest
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

__all__ = [
    "DIGEST_RE",
    "REPOSITORY_RE",
    "TAG_RE",
    "ManifestRequest",
    "Matcher",
    "OCIMatcher",
    "StatsRequest",
    "is_digest",
    "validate_digest",
    "validate_repository",
    "validate_tag",
]
