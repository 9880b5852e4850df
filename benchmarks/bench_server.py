"""The in-process middleware under a real server: bare app against wrapped app.

    python benchmarks/bench_server.py [--rounds 75] [--requests 4000]
        [--gunicorn-requests 1600] [--servers uvicorn,gunicorn] [--compare DIR] [--quick]

Serves the Starlette example under uvicorn (one process, httptools, access log
off) and the Flask example under gunicorn (sync workers), each as shipped
(wrapped) and without the middleware (bare, benchmarks/server_apps.py), the
wrapped ones once with a private redis-server as the store and once with the
in-process memory store. Then, in interleaved rounds, a fixed number of
requests of each kind to each server: manifest GETs by tag, GETs by digest
(h2load --h1: HTTP/1.1 keep-alive), HEADs by tag (a Python keep-alive client:
h2load and wrk wait for a body after a HEAD), and a blob GET (not a manifest).
The server's CPU per request is read from the CPU-time clocks of the server
and its workers (user + system, in ns) before and after each run. The servers
run on the last CPU (taskset), the load on the others, unless --no-pin. In
each round the set-ups run back to back, so the added CPU is the median of the
rounds' differences, with its 95 % confidence interval and the middle half of
them. On a shared machine one run can differ from the next by a third, and the
drift is slow: many short rounds (75 of 4,000 requests, a quarter of a second
each) pair runs the drift has not reached. On one machine, 15 rounds of 20,000
left the middle half of the differences 4 to 12 µs wide, 75 rounds of 4,000
2 to 5 µs. The target is "met" when the whole interval is at or under it, "not
met" when the whole interval is over it, else "undecided". Then the
exact-count check of the Redis runs: the pulls each wrapped server wrote (read
after its SIGTERM) against the GETs it answered 200. `--compare DIR` adds the
wrapped example served with the pullstats_middleware package found in DIR (an
older checkout, say) to the same rounds, counting into Redis database 1.
Needs redis-server and h2load (nghttp2-client); asserts nothing.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import shutil
import statistics
import sys
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from figures import print_table  # type: ignore[import-not-found]

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import redis  # noqa: E402
from keepalive_client import head_load  # type: ignore[import-not-found]  # noqa: E402
from registry_load import free_port, h2load, serve, tree_cpu  # type: ignore[import-not-found]  # noqa: E402

from tests.e2e.services import RedisServer  # noqa: E402

REPOSITORY, TAG = "library/hello", "v1"
TARGET_ADDED_US = 10.0  # added CPU per manifest request under uvicorn (issue 10)
CONFIDENCE = 0.95


@dataclass
class Server:
    name: str
    base: str
    pid: int
    store: str  # "" (bare), "redis" or "memory"
    redis_url: str = ""  # where it counts, for the exact-count check
    cpu_us: dict[str, list[float]] = field(default_factory=dict)  # kind -> one per round
    rate: dict[str, list[float]] = field(default_factory=dict)
    answered: dict[str, int] = field(default_factory=dict)  # kind -> 2xx answered


def start(
    stack: ExitStack,
    kind: str,
    app: str,
    store: str,
    redis_url: str,
    tree: str = "",
    cpus: set[int] | None = None,
) -> Server:
    """One server; `tree`: serve the pullstats_middleware package found there instead."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PULL_METRICS_", "USER_EV"))}
    label = "wrapped, " + ("Redis" if store == "redis" else "memory store") if store else "bare"
    if tree:
        env["PYTHONPATH"] = tree
        label += f" ({Path(tree).name})"
        redis_url = redis_url.rsplit("/", 1)[0] + "/1"  # its own database, its own counts
    if store == "redis":
        env["PULL_METRICS_REDIS"] = redis_url
    if kind == "uvicorn":
        command = [
            sys.executable, "-m", "uvicorn", "--factory", f"server_apps:{app}",
            "--port", str(port), "--no-access-log", "--no-proxy-headers",
            "--log-level", "warning", "--app-dir", str(HERE),
        ]  # fmt: skip
    else:
        command = [
            sys.executable, "-m", "gunicorn", "-k", "sync", "-w", "2",
            "-b", f"127.0.0.1:{port}", "--chdir", str(HERE), f"server_apps:{app}",
        ]  # fmt: skip
    if cpus:
        command = ["taskset", "-c", ",".join(map(str, sorted(cpus))), *command]
    proc = stack.enter_context(serve(command, f"http://127.0.0.1:{port}/v2/", env))
    return Server(label, f"http://127.0.0.1:{port}", proc.pid, store or "", redis_url)


