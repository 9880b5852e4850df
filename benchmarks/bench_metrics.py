"""Scrape latency of the Prometheus endpoint, through a real HTTP server.

    python benchmarks/bench_metrics.py [--scrapes 200]

Serves the demo registry wrapped by the ASGI middleware with
PULL_METRICS_PROMETHEUS on, under uvicorn, and scrapes
/api/v1/pull_statistics/metrics over one keep-alive connection; the baseline,
in the same run and on the same server, is prometheus-client's own ASGI app
(`make_asgi_app`) serving the same registry, so the difference is what the
middleware adds (routing, the token check, a worker thread). Three setups: one
process with the recorder's metrics only; one process with 1,000 repositories
labelled (PULL_METRICS_PROMETHEUS_REPOSITORIES=1000); two uvicorn workers in
multiprocess mode with the same 1,000 repositories pulled through HTTP.
Prints one table (median and 95th percentile of each); asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx2
import uvicorn
from figures import print_table  # type: ignore[import-not-found]
from prometheus_client import CollectorRegistry, make_asgi_app
from prometheus_client.multiprocess import MultiProcessCollector

from pullstats_middleware import PullMetrics, PullStatsASGIMiddleware, PullStatsConfig
from pullstats_middleware.demo_registry import MemoryRegistry, starlette_app
from pullstats_middleware.prometheus import PATH, PullStatsCollector
from pullstats_middleware.store import MemoryStore

BASELINE = "/baseline"
REPOSITORIES = 1000
Row = tuple[str, str, str, str, str]


def registry(repositories: int) -> MemoryRegistry:
    reg = MemoryRegistry()
    for i in range(repositories):
        reg.push_image(f"bench/r{i:04d}", "v1", f"layer {i}".encode())
    return reg


def with_baseline(app: Any, baseline: Any) -> Any:
    """`BASELINE` to prometheus-client's own app, everything else to ours."""

    async def dispatch(scope: dict[str, Any], receive: Any, send: Any) -> None:
        target = baseline if scope.get("path") == BASELINE else app
        await target(scope, receive, send)

    return dispatch


def multiprocess_app() -> Any:
    """The factory `uvicorn --workers` runs (configured from the environment)."""
    config = PullStatsConfig.from_env(enabled=True, prometheus=True)
    app = PullStatsASGIMiddleware(starlette_app(registry(REPOSITORIES)), config)
    shared = CollectorRegistry()
    MultiProcessCollector(shared)  # type: ignore[no-untyped-call]
    return with_baseline(app, make_asgi_app(shared))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def served_in_thread(app: Any) -> Iterator[str]:
    port = free_port()
    config = uvicorn.Config(app, port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@contextmanager
def served_by_workers(env: dict[str, str]) -> Iterator[str]:
    port = free_port()
    command = [
        sys.executable, "-m", "uvicorn", "--factory", "bench_metrics:multiprocess_app",
        "--app-dir", str(Path(__file__).parent), "--workers", "2", "--port", str(port),
        "--log-level", "warning", "--no-proxy-headers",
    ]  # fmt: skip
    proc = subprocess.Popen(command, env={**os.environ, **env})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx2.get(url + "/v2/", timeout=1).status_code == 200:
                    break
            except httpx2.HTTPError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("bench_metrics: uvicorn --workers did not start")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


def latencies(url: str, scrapes: int) -> tuple[list[float], list[float], int, int]:
    """Ours and the baseline, interleaved; their times (s), our series and bytes."""
    ours, base = [], []
    with httpx2.Client(base_url=url, timeout=30) as client:
        body = b""
        for _ in range(scrapes):
            for path, out in ((PATH, ours), (BASELINE, base)):
                started = time.perf_counter()
                answer = client.get(path)
                out.append(time.perf_counter() - started)
                assert answer.status_code == 200, answer.text
                body = answer.content if path == PATH else body
    series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
    return ours, base, series, len(body)


def row(label: str, scrapes: int, url: str) -> Row:
    ours, base, series, size = latencies(url, scrapes)

    def cut(times: list[float]) -> str:
        p95 = statistics.quantiles(times, n=20)[-1]
        return f"{statistics.median(times) * 1e3:.2f} / {p95 * 1e3:.2f} ms"

    diff = (statistics.median(ours) - statistics.median(base)) * 1e3
    return (label, f"{series:,} / {size / 1024:.0f} KiB", cut(ours), cut(base), f"{diff:+.2f} ms")


def one_process(label: str, repositories: int, scrapes: int) -> Row:
    config = PullStatsConfig(
        enabled=True, prometheus=True, prometheus_repositories=repositories, flush_interval=0.05
    )
    metrics = PullMetrics(config, store=MemoryStore())
    app = PullStatsASGIMiddleware(starlette_app(MemoryRegistry()), metrics=metrics)
    for i in range(max(repositories, 1)):
        metrics.track_tag_pull(f"bench/r{i:04d}", "v1", f"sha256:{i:064x}")
    assert metrics.flush(30)
    baseline = make_asgi_app(PullStatsCollector.of(metrics).registry)
    with served_in_thread(with_baseline(app, baseline)) as url:
        result = row(label, scrapes, url)
    metrics.close()
    return result


def two_workers(label: str, scrapes: int) -> Row:
    with tempfile.TemporaryDirectory() as directory:
        env = {
            "PROMETHEUS_MULTIPROC_DIR": directory,
            "PULL_METRICS_PROMETHEUS_REPOSITORIES": str(REPOSITORIES),
            "PULL_METRICS_FLUSH_INTERVAL": "0.05",
        }
        with served_by_workers(env) as url, httpx2.Client(timeout=10) as client:
            for i in range(REPOSITORIES):
                client.get(f"{url}/v2/bench/r{i:04d}/manifests/v1").raise_for_status()
            time.sleep(1)  # every worker copies its counters into its files
            return row(label, scrapes, url)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scrapes", type=int, default=200, help="scrapes of each (default 200)")
    args = parser.parse_args()
    rows = [
        one_process("1 process, recorder metrics only", 0, args.scrapes),
        one_process(
            f"1 process, {REPOSITORIES:,} repositories labelled", REPOSITORIES, args.scrapes
        ),
        two_workers(f"2 workers (multiprocess), {REPOSITORIES:,} repositories", args.scrapes),
    ]
    header: Row = (
        "scrape of /api/v1/pull_statistics/metrics",
        "series / size",
        "ours: median / p95",
        "prometheus-client's app (same run)",
        "difference",
    )
    print_table(header, rows)


if __name__ == "__main__":
    main()
