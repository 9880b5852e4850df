"""The flush worker: moves counts from Redis (or the memory store) into SQL, exactly once.

One cycle: settle the claims a killed worker left open (written already: release;
not yet: write, then release), then claim, write, release, until nothing is dirty.
Each step is its own method so a test can kill the worker between any two.

- claim: the store moves up to `batch` dirty records under a new claim id, atomically;
- write: SQL adds them and records the claim id, in one transaction;
- release: the store forgets the claim.

Killed after claim: the next cycle writes it. Killed before commit: SQL rolled back,
the next cycle writes it. Killed after commit: the next cycle finds the id in SQL
and only releases it. Two workers at once: a claim id is inserted once (a primary
key), so the second writer's transaction fails and it only releases.
"""

from __future__ import annotations

import datetime
import gc
import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from pullstats_middleware.durable.database import Database
from pullstats_middleware.store.pending import Claim, ClaimStore

log = logging.getLogger("pullstats_middleware")


class Flusher:
    def __init__(
        self, store: ClaimStore, database: Database, *, batch: int = 5000, history_days: int = 400
    ) -> None:
        self.store = store
        self.database = database
        self.batch = batch
        self.history_days = history_days  # PULL_METRICS_HISTORY_DAYS
        self._pruned = -PRUNE_EVERY  # time.monotonic() of the last pruning

    def claim(self) -> Claim:
        return self.store.claim(uuid.uuid4().hex, self.batch)

    def write(self, claim: Claim) -> bool:
        return self.database.write(claim)

    def release(self, claim: Claim) -> None:
        self.store.release(claim.id)

    def settle(self) -> int:
        """Finish what a killed worker left open; how many claims."""
        claims = self.store.open_claims()
        for claim in claims:
            self.write(claim)  # False: it was committed already
            self.release(claim)
        return len(claims)

    def flush(self) -> int:
        """One whole cycle; the number of records moved to SQL.

        While a full claim is written, the next one is claimed in a second thread:
        Redis's work and SQL's overlap (a claim left open by a failure is settled
        by the next cycle, as one a killed worker leaves)."""
        self.settle()
        moved, claim = 0, self.claim()
        ahead: ThreadPoolExecutor | None = None
        try:
            while claim.deltas:
                following = None
                if len(claim.deltas) >= self.batch:  # more may be dirty: claim it meanwhile
                    ahead = ahead or ThreadPoolExecutor(1, thread_name_prefix="pullstats-claim")
                    following = ahead.submit(self.claim)
                self.write(claim)
                self.release(claim)
                moved += len(claim.deltas)
                claim = following.result() if following is not None else self.claim()
        finally:
            if ahead is not None:
                ahead.shutdown()
        self.prune()
        return moved

    def prune(self) -> int:
        """Delete daily history older than `history_days`, at most once per PRUNE_EVERY
        (a scan of the day index; history changes by a day a day). Rows deleted."""
        if time.monotonic() - self._pruned < PRUNE_EVERY:
            return 0
        today = datetime.datetime.now(datetime.timezone.utc).date()
        cutoff = today - datetime.timedelta(days=self.history_days - 1)
        deleted = self.database.prune(cutoff.isoformat())
        self._pruned = time.monotonic()
        if deleted:
            log.info("pull statistics: deleted %d days of history before %s", deleted, cutoff)
        return deleted


PRUNE_EVERY = 3600.0


def freeze_startup_heap() -> None:
    """For a process that only flushes (`pullstats flush`), once it is set up: the
    objects made so far (modules, the engine, the Redis client) live as long as the
    process, so the cycle collector stops walking them (`gc.freeze`, after a
    collection so no garbage is kept). A cycle's thousands of short-lived records
    trigger full collections, and each walked them all again: a sixth of the
    flush's time (benchmarks/bench_durable.py). Not for a serving process, whose
    heap belongs to its host."""
    gc.collect()
    gc.freeze()


class FlusherThread:
    """The embedded flush worker: a daemon thread in a serving process."""

    def __init__(self, flusher: Flusher, interval: float) -> None:
        self.flusher = flusher
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pullstats-flusher", daemon=True)
        self.last_success: float | None = None  # time.time() of the last complete cycle
        self._started = time.time()

    def start(self) -> FlusherThread:
        self._thread.start()
        return self

    def lag(self) -> float:
        """Seconds since the last complete cycle (since the start, before the first)."""
        return max(0.0, time.time() - (self.last_success or self._started))

    def _run(self) -> None:
        delay = self.interval
        while not self._stop.wait(delay):
            try:
                self.flusher.flush()
                self.last_success, delay = time.time(), self.interval
            except Exception as exc:  # the store or the database is away: try again later
                log.warning("pull statistics: flush to the database failed (%s: %s)",
                            type(exc).__name__, exc)  # fmt: skip
                delay = min(delay * 2, 60.0)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop, after one last cycle so a clean shutdown leaves nothing in Redis."""
        self._stop.set()
        self._thread.join(timeout)
        try:
            self.flusher.flush()
        except Exception as exc:
            log.warning("pull statistics: last flush to the database failed (%s)", exc)