def paths(base: str) -> dict[str, str]:
    """The request kinds and their paths, read from the example's registry."""
    conn = http.client.HTTPConnection(base.removeprefix("http://"))
    conn.request("GET", f"/v2/{REPOSITORY}/manifests/{TAG}")
    answer = conn.getresponse()
    manifest = json.loads(answer.read())
    digest = answer.headers["docker-content-digest"]
    conn.close()
    return {
        "manifest GET by tag": f"/v2/{REPOSITORY}/manifests/{TAG}",
        "manifest GET by digest": f"/v2/{REPOSITORY}/manifests/{digest}",
        "manifest HEAD by tag": f"/v2/{REPOSITORY}/manifests/{TAG}",
        "blob GET (not a manifest)": f"/v2/{REPOSITORY}/blobs/{manifest['layers'][0]['digest']}",
    }


def run(server: Server, kind: str, path: str, n: int, concurrency: int) -> None:
    load: Callable[[str, int, int], tuple[float, int]] = head_load if "HEAD" in kind else h2load
    before = tree_cpu(server.pid)
    rate, ok = load(server.base + path, n, concurrency)
    spent = tree_cpu(server.pid) - before
    server.cpu_us.setdefault(kind, []).append(spent / n * 1e6)
    server.rate.setdefault(kind, []).append(rate)
    server.answered[kind] = server.answered.get(kind, 0) + ok


def measure(servers: list[Server], requests: int, rounds: int, concurrency: int) -> None:
    kinds = paths(servers[0].base)
    for server in servers:  # warm-up: imports, caches, the recorder's thread
        for kind, path in kinds.items():
            run(server, kind, path, 500, concurrency)
        server.cpu_us.clear()
        server.rate.clear()
    for r in range(rounds):
        for kind, path in kinds.items():
            # The set-ups run back to back, each round starting with the next one: the
            # machine's load drifts, and a pair of neighbours sees about the same.
            k = r % len(servers)
            for server in servers[k:] + servers[:k]:
                run(server, kind, path, requests, concurrency)
                print(".", end="", flush=True, file=sys.stderr)


def median_interval(values: list[float]) -> tuple[float, float] | None:
    """The distribution-free CONFIDENCE interval of the median of `values`: from the
    k-th smallest to the k-th largest, k the largest rank with P(Binomial(n, 1/2) < k)
    at most (1 - CONFIDENCE) / 2. None for too few values (under 6 for 95 %)."""
    n, ordered = len(values), sorted(values)
    tail, k = 0.0, 0
    while True:
        tail += math.comb(n, k) / 2**n  # P(Binomial(n, 1/2) <= k)
        if tail > (1 - CONFIDENCE) / 2:
            break
        k += 1
    return (ordered[k - 1], ordered[n - k]) if k >= 1 else None


def added(server: Server, bare: Server, kind: str) -> tuple[str, str, str]:
    """The median of the rounds' differences (each round's pair ran back to back) with
    its confidence interval, the middle half of them, and the verdict on the target."""
    diffs = [w - b for w, b in zip(server.cpu_us[kind], bare.cpu_us[kind], strict=True)]
    low, _, high = statistics.quantiles(diffs, n=4) if len(diffs) > 1 else diffs * 3
    median = f"{statistics.median(diffs):+.1f} µs"
    interval = median_interval(diffs)
    if interval is None:
        return median + " (too few rounds)", f"{low:+.1f} to {high:+.1f}", "undecided"
    verdict = (
        "met"
        if interval[1] <= TARGET_ADDED_US
        else "not met"
        if interval[0] > TARGET_ADDED_US
        else "undecided"
    )
    return (
        f"{median} ({interval[0]:+.1f} to {interval[1]:+.1f})",
        f"{low:+.1f} to {high:+.1f}",
        verdict,
    )


