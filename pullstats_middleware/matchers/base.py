"""The matcher protocol: what an adapter asks of a path on every request."""

from __future__ import annotations

from typing import NamedTuple, Protocol


class ManifestRequest(NamedTuple):
    """A request for `/v2/<repository>/manifests/<reference>`."""

    repository: str
    reference: str
    by_digest: bool


class Matcher(Protocol):
    def match_manifest(self, path: str) -> ManifestRequest | None:
        """Return the manifest request `path` names, or None if it names none."""
        ...
