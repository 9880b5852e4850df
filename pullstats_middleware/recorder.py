"""The thread that empties the buffer (buffer.py) into a store.

A daemon thread swaps the buffer out, cuts it into batches, and applies each
batch under an id it keeps until the store acknowledges it, retrying with
backoff while the store is unreachable (docs/design.md, "Reliability").
"""

from __future__ import annotations

import logging
import os
import threading
import time
import traceback
import weakref
from collections import deque
from collections.abc import Callable

from pullstats_middleware.buffer import PullBuffer
from pullstats_middleware.store.base import Batch, Store, cut_batches

log = logging.getLogger("pullstats_middleware")

_BACKOFF_FIRST = 0.05
_BACKOFF_MAX = 5.0


class Recorder(PullBuffer):
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
        super().__init__(max_keys)
        self.store = store
        self.flush_interval = flush_interval
        self.batch_max_keys = batch_max_keys
        self.window = window
        self.clock_skew = clock_skew
        self.skipped_keys = 0  # keys the store refused (foreign data in them)
        # Counted on the flush thread only, for monitoring (health(), Prometheus):
        self.batches_applied = 0
        self.batch_retries = 0  # failed attempts to apply a batch; each is tried again
        self.store_errors: dict[str, int] = {}  # those failures by exception class
        self.pulls_written = {"tag": 0, "manifest": 0}  # pulls in the batches applied
        # Called on the flush thread after each applied batch, with the seconds it took.
        self.on_applied: Callable[[Batch, float], None] | None = None
        self._reset()
        _live.add(self)

    def _reset(self) -> None:
        self._reset_buffer()
        self._pending: deque[Batch] = deque()
        self._pending_keys = 0  # len() of all pending batches, read by _full()
        self._wake = threading.Event()  # flush now
        self._stop = threading.Event()  # cut a retry backoff short: closing
        self._done = threading.Condition(threading.Lock())
        self._cycles_started = 0
        self._cycles_done = 0
        self._closing = False
        self._thread: threading.Thread | None = None
        self.last_flush = time.time()  # when a cycle last left nothing waiting

    def _start(self) -> None:
        with self._done:
            if self._thread is None and not self._closing:
                self.last_flush = time.time()  # idle until now: nothing was waiting
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
                self.last_flush = time.time()
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
        tags, manifests, events, indexes, pushes = self._take_buffer()
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
            started = time.perf_counter()
            try:
                skipped = self.store.apply(batch, window=self.window, skew=self.clock_skew)
            except Exception as exc:  # any store failure: keep the batch, retry
                kind = type(exc).__name__
                self.batch_retries += 1
                self.store_errors[kind] = self.store_errors.get(kind, 0) + 1
                self._warn(
                    "store",
                    "pull statistics store unavailable (%s: %s); keeping %d batch(es) and retrying",
                    kind,
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
            elapsed = time.perf_counter() - started
            self._pending.popleft()
            with self._lock:
                self._pending_keys -= len(batch)
            self._count_applied(batch, elapsed)
            if skipped:
                self.skipped_keys += len(skipped)
                log.error(
                    "pull statistics: %d key(s) hold data that is not ours and were not "
                    "updated: %s",
                    len(skipped),
                    ", ".join(skipped[:5]),
                )
        return True

    def _count_applied(self, batch: Batch, elapsed: float) -> None:
        self.batches_applied += 1
        self.pulls_written["tag"] += sum(delta.pulls for delta in batch.tags)
        self.pulls_written["manifest"] += sum(delta.pulls for delta in batch.manifests)
        if self.on_applied is not None:
            try:
                self.on_applied(batch, elapsed)
            except Exception:  # monitoring never stops the recorder
                log.exception("pull statistics: the on_applied callback failed")

    def seconds_since_flush(self) -> float:
        """0 while nothing waits; else how long ago the store last had everything."""
        if not len(self) and not self._pending:
            return 0.0
        return max(0.0, time.time() - self.last_flush)

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

    @property
    def pending_batches(self) -> int:
        return len(self._pending)

    def _after_fork_in_child(self) -> None:
        # The parent keeps and writes its own counts; the child starts empty,
        # with fresh locks (another thread may have held them at fork time).
        self._reset()


_live: weakref.WeakSet[Recorder] = weakref.WeakSet()


def _reset_all_after_fork() -> None:
    for recorder in list(_live):
        recorder._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_all_after_fork)
