"""The OCI distribution-spec name grammar and the manifest-path matcher."""

from __future__ import annotations

import re

from pullstats_middleware.matchers.base import ManifestRequest

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
REPOSITORY_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
TAG_RE = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
DIGEST_RE = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")  # the spec's grammar
# What the product accepts of that grammar: the algorithms the OCI image spec
# registers, each with its fixed encoding. Anything else is no digest: not a pull,
# a 400 on the statistics routes, never a Redis key (so keys stay bounded).
REGISTERED_ALGORITHMS = {
    "sha256": re.compile(r"[a-f0-9]{64}"),
    "sha512": re.compile(r"[a-f0-9]{128}"),
    "blake3": re.compile(r"[a-f0-9]{64}"),
}
MAX_REPOSITORY_LENGTH = 255
MAX_DIGEST_LENGTH = len("sha512:") + 128
_MANIFESTS = "/manifests/"


def is_digest(reference: str) -> bool:
    """True when `reference` is a digest of a registered algorithm (tags cannot contain ':')."""
    algorithm, _, encoded = reference.partition(":")
    pattern = REGISTERED_ALGORITHMS.get(algorithm)
    return pattern is not None and pattern.fullmatch(encoded) is not None


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
        shown = digest if len(digest) <= 80 else digest[:77] + "..."
        return (
            f"invalid digest {shown!r}: expected sha256: or blake3: with 64, "
            "or sha512: with 128 lowercase hex digits"
        )
    return None


class OCIMatcher:
    """Matches `[prefix]/v2/<repository>/manifests/<reference>`.

    The repository may itself contain a component named `manifests`, so the
    reference is whatever follows the *last* `/manifests/`.
    """

    __slots__ = ("_cache_size", "_head", "known")

    def __init__(self, prefix: str = "", cache_size: int = 8192) -> None:
        self._head = prefix.rstrip("/") + "/v2/"
        # A registry serves the same few paths again and again (one image, many
        # nodes); the regexes cost microseconds, a cache hit tens of nanoseconds.
        # Only valid paths are cached, and a valid path is at most a few hundred
        # characters, so hostile paths cannot make the cache hold more than ~5 MB.
        # `known`: the cache, for callers that look a path up before calling.
        self.known: dict[str, ManifestRequest] = {}
        self._cache_size = cache_size

    def match_manifest(self, path: str) -> ManifestRequest | None:
        cached = self.known.get(path)
        if cached is not None:
            return cached
        request = self._match(path)
        if request is not None:
            if len(self.known) >= self._cache_size:
                self.known.clear()  # safe under concurrent readers, unlike evicting one
            self.known[path] = request
        return request

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
