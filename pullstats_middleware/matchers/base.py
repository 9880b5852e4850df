"""What a request names, as plain values, and the matcher protocol."""

from __future__ import annotations

from typing import NamedTuple, Protocol


class ManifestRequest(NamedTuple):
    """A request for `/v2/<repository>/manifests/<reference>`."""

    repository: str
    reference: str
    by_digest: bool


class StatsRequest(NamedTuple):
    """What a statistics request asks about, as a custom authorization policy sees it.

    `kind` is the route's name ("tag", "manifest", ...); `reference` the tag or
    digest, or "" for a route about a whole repository.
    """

    kind: str
    repository: str
    reference: str


class Matcher(Protocol):
    def match_manifest(self, path: str) -> ManifestRequest | None:
        """Return the manifest request `path` names, or None if it names none."""
        ...
