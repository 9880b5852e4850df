"""The bounded, coalescing buffer: everything the request thread touches.

The request thread only ever touches dicts under a lock (docs/design.md,
"Reliability"): repeated pulls of one key are one counter, so the buffer's size
is the number of distinct keys (per UTC day), capped. One cap covers the
buffer and the batches waiting for the store; past it, new keys are dropped
and counted, known keys keep counting. `Recorder` (recorder.py) adds the
thread that empties it.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any

from pullstats_middleware.store.base import DigestFetch, Resolution

log = logging.getLogger("pullstats_middleware")

_WARN_EVERY = 60.0  # seconds between repeated warnings of one kind


class PullBuffer:
    """The request thread's side of the recorder. Subclasses start the thread that
    empties it (`_start`) the first time something is added."""

    max_keys: int
    _thread: threading.Thread | None
    _pending_keys: int  # keys in batches waiting for the store: under the same cap

    def __init__(self, max_keys: int) -> None:
        self.max_keys = max_keys
        self.dropped = 0  # pulls refused because the buffer was full
        self.dropped_events = 0  # attribution events refused because the buffer was full
        self.excluded = 0  # pulls by excluded clients (scanners, robots): not counted
        self._last_warning: dict[str, float] = {}

    def _reset_buffer(self) -> None:
        self._lock = threading.Lock()
        # (UTC day, its first second, the next's): a pull's day, read by two comparisons.
        self._today = (0, 0.0, 0.0)
        # Keyed by UTC day too, so a count never straddles midnight: daily history
        # stays exact however long the store is away.
        # -> [count, ts, digest, clients]; clients: the identities that pulled (a set,
        # for unique pullers per day), or None when none was given
        self._tags: dict[tuple[str, str, int], list[Any]] = {}
        self._manifests: dict[tuple[str, str, int], list[Any]] = {}  # -> [count, ts, clients]
        # Attribution events per (client, repository, digest), in order, as [tag, ts]:
        # the tag a HEAD resolved, or None for a GET by digest (_take_buffer builds the
        # store's events). Runs of repeats fold: the store pairs a GET with a waiting
        # HEAD, else keeps the *first* unpaired GET, and keeps the *last* HEAD; so a
        # third GET in a row is not added, and a HEAD after two of the same tag takes
        # the second's place (its time moves on, in place).
        self._events: dict[tuple[str, str, str], list[list[Any]]] = {}
        self._event_count = 0
        self._indexes: dict[tuple[str, str], tuple[str, ...]] = {}  # index -> its children
        self._pushes: dict[tuple[str, str], tuple[float, str]] = {}  # tag -> (ts, digest)
        # Which process recorded an event: within one process the order of a HEAD
        # and a GET is known exactly, so the store allows clock skew only between two.
        self._origin = uuid.uuid4().hex[:16]

    def _start(self) -> None:
        raise NotImplementedError

    # The adds below run for every manifest pull, on the request's thread: each takes
    # the lock once, and the client joins its entry's set inline (created on the first
    # client only: a million keys of empty sets would double the buffer's memory). In
    # instructions (valgrind), a Python call here costs about 1,000, `with lock:` twice
    # acquire() and release() in try/finally, `int(now // 86400)` twice the _today check.

    def add_tag_pull(
        self, repository: str, tag: str, digest: str, client: str | None = None
    ) -> None:
        now = _now()
        day, first, following = self._today
        if not first <= now < following:
            day = self._new_day(now)
        tag_key = (repository, tag, day)
        manifest_key = (repository, digest, day)
        lock = self._lock
        lock.acquire()
        try:
            entry = self._tags.get(tag_key)
            if entry is not None:
                entry[0] += 1
                entry[1] = now
                entry[2] = digest
                if client is not None:
                    if entry[3] is None:
                        entry[3] = {client}
                    else:
                        entry[3].add(client)
            elif self._full():
                self._drop()
                return
            else:
                self._tags[tag_key] = [1, now, digest, None if client is None else {client}]
            # The manifest's count, as in add_manifest_pull(): a tag pull counts both.
            counter = self._manifests.get(manifest_key)
            if counter is not None:
                counter[0] += 1
                counter[1] = now
                if client is not None:
                    if counter[2] is None:
                        counter[2] = {client}
                    else:
                        counter[2].add(client)
            elif self._full():
                self._drop()
            else:
                self._manifests[manifest_key] = [1, now, None if client is None else {client}]
        finally:
            lock.release()
        if self._thread is None:
            self._start()

    def _new_day(self, now: float) -> int:
        """The UTC day of `now`, which becomes the one the adds compare with."""
        day = int(now // 86400)
        self._today = (day, day * 86400.0, (day + 1) * 86400.0)
        return day

    def add_manifest_pull(
        self, repository: str, digest: str, now: float | None = None, client: str | None = None
    ) -> None:
        now = _now() if now is None else now
        key = (repository, digest, int(now // 86400))
        with self._lock:
            counter = self._manifests.get(key)
            if counter is not None:
                counter[0] += 1
                if now > counter[1]:
                    counter[1] = now
                if client is not None:
                    if counter[2] is None:
                        counter[2] = {client}
                    else:
                        counter[2].add(client)
            elif self._full():
                self._drop()
            else:
                self._manifests[key] = [1, now, None if client is None else {client}]
        if self._thread is None:
            self._start()

    def add_attribution_event(self, event: Resolution | DigestFetch) -> None:
        """A HEAD by tag or a GET by digest, at the time the event names."""
        if isinstance(event, DigestFetch):
            self.add_digest_fetch(event.client, event.repository, event.digest, event.ts)
        else:
            self.add_resolution(event.client, event.repository, event.tag, event.digest, event.ts)

    def add_resolution(
        self, client: str, repository: str, tag: str, digest: str, now: float | None = None
    ) -> None:
        """A HEAD of a manifest by tag that resolved `tag` to `digest` (containerd sends
        one before every pull): half of a tag pull, if a GET of the digest follows."""
        now = _now() if now is None else now
        key = (client, repository, digest)
        lock = self._lock
        lock.acquire()
        try:
            run = self._events.get(key)
            # Folded after two HEADs of this tag: the second's time moves on.
            if run is not None and len(run) >= 2 and (last := run[-1])[0] == tag == run[-2][0]:
                last[1] = now
            else:
                self._add_event(key, run, [tag, now])
        finally:
            lock.release()
        if self._thread is None:
            self._start()

    def add_digest_fetch(
        self, client: str, repository: str, digest: str, now: float | None = None
    ) -> None:
        """A GET of a manifest by digest: a pull of the manifest, and a tag pull too if
        the store pairs it with this client's HEAD of a tag."""
        now = _now() if now is None else now
        key = (client, repository, digest)
        day, first, following = self._today
        if not first <= now < following:
            day = self._new_day(now)
        lock = self._lock
        lock.acquire()
        try:
            run = self._events.get(key)
            # Folded after two GETs: a third changes nothing.
            if run is None or len(run) < 2 or run[-1][0] is not None or run[-2][0] is not None:
                self._add_event(key, run, [None, now])
            # The fetched manifest counts whatever the pairing decides (add_manifest_pull()).
            manifest_key = (repository, digest, day)
            counter = self._manifests.get(manifest_key)
            if counter is not None:
                counter[0] += 1
                if now > counter[1]:
                    counter[1] = now
                if counter[2] is None:
                    counter[2] = {client}
                else:
                    counter[2].add(client)
            elif self._full():
                self._drop()
            else:
                self._manifests[manifest_key] = [1, now, {client}]
        finally:
            lock.release()
        if self._thread is None:
            self._start()

    def _add_event(
        self, key: tuple[str, str, str], run: list[list[Any]] | None, event: list[Any]
    ) -> None:
        """Append `event` to its run, unless the buffer is full; the caller holds the lock."""
        if self._full():
            self.dropped_events += 1
            self._warn(
                "events",
                "pull statistics buffer is full (%d keys); HEAD/GET pairing events are "
                "dropped (%d so far): some containerd tag pulls count as digest pulls",
                self.max_keys,
                self.dropped_events,
            )
        else:
            self._event_count += 1
            if run is None:
                self._events[key] = [event]
            else:
                run.append(event)

    def add_push(self, repository: str, tag: str, digest: str) -> None:
        """A manifest pushed by tag: the tag names `digest` from now on."""
        key = (repository, tag)
        with self._lock:
            if key not in self._pushes and self._full():
                self.dropped_events += 1
                return
            self._pushes[key] = (_now(), digest)
        if self._thread is None:
            self._start()

    def add_index(self, repository: str, digest: str, children: tuple[str, ...]) -> None:
        """An image index seen in a response body, and the manifests it lists."""
        key = (repository, digest)
        with self._lock:
            if key not in self._indexes and self._full():
                self.dropped_events += 1
                return
            self._indexes[key] = children

    def add_excluded_pull(self) -> None:
        """A pull by a client PULL_METRICS_EXCLUDE names: counted here, nowhere else."""
        with self._lock:
            self.excluded += 1

    def _full(self) -> bool:
        # Batches waiting for the store count too: memory stays under one cap.
        return len(self) + self._pending_keys >= self.max_keys

    def _drop(self) -> None:
        self.dropped += 1
        message = "pull statistics buffer is full (%d keys); new keys are dropped (%d so far)"
        self._warn("full", message + " until the store catches up", self.max_keys, self.dropped)

    def _warn(self, kind: str, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last_warning.get(kind, -_WARN_EVERY) >= _WARN_EVERY:
            self._last_warning[kind] = now
            log.warning(message, *args)

    def __len__(self) -> int:
        """Distinct keys buffered (not counting batches waiting for the store)."""
        held = len(self._tags) + len(self._manifests) + len(self._indexes) + len(self._pushes)
        return held + self._event_count

    def _take_buffer(self) -> tuple[Any, ...]:
        """Swap the buffer out: (tags, manifests, events, indexes, pushes)."""
        with self._lock:
            tags, self._tags = self._tags, {}
            manifests, self._manifests = self._manifests, {}
            runs, self._events, self._event_count = self._events, {}, 0
            indexes, self._indexes = self._indexes, {}
            pushes, self._pushes = self._pushes, {}
        events = [
            DigestFetch(client, repository, digest, ts)
            if tag is None
            else Resolution(client, repository, tag, digest, ts)
            for (client, repository, digest), run in runs.items()
            for tag, ts in run
        ]
        return tags, manifests, events, indexes, pushes


_now = time.time
