"""The figures of docs/design.md, "Performance targets", measured side by side in one run.

    python benchmarks/bench.py [--redis-url redis://127.0.0.1:6379/0] [--quick]

Without --redis-url it starts its own redis-server on a free port. Prints one
table: each figure, ours next to a baseline measured in the same run, the
difference or ratio, and the target. It asserts nothing: read the table.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import redis
from figures import print_table  # type: ignore[import-not-found]

from pullstats_middleware import (
    PullMetrics,
    PullStatsASGIMiddleware,
    PullStatsConfig,
    PullStatsMiddleware,
)
from pullstats_middleware.demo_registry import MemoryRegistry
from pullstats_middleware.store import MemoryStore

Row = tuple[str, str, str, str, str]


@contextmanager
def redis_server() -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("bench: redis-server not found (or pass --redis-url)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                tmp,
            ],
            stdout=subprocess.DEVNULL,
        )
        url = f"redis://127.0.0.1:{port}/0"
        client = redis.Redis.from_url(url)
        for _ in range(200):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.02)
        try:
            yield url
        finally:
            proc.terminate()
            proc.wait()


# -- 1. cost on the request thread ----------------------------------------


def track_cost(n: int) -> list[Row]:
    """Each call timed alone over 1,000 tags; the baseline is a Counter increment
    behind the same function-call signature, so the difference is what tracking adds."""
    metrics = PullMetrics(PullStatsConfig(enabled=True, flush_interval=3600), store=MemoryStore())
    names = [("org/app", f"t{i}", f"sha256:{i:064x}") for i in range(1000)]
    counter: Counter[tuple[str, str]] = Counter()

    def count(repo: str, tag: str, digest: str) -> None:
        counter[repo, tag] += 1

    # Interleaved, call by call, so all three see the same machine state.
    calls = [metrics.track_tag_pull, metrics.recorder.add_tag_pull, count]
    clock = time.perf_counter_ns
    samples: list[list[int]] = [[], [], []]
    for k in range(n):
        repo, tag, digest = names[k % 1000]
        for fn, out in zip(calls, samples, strict=True):
            t0 = clock()
            fn(repo, tag, digest)
            out.append(clock() - t0)
    public, internal, baseline = (statistics.median(s) for s in samples)
    metrics.close()
    return [
        (
            "track_tag_pull(), caller's thread",
            f"{public / 1000:.2f} µs",
            f"{baseline / 1000:.2f} µs (a Counter increment)",
            f"+{(public - baseline) / 1000:.2f} µs",
            "≤ 3 µs",
        ),
        ("  recorder add (what the adapters call)", f"{internal / 1000:.2f} µs", "", "", ""),
    ]


# -- 2. end-to-end throughput into Redis -------------------------------------


def workload(pulls: int, keys: int) -> list[tuple[str, str, str]]:
    return [("org/app", f"t{i % keys}", f"sha256:{i % keys:064x}") for i in range(pulls)]


def ours_throughput(url: str, work: list[tuple[str, str, str]]) -> float:
    metrics = PullMetrics(
        PullStatsConfig(enabled=True, redis={"url": url}, key_prefix="bench_ours")
    )
    track = metrics.recorder.add_tag_pull
    t0 = time.perf_counter()
    for repo, tag, digest in work:
        track(repo, tag, digest)
    assert metrics.flush(120)
    elapsed = time.perf_counter() - t0
    metrics.close()
    return len(work) / elapsed


def eval_per_pull_throughput(url: str, work: list[tuple[str, str, str]]) -> float:
    client = redis.Redis.from_url(url)
    script = client.register_script(
        "redis.call('HINCRBY', KEYS[1], 'pull_count', 1)"
        " redis.call('HSET', KEYS[1], 'last_pull_date', ARGV[1])"
        " redis.call('HINCRBY', KEYS[2], 'pull_count', 1) return 1"
    )
    t0 = time.perf_counter()
    for repo, tag, digest in work:
        script(
            keys=[f"bench_eval/tag/{repo}/{tag}", f"bench_eval/manifest/{repo}/{digest}"],
            args=["2024-09-08T10:15:00Z"],
        )
    return len(work) / (time.perf_counter() - t0)


def naive_coalescing_throughput(url: str, work: list[tuple[str, str, str]]) -> float:
    """A Counter, then one pipelined HINCRBY + HSET per key (no guard, no dates order)."""
    client = redis.Redis.from_url(url)
    t0 = time.perf_counter()
    counts: Counter[tuple[str, str, str]] = Counter()
    for item in work:
        counts[item] += 1
    pipe = client.pipeline(transaction=False)
    date = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for (repo, tag, digest), n in counts.items():
        pipe.hincrby(f"bench_naive/tag/{repo}/{tag}", "pull_count", n)
        pipe.hset(
            f"bench_naive/tag/{repo}/{tag}",
            mapping={"last_pull_date": date, "current_manifest_digest": digest},
        )
        pipe.hincrby(f"bench_naive/manifest/{repo}/{digest}", "pull_count", n)
        pipe.hset(f"bench_naive/manifest/{repo}/{digest}", "last_pull_date", date)
    pipe.execute()
    return len(work) / (time.perf_counter() - t0)


def throughput(url: str, pulls: int, keys: int) -> list[Row]:
    work = workload(pulls, keys)
    ours = ours_throughput(url, work)
    naive = naive_coalescing_throughput(url, work)
    per_pull = eval_per_pull_throughput(url, work[: max(pulls // 20, 1000)])
    label = f"pulls/s into Redis ({pulls:,} over {keys:,} tags)"
    return [
        (
            label,
            f"{ours:,.0f}/s",
            f"{naive:,.0f}/s (naive coalescing)",
            f"x{ours / naive:.2f}",
            "≥ 250,000/s",
        ),
        ("", "", f"{per_pull:,.0f}/s (one EVAL per pull)", f"x{ours / per_pull:.1f}", ""),
    ]


# -- 3. added time per request ----------------------------------------------------


def environ(path: str) -> dict[str, Any]:
    from werkzeug.test import EnvironBuilder

    env = EnvironBuilder(path=path, method="GET").get_environ()
    env["REMOTE_ADDR"] = "10.0.0.1"
    return env


def wsgi_registry(registry: MemoryRegistry) -> Callable[..., Any]:
    def app(env: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        status, headers, body = registry.handle(env["REQUEST_METHOD"], env["PATH_INFO"], {})
        start_response(f"{status} OK", headers)
        return [body]

    return app


def asgi_registry(registry: MemoryRegistry) -> Callable[..., Any]:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        status, headers, body = registry.handle(scope["method"], scope["path"], {})
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(k.lower().encode(), v.encode()) for k, v in headers],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return app


def wsgi_request(app: Callable[..., Any], env: dict[str, Any]) -> None:
    body = app(dict(env), lambda status, headers, exc_info=None: None)
    for _ in body:
        pass
    close = getattr(body, "close", None)
    if close is not None:
        close()


def asgi_medians(apps: list[Any], path: str, n: int) -> list[float]:
    scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "root_path": "",
        "headers": [],
        "query_string": b"",
        "client": ("10.0.0.1", 1),
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request"}

    async def send(message: dict[str, Any]) -> None:
        pass

    async def run() -> list[float]:
        clock = time.perf_counter_ns
        samples: list[list[int]] = [[] for _ in apps]
        for _ in range(n):
            for i, app in enumerate(apps):  # interleaved: both see the same machine state
                t0 = clock()
                await app(dict(scope), receive, send)
                samples[i].append(clock() - t0)
        return [statistics.median(s) for s in samples]

    return asyncio.run(run())


def wsgi_medians(apps: list[Any], path: str, n: int) -> list[float]:
    env = environ(path)
    clock = time.perf_counter_ns
    samples: list[list[int]] = [[] for _ in apps]
    for _ in range(n):
        for i, app in enumerate(apps):
            t0 = clock()
            wsgi_request(app, env)
            samples[i].append(clock() - t0)
    return [statistics.median(s) for s in samples]


def request_overhead(n: int) -> list[Row]:
    registry = MemoryRegistry()
    registry.push_image("org/app", "v1", b"layer")
    blob = next(iter(registry.blobs))
    config = PullStatsConfig(enabled=True, flush_interval=0.5)
    metrics = PullMetrics(config, store=MemoryStore())
    rows: list[Row] = []
    bare_w, bare_a = wsgi_registry(registry), asgi_registry(registry)
    wrapped_w = PullStatsMiddleware(bare_w, metrics=metrics)
    wrapped_a = PullStatsASGIMiddleware(bare_a, metrics=metrics)
    digest = registry.repositories["org/app"].tags["v1"]
    cases = [
        ("manifest GET by tag", "/v2/org/app/manifests/v1", "≤ 15 µs"),
        ("manifest GET by digest", f"/v2/org/app/manifests/{digest}", "≤ 15 µs"),
        ("blob GET (not a manifest)", f"/v2/org/app/blobs/{blob}", "≤ 2 µs"),
        ("catalog GET (not a manifest)", "/v2/_catalog", "≤ 2 µs"),
    ]
    for label, path, target in cases:
        for kind, medians in (("WSGI", wsgi_medians), ("ASGI", asgi_medians)):
            apps = [bare_w, wrapped_w] if kind == "WSGI" else [bare_a, wrapped_a]
            bare, wrapped = medians(apps, path, n)
            rows.append(
                (
                    f"{kind} {label}",
                    f"{wrapped / 1000:.2f} µs",
                    f"{bare / 1000:.2f} µs (bare app)",
                    f"+{(wrapped - bare) / 1000:.2f} µs",
                    target,
                )
            )
    metrics.close()
    return rows


# -- 4. memory while Redis is down ---------------------------------------------------


def memory_while_down(pulls: int, keys: int, cap: int) -> list[Row]:
    config = PullStatsConfig(
        enabled=True,
        redis={"url": "redis://127.0.0.1:1/0", "socket_timeout": 0.05},
        buffer_max_keys=cap,
        flush_interval=0.05,
    )
    metrics = PullMetrics(config)
    track = metrics.recorder.add_manifest_pull
    digests = [f"sha256:{i:064x}" for i in range(keys)]
    gc.collect()
    tracemalloc.start()
    marks = []
    step = pulls // 4
    for done in range(0, pulls, step):
        for i in range(done, done + step):
            track("org/app", digests[i % keys])
        marks.append(tracemalloc.get_traced_memory()[0])
    tracemalloc.stop()
    recorder = metrics.recorder
    held = len(recorder) + sum(len(b) for b in list(recorder._pending))
    metrics.close(timeout=0.2)
    growth = marks[-1] - marks[1]
    return [
        (
            f"memory, Redis down, {pulls:,} pulls over {keys:,} keys",
            f"{marks[-1] / 2**20:.1f} MiB",
            f"{marks[1] / 2**20:.1f} MiB after {2 * step:,} pulls",
            f"+{growth / 2**20:.2f} MiB",
            f"bounded by the cap ({cap:,} keys)",
        ),
        (
            "  keys held / pulls dropped and counted",
            f"{held:,}",
            f"{recorder.dropped:,} dropped",
            "",
            "",
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--redis-url", help="a local Redis to write to (default: start a private redis-server)"
    )
    parser.add_argument("--quick", action="store_true", help="fewer iterations (a smoke run)")
    args = parser.parse_args()
    n = 20_000 if args.quick else 200_000
    rows: list[Row] = []
    rows += track_cost(n)
    with (
        contextmanager(lambda: iter([args.redis_url]))()
        if args.redis_url
        else redis_server() as url
    ):
        rows += throughput(url, pulls=100_000 if args.quick else 1_000_000, keys=10_000)
    rows += request_overhead(n // 10)
    rows += memory_while_down(pulls=1_000_000, keys=100_000, cap=50_000)
    header: Row = ("figure", "ours", "baseline (same run)", "difference", "target")
    print_table(header, rows)


if __name__ == "__main__":
    main()
