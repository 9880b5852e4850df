"""Which records of a repository Redis holds (`held`), on a Redis as a busy registry
leaves it: what every listing page, repository history and dashboard asks first.

    python benchmarks/bench_held.py [--markers 50000] [--records 1000]

Starts its own redis-server. 1,000 live records over 10 repositories, beside
50,000 keys that are not records (batch markers live an hour, pairing keys a
window). With a database, `held` scans the dirty set; the baseline is the scan of
every key of the database it used before (the store's path without a database).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import redis
from figures import print_table  # type: ignore[import-not-found]

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pullstats_middleware.store import Batch, RedisStore, TagDelta
from tests.e2e.services import RedisServer

DIGEST = "sha256:" + "1" * 64


def median_ms(call: Any, rounds: int = 50) -> tuple[float, int]:
    times, found = [], 0
    for _ in range(rounds):
        began = time.perf_counter()
        found = len(call())
        times.append(time.perf_counter() - began)
    return statistics.median(times) * 1000, found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--markers", type=int, default=50_000)
    parser.add_argument("--records", type=int, default=1_000)
    args = parser.parse_args()
    with RedisServer() as server:
        client = redis.Redis.from_url(server.url)
        store = RedisStore(client, durable=True)
        batch = Batch(uuid.uuid4().hex)
        for i in range(args.records):
            date = "2026-11-29T10:00:00Z"
            batch.tags.append(TagDelta(f"team{i % 10}/app", f"t{i}", 1, date, DIGEST))
        store.apply(batch, window=10.0, skew=1.0)
        pipe = client.pipeline(transaction=False)
        for _ in range(args.markers):
            pipe.set(f"pull_metrics/batch/{uuid.uuid4().hex}", "1", ex=3600)
        pipe.execute()
        ours = median_ms(lambda: store.held("tag", "team3/app"))
        store.durable = False
        base = median_ms(lambda: store.held("tag", "team3/app"))
        assert ours[1] == base[1] == args.records // 10
        keys = client.dbsize()
    label = f"held(), {args.records:,} live records in {keys:,} keys"
    rows = [
        ("figure", "ours", "baseline (same run)", "difference"),
        (label, f"{ours[0]:.2f} ms", f"{base[0]:.2f} ms (SCAN of every key)",
         f"x{base[0] / ours[0]:.0f} faster"),
    ]  # fmt: skip
    print_table(rows[0], rows[1:])


if __name__ == "__main__":
    main()
