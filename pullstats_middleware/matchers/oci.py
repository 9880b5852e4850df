"""The OCI distribution-spec name grammar and the manifest-path matcher."""

from __future__ import annotations

import re
from functools import lru_cache

from pullstats_middleware.matchers.base import ManifestRequest

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
REPOSITORY_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
TAG_RE = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
DIGEST_RE = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")
# Registered algorithms have a fixed encoding; anything else only needs the grammar.
_KNOWN_ALGORITHMS = {
    "sha256": re.compile(r"[a-f0-9]{64}"),
    "sha512": re.compile(r"[a-f0-9]{128}"),
}
MAX_REPOSITORY_LENGTH = 255
_MANIFESTS = "/manifests/"


def is_digest(reference: str) -> bool:
    """True when `reference` is a valid digest (tags cannot contain ':')."""
    if DIGEST_RE.fullmatch(reference) is None:
        return False
    algorithm, _, encoded = reference.partition(":")
    known = _KNOWN_ALGORITHMS.get(algorithm)
    return known is None or known.fullmatch(encoded) is not None


def validate_repository(name: str) -> str | None:
    """Return why `name` is not a valid repository name, or None if it is."""
    if len(name) > MAX_REPOSITORY_LENGTH:
        return f"repository name is {len(name)} characters long; at most 255 are allowed"
    if REPOSITORY_RE.fullmatch(name) is None:
        return (
            f"invalid repository name {name!r}: components are lowercase letters and digits "
            "separated by '.', '_', '__' or '-', joined by '/'"
        )
    return None


def validate_tag(tag: str) -> str | None:
    """Return why `tag` is not a valid tag, or None if it is."""
    if TAG_RE.fullmatch(tag) is None:
        return f"invalid tag {tag!r}: expected [a-zA-Z0-9_][a-zA-Z0-9._-]{{0,127}}"
    return None


def validate_digest(digest: str) -> str | None:
    """Return why `digest` is not a valid digest, or None if it is."""
    if not is_digest(digest):
        return (
            f"invalid digest {digest!r}: expected algorithm:encoded, "
            "sha256 with 64 and sha512 with 128 lowercase hex digits"
        )
    return None


class OCIMatcher:
    """Matches `[prefix]/v2/<repository>/manifests/<reference>`.

    The repository may itself contain a component named `manifests`, so the
    reference is whatever follows the *last* `/manifests/`.
    """

    __slots__ = ("_head", "match_manifest")

    def __init__(self, prefix: str = "", cache_size: int = 8192) -> None:
        self._head = prefix.rstrip("/") + "/v2/"
        # A registry serves the same few paths again and again (one image, many
        # nodes); the regexes cost microseconds, a cache hit tens of nanoseconds.
        self.match_manifest = lru_cache(maxsize=cache_size)(self._match)

    def _match(self, path: str) -> ManifestRequest | None:
        head = self._head
        if not path.startswith(head):
            return None
        cut = path.rfind(_MANIFESTS)
        if cut < len(head):
            return None
        repository = path[len(head) : cut]
        reference = path[cut + len(_MANIFESTS) :]
        if len(repository) > MAX_REPOSITORY_LENGTH or REPOSITORY_RE.fullmatch(repository) is None:
            return None
        if TAG_RE.fullmatch(reference) is not None:
            return ManifestRequest(repository, reference, False)
        if is_digest(reference):
            return ManifestRequest(repository, reference, True)
        return None
