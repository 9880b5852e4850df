"""What every store holds and how the recorder hands it work.

A `Batch` is the unit of exactly-once delivery: the recorder gives it an id
once and re-sends it under that same id until the store acknowledges it, so
a store that already applied it (a reply lost in transit) must treat the
re-send as a no-op.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol


def iso_date(ts: float) -> str:
    """`2024-09-08T10:15:00Z`: fixed width, so string order is time order."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


class TagDelta(NamedTuple):
    repository: str
    tag: str
    pulls: int
    date: str
    digest: str
    clients: tuple[str, ...] = ()  # raw identities that pulled: the stores hash them


class ManifestDelta(NamedTuple):
    repository: str
    digest: str
    pulls: int
    date: str
    clients: tuple[str, ...] = ()


class Resolution(NamedTuple):
    """A HEAD by tag that resolved `tag` to `digest` for one client.

    `client` is the raw client identity; the Redis store writes only its hash.
    """

    client: str
    repository: str
    tag: str
    digest: str
    ts: float


class DigestFetch(NamedTuple):
    """A completed GET by digest, which a prior resolution may make a tag pull."""

    client: str
    repository: str
    digest: str
    ts: float


class Push(NamedTuple):
    """A manifest PUT by tag the registry answered 201: the tag now names `digest`."""

    repository: str
    tag: str
    date: str
    digest: str


class IndexChildren(NamedTuple):
    """An image index (or manifest list) and the manifests it lists, as seen in its body:
    a HEAD that resolves a tag to the index also pairs with a GET of any of them
    (`docker pull --platform` with the index cached fetches only the child)."""

    repository: str
    digest: str
    children: tuple[str, ...]


@dataclass(slots=True)
class Batch:
    id: str
    origin: str = ""  # the recording process (pairing allows clock skew only between two)
    tags: list[TagDelta] = field(default_factory=list)
    manifests: list[ManifestDelta] = field(default_factory=list)
    pushes: list[Push] = field(default_factory=list)
    indexes: list[IndexChildren] = field(default_factory=list)  # applied before the events
    # The two kinds of attribution event, in the order they happened in one process.
    attribution_events: list[Resolution | DigestFetch] = field(default_factory=list)

    def __len__(self) -> int:
        return (
            len(self.tags)
            + len(self.manifests)
            + len(self.pushes)
            + len(self.indexes)
            + len(self.attribution_events)
        )


def cut_batches(
    tags: dict[tuple[str, str, int], list[Any]],
    manifests: dict[tuple[str, str, int], list[Any]],
    events: list[Resolution | DigestFetch],
    size: int,
    origin: str = "",
    indexes: dict[tuple[str, str], tuple[str, ...]] | None = None,
    pushes: dict[tuple[str, str], tuple[float, str]] | None = None,
) -> list[Batch]:
    """The recorder's buffer (`[count, ts, digest, clients]` per tag, `[count, ts,
    clients]` per manifest; `clients` may be absent or None), cut into batches of at
    most `size` keys, each with a new id."""
    batches = [Batch(uuid.uuid4().hex, origin)]

    def room() -> Batch:
        if len(batches[-1]) >= size:
            batches.append(Batch(uuid.uuid4().hex, origin))
        return batches[-1]

    for (repo, tag, _day), (count, ts, digest, *clients) in tags.items():
        seen = tuple(clients[0] or ()) if clients else ()
        room().tags.append(TagDelta(repo, tag, count, iso_date(ts), digest, seen))
    for (repo, digest, _day), (count, ts, *clients) in manifests.items():
        seen = tuple(clients[0] or ()) if clients else ()
        room().manifests.append(ManifestDelta(repo, digest, int(count), iso_date(ts), seen))
    for (repo, tag), (ts, digest) in (pushes or {}).items():
        room().pushes.append(Push(repo, tag, iso_date(ts), digest))
    for (repo, digest), children in (indexes or {}).items():
        room().indexes.append(IndexChildren(repo, digest, children))
    for event in events:
        room().attribution_events.append(event)
    return [batch for batch in batches if len(batch)]


class TagRecord(NamedTuple):
    pull_count: int
    last_pull_date: str | None
    current_manifest_digest: str | None
    last_push_date: str | None = None


class ManifestRecord(NamedTuple):
    pull_count: int
    last_pull_date: str | None


NEVER_PULLED_TAG = TagRecord(0, None, None)
NEVER_PULLED_MANIFEST = ManifestRecord(0, None)


class StoreDataError(RuntimeError):
    """A value in the store is not what the schema says (names the key and field)."""


class StoreUnavailable(RuntimeError):
    """The store cannot be read right now (unreachable, timed out); worth a retry."""


class Store(Protocol):
    def apply(self, batch: Batch, *, window: float, skew: float) -> list[str]:
        """Apply `batch` once; return the keys skipped because they hold foreign data.

        A GET pairs with a HEAD by the same client within `window` seconds after it;
        recorded by different processes, also up to `skew` seconds before it."""
        ...

    def read_tag(self, repository: str, tag: str) -> TagRecord: ...

    def read_manifest(self, repository: str, digest: str) -> ManifestRecord: ...

    def close(self) -> None: ...
