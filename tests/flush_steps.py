"""One flush cycle, step by step, killing itself (SIGKILL) right after the named step.

    python -m tests.flush_steps REDIS DATABASE_URL STEP

REDIS: a URL, or PULL_METRICS_REDIS's JSON (a Redis Cluster).

STEP: claimed (before any SQL), written (inside the SQL transaction, before the
commit), committed (before the release in Redis), released (after everything).
"""

from __future__ import annotations

import os
import signal
import sys

from pullstats_middleware.config import RedisSettings
from pullstats_middleware.durable import Database, Flusher
from pullstats_middleware.store import redis_store


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main(redis_url: str, database_url: str, step: str) -> None:
    settings = RedisSettings.parse("REDIS", redis_url)
    store = redis_store(settings, prefix="pull_metrics", durable=True)
    flusher = Flusher(store, Database(database_url))
    claim = flusher.claim()
    assert claim.deltas, "nothing to claim: the test drove no pulls"
    if step == "claimed":
        die()
    flusher.database.write(claim, before_commit=die if step == "written" else None)
    if step == "committed":
        die()
    flusher.release(claim)
    if step == "released":
        die()


if __name__ == "__main__":
    main(*sys.argv[1:4])
