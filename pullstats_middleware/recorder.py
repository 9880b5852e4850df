"""The bounded, coalescing buffer and the thread that empties it into a store.

The request thread only ever touches dicts under a lock (docs/design.md, "Reliability"): repeated
pulls of one key are one counter, so the buffer's size is the number of
distinct keys, capped. A daemon thread swaps the buffer out, cuts it into
batches, and applies each batch under an id it keeps until the store
acknowledges it, retrying with backoff while the store is unreachable.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import traceback
import uuid
import weakref
from collections import deque
from typing import Any

from pullstats_middleware.store.base import Batch, DigestFetch, Resolution, Store, cut_batches

log = logging.getLogger("pullstats_middleware")

_BACKOFF_FIRST = 0.05
_BACKOFF_MAX = 5.0
_WARN_EVERY = 60.0  # seconds between repeated warnings of one kind


class Recorder:
    def __init__(
        self,
        store: Store,
        *,
        flush_interval: float = 1.0,
        max_keys: int = 100_000,
        batch_max_keys: int = 1_000,
        window: float = 10.0,
        clock_skew: float = 1.0,
    ) -> None:
        self.store = store
        self.flush_interval = flush_interval
        self.max_keys = max_keys
        self.batch_max_keys = batch_max_keys
        self.window = window
        self.clock_skew = clock_skew
        self.dropped = 0  # pulls refused because the buffer was full
        self.dropped_events = 0  # attribution events refused because the buffer was full
        self.excluded = 0  # pulls by excluded clients (scanners, robots): not counted
        self.skipped_keys = 0  # keys the store refused (foreign data in them)
        self._last_warning: dict[str, float] = {}
        self._reset()
        _live.add(self)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        # Keyed by UTC day too, so a count never straddles midnight: daily history
        # stays exact however long the store is away.
        self._tags: dict[tuple[str, str, int], list[Any]] = {}  # -> [count, ts, digest]
        self._manifests: dict[tuple[str, str, int], list[float]] = {}  # -> [count, ts]
        # Attribution events per (client, repository, digest), in order; a run of
        # repeats is folded (see _fold), so a busy key holds a few events, not one each.
        self._events: dict[tuple[str, str, str], list[Resolution | DigestFetch]] = {}
        self._event_count = 0
        self._indexes: dict[tuple[str, str], tuple[str, ...]] = {}  # index -> its children
        self._pushes: dict[tuple[str, str], tuple[float, str]] = {}  # tag -> (ts, digest)
        # Which process recorded an event: within one process the order of a HEAD
        # and a GET is known exactly, so the store allows clock skew only between two.
        self._origin = uuid.uuid4().hex[:16]
        self._pending: deque[Batch] = deque()
        self._pending_keys = 0  # len() of all pending batches, read by _full()
        self._wake = threading.Event()  # flush now
        self._stop = threading.Event()  # cut a retry backoff short: closing
        self._done = threading.Condition(threading.Lock())
        self._cycles_started = 0
        self._cycles_done = 0
        self._closing = False
        self._thread: threading.Thread | None = None

    # -- request thread -------------------------------------------------

    def add_tag_pull(self, repository: str, tag: str, digest: str) -> None:
        now = _now()
        day = int(now // 86400)
        tag_key = (repository, tag, day)
        manifest_key = (repository, digest, day)
        with self._lock:
            entry = self._tags.get(tag_key)
            if entry is not None:
                entry[0] += 1
                entry[1] = now
                entry[2] = digest
            elif self._full():
                self._drop()
                return
            else:
                self._tags[tag_key] = [1, now, digest]
            counter = self._manifests.get(manifest_key)
            if counter is not None:
                counter[0] += 1
                counter[1] = now
            elif self._full():
                self._drop()
            else:
                self._manifests[manifest_key] = [1, now]
        if self._thread is None:
            self._start()

    def add_manifest_pull(self, repository: str, digest: str, now: float | None = None) -> None:
        now = _now() if now is None else now
        key = (repository, digest, int(now // 86400))
        with self._lock:
            counter = self._manifests.get(key)
            if counter is not None:
                counter[0] += 1
                if now > counter[1]:
                    counter[1] = now
            elif self._full():
                self._drop()
            else:
                self._manifests[key] = [1, now]
        if self._thread is None:
            self._start()

    def add_attribution_event(self, event: Resolution | DigestFetch) -> None:
        key = (event.client, event.repository, event.digest)
        with self._lock:
            run = self._events.get(key)
            if run is not None and _fold(run, event):
                pass
            elif self._full():
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
        if isinstance(event, DigestFetch):
            # The fetched manifest counts whatever the pairing decides.
            self.add_manifest_pull(event.repository, event.digest, event.ts)
        elif self._thread is None:
            self._start()

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
        held = len(self._tags) + len(self._manifests) + len(self._indexes) + len(self._pushes)
        held += self._event_count
        held += self._pending_keys
        return held >= self.max_keys

    def _drop(self) -> None:
        self.dropped += 1
        self._warn(
            "full",
            "pull statistics buffer is full (%d keys); new keys are dropped "
            "(%d so far) until the store catches up",
            self.max_keys,
            self.dropped,
        )

    def _warn(self, kind: str, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last_warning.get(kind, -_WARN_EVERY) >= _WARN_EVERY:
            self._last_warning[kind] = now
            log.warning(message, *args)

    def _start(self) -> None:
        with self._done:
            if self._thread is None and not self._closing:
                self._thread = threading.Thread(
                    target=self._run, name="pullstats-recorder", daemon=True
                )
                self._thread.start()

    # -- flush thread ---------------------------------------------------

    def _run(self) -> None:
        while True:
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            with self._done:
                self._cycles_started += 1
                cycle = self._cycles_started
                closing = self._closing
            if self._cycle():
                with self._done:
                    self._cycles_done = cycle
                    self._done.notify_all()
            if closing:
                return

    def _cycle(self) -> bool:
        """Apply what is pending, then what is buffered; False if the store failed."""
        if not self._apply_pending():
            return False
        self._take()
        return self._apply_pending()

    def _take(self) -> None:
        with self._lock:
            tags, self._tags = self._tags, {}
            manifests, self._manifests = self._manifests, {}
            runs, self._events, self._event_count = self._events, {}, 0
            indexes, self._indexes = self._indexes, {}
            pushes, self._pushes = self._pushes, {}
        events = [event for run in runs.values() for event in run]
        # Cut into batches outside the lock; dates are formatted there, not per pull.
        batches = cut_batches(
            tags, manifests, events, self.batch_max_keys, self._origin, indexes, pushes
        )
        self._pending.extend(batches)
        with self._lock:
            self._pending_keys += sum(len(batch) for batch in batches)

    def _apply_pending(self) -> bool:
        delay = _BACKOFF_FIRST
        while self._pending:
            batch = self._pending[0]
            try:
                skipped = self.store.apply(batch, window=self.window, skew=self.clock_skew)
            except Exception as exc:  # any store failure: keep the batch, retry
                self._warn(
                    "store",
                    "pull statistics store unavailable (%s: %s); keeping %d batch(es) and retrying",
                    type(exc).__name__,
                    exc,
                    len(self._pending),
                )
                # The client's frames hold the error that holds them: a cycle that
                # would keep each attempt's batch arguments alive until a full gc.
                traceback.clear_frames(exc.__traceback__)
                if self._stop.wait(delay):
                    return False
                delay = min(delay * 2, _BACKOFF_MAX)
                continue
            self._pending.popleft()
            with self._lock:
                self._pending_keys -= len(batch)
            if skipped:
                self.skipped_keys += len(skipped)
                log.error(
                    "pull statistics: %d key(s) hold data that is not ours and were not "
                    "updated: %s",
                    len(skipped),
                    ", ".join(skipped[:5]),
                )
        return True

    # -- control ----------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Block until every pull added before this call is in the store.

        Returns False when `timeout` passed first (the store is unreachable);
        the pulls are kept and will still be written.
        """
        if self._thread is None and (len(self) or self._pending):
            self._start()
        with self._done:
            if self._thread is None:  # nothing was ever added, or closed
                return not (len(self) or self._pending)
            target = self._cycles_started + 1
            self._wake.set()
            return self._done.wait_for(lambda: self._cycles_done >= target, timeout)

    def close(self, timeout: float | None = 5.0) -> bool:
        """Flush within `timeout`, then stop the thread. Idempotent."""
        with self._done:
            if self._closing:
                return True
        flushed = self.flush(timeout)
        with self._done:
            self._closing = True
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        _live.discard(self)
        if not flushed:
            log.warning(
                "pull statistics: shutdown flush timed out; %d batch(es) not written",
                len(self._pending),
            )
        return flushed

    def __len__(self) -> int:
        """Distinct keys buffered (not counting batches waiting for the store)."""
        held = len(self._tags) + len(self._manifests) + len(self._indexes) + len(self._pushes)
        return held + self._event_count

    @property
    def pending_batches(self) -> int:
        return len(self._pending)

    def _after_fork_in_child(self) -> None:
        # The parent keeps and writes its own counts; the child starts empty,
        # with fresh locks (another thread may have held them at fork time).
        self._reset()


def _fold(run: list[Resolution | DigestFetch], event: Resolution | DigestFetch) -> bool:
    """Fold `event` into the run of events of its key when the store would end in the
    same state with or without it; True when folded (it takes no buffer slot).

    The store pairs a GET with a waiting HEAD, else keeps the *first* unpaired GET;
    it keeps the *last* HEAD. So in a run of repeats, a third GET changes nothing,
    and a HEAD that follows two HEADs of the same tag can take the second's place.
    """
    if len(run) < 2:
        return False
    last, before = run[-1], run[-2]
    if isinstance(event, DigestFetch):
        return isinstance(last, DigestFetch) and isinstance(before, DigestFetch)
    repeated = isinstance(last, Resolution) and isinstance(before, Resolution)
    if repeated and last.tag == event.tag == before.tag:  # type: ignore[union-attr]
        run[-1] = event
        return True
    return False


_now = time.time

_live: weakref.WeakSet[Recorder] = weakref.WeakSet()


def _reset_all_after_fork() -> None:
    for recorder in list(_live):
        recorder._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_all_after_fork)