def table(title: str, servers: list[Server], check: list[str], uvicorn: bool) -> None:
    bare = servers[0]
    print(f"\n{title}")
    head = (
        "request",
        "set-up",
        "CPU µs/request",
        "req/s",
        f"added CPU, median ({CONFIDENCE:.0%} CI)",
        "middle half",
        "target",
    )
    rows: list[tuple[str, ...]] = []
    for kind in bare.cpu_us:
        for s in servers:
            more = ("", "", "")
            if s is not bare:
                median, half, verdict = added(s, bare, kind)
                manifest = kind.startswith("manifest") and uvicorn
                more = (median, half, f"≤ +{TARGET_ADDED_US:.0f} µs: {verdict}" if manifest else "")
            rows.append(
                (
                    kind if s is bare else "",
                    s.name,
                    f"{statistics.median(s.cpu_us[kind]):.1f}",
                    f"{statistics.median(s.rate[kind]):,.0f}",
                    *more,
                )
            )
    print_table(head, rows)
    for line in check:
        print(line)


def counted(server: Server) -> str:
    """What `server` wrote to Redis (read after its SIGTERM) against what it answered;
    then its counts are deleted."""
    client = redis.Redis.from_url(server.redis_url)
    tag = int(client.hget(f"pull_metrics/tag/{REPOSITORY}/{TAG}", "pull_count") or 0)
    keys = client.keys(f"pull_metrics/manifest/{REPOSITORY}/*")
    manifests = sum(int(client.hget(k, "pull_count") or 0) for k in keys)
    get_tag = server.answered["manifest GET by tag"]
    gets = get_tag + server.answered["manifest GET by digest"]
    exact = tag == get_tag and manifests == gets
    client.flushdb()
    return (
        f"{server.name}: {get_tag:,} GETs by tag answered, {tag:,} tag pulls counted; "
        f"{gets:,} manifest GETs, {manifests:,} manifest pulls counted "
        f"({'exact' if exact else 'NOT EXACT'}; warm-up included)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4_000, help="per run under uvicorn")
    parser.add_argument("--gunicorn-requests", type=int, default=1_600, help="per run")
    parser.add_argument("--rounds", type=int, default=75)
    parser.add_argument("--servers", default="uvicorn,gunicorn")
    parser.add_argument(
        "--compare",
        metavar="DIR",
        default="",
        help="also serve the wrapped example (Redis) with the pullstats_middleware package "
        "in DIR (another version, say), in the same rounds",
    )
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="let the servers and the load share every CPU (default: the servers on the "
        "last CPU, the load on the others)",
    )
    parser.add_argument("--quick", action="store_true", help="2 rounds of 2,000: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.requests = args.gunicorn_requests = 2_000
        args.rounds = 2
    load = os.getloadavg()
    print(f"load average before: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}; {os.cpu_count()} CPUs")
    apps = {
        "uvicorn": ("Starlette example", "starlette", 32, args.requests),
        "gunicorn": ("Flask example, 2 sync workers", "flask", 8, args.gunicorn_requests),
    }
    with RedisServer() as store:
        cpus = sorted(os.sched_getaffinity(0))
        pinned = len(cpus) > 1 and not args.no_pin and shutil.which("taskset") is not None
        server_cpus = {cpus[-1]} if pinned else None
        if pinned:
            # Each server gets a CPU of its own, the load (h2load, the HEAD client: this
            # process's children) the others: run to run, far steadier figures.
            os.sched_setaffinity(0, cpus[:-1])
            print(f"servers on CPU {cpus[-1]}, load on CPU {','.join(map(str, cpus[:-1]))}")
        for kind in args.servers.split(","):
            what, app, concurrency, requests = apps[kind]
            with ExitStack() as stack:
                servers = [start(stack, kind, f"{app}_bare", "", store.url, cpus=server_cpus)]
                servers += [
                    start(stack, kind, f"{app}_wrapped", s, store.url, cpus=server_cpus)
                    for s in ("redis", "memory")
                ]
                if args.compare:
                    tree = str(Path(args.compare).resolve())
                    servers.append(
                        start(stack, kind, f"{app}_wrapped", "redis", store.url, tree, server_cpus)
                    )
                measure(servers, requests, args.rounds, concurrency)
            # The servers have exited (SIGTERM): the wrapped ones flushed on the way out.
            check = [counted(s) for s in servers if s.store == "redis"]
            title = (
                f"{kind} ({what}, c={concurrency}): {args.rounds} rounds of {requests:,} "
                "requests per set-up and kind; server CPU (user + system) from its CPU "
                "clocks; medians"
            )
            table(title, servers, check, kind == "uvicorn")
    load = os.getloadavg()
    print(f"\nload average after: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")


if __name__ == "__main__":
    main()
