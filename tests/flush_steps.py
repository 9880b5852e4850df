"""One flush cycle, step by step, killing itself (SIGKILL) right after the named step.

    python -m tests.flush_steps REDIS_URL DATABASE_URL STEP

STEP: claimed (before any SQL), written (inside the SQL transaction, before the
commit), committed (before the release in Redis), released (after everything).
"""

from __future__ import annotations

import os
import signal
import sys

import redis

from pullstats_middleware.durable import Database, Flusher
from pullstats_middleware.store import RedisStore


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main(redis_url: str, database_url: str, step: str) -> None:
    flusher = Flusher(
        RedisStore(redis.Redis.from_url(redis_url), durable=True), Database(database_url)
    )
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
