"""`pullstats proxy` against the registry it fronts and against nginx, in one run.

    python benchmarks/bench_proxy.py [--requests 5000] [--rounds 3] [--blob-mb 200]

Starts a CNCF distribution registry (`docker-registry`), a redis-server, nginx
(`proxy_pass` with upstream keep-alive and buffering on, when nginx is
installed), `pullstats proxy` with one worker and with two, and the split
deployment (nginx on the shipped examples/nginx/pullstats.conf, manifests to
a pullstats proxy of its own, blobs straight to the registry), all in front
of the same registry, and pushes one image with a large layer. Then, in
interleaved rounds: manifest GETs by tag at concurrency 32 (h2load, HTTP/1.1
keep-alive) with the CPU each set-up's processes used meanwhile; manifest GETs
one at a time (p50, p99); a blob downloaded by curl. Medians are printed, and
the exact-count check: what each proxy wrote to Redis (read after SIGTERM,
when its workers have flushed) against the manifest GETs it answered.
Needs docker-registry, redis-server, h2load (nghttp2-client) and curl.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from figures import print_table  # type: ignore[import-not-found]

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from registry_load import (  # type: ignore[import-not-found]
    MANIFEST_PATH,
    curl_mib_s,
    free_port,
    h2load,
    need,
    one_at_a_time,
    percentile,
    registry,
    seed,
    serve,
    tree_cpu,
)

from pullstats_middleware import PullMetrics, PullStatsConfig
from pullstats_middleware.config import RedisSettings
from tests.e2e.nginx import NginxSplit
from tests.e2e.services import RedisServer

NGINX = """
daemon off;
{user}
worker_processes auto;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    upstream registry {{ server {upstream}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 0;
        location / {{
            proxy_pass http://registry;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_buffering on;
        }}
    }}
}}
"""


@dataclass
class Setup:
    name: str
    base: str
    pids: list[int]  # whose CPU is this set-up's own (the registry's is counted apart)
    prefix: str = ""  # the Redis key prefix of a pullstats proxy
    rates: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    registry_cpu: list[float] = field(default_factory=list)
    blob: list[float] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)
    sent: int = 0  # manifest GETs answered 200


def start_nginx(stack: ExitStack, tmp: Path, upstream: str) -> Setup | None:
    if shutil.which("nginx") is None:
        print("bench: nginx not installed (apt-get install nginx): its row is left out")
        return None
    port = free_port()
    conf = tmp / "nginx.conf"
    # As root, the workers would be nobody, who cannot write buffered blobs into `tmp`.
    user = "user root;" if os.geteuid() == 0 else ""
    upstream = upstream.removeprefix("http://")
    conf.write_text(NGINX.format(user=user, tmp=tmp, upstream=upstream, port=port))
    command = [need("nginx", "nginx"), "-c", str(conf), "-p", str(tmp), "-e", str(tmp / "e.log")]
    proc = stack.enter_context(serve(command, f"http://127.0.0.1:{port}/v2/"))
    return Setup("nginx proxy_pass, buffering on", f"http://127.0.0.1:{port}", [proc.pid])


def start_pullstats(
    stack: ExitStack, upstream: str, redis_url: str, workers: int, behind: str = ""
) -> Setup:
    """`behind`: the address of the server in front, whose X-Forwarded-For is trusted."""
    port, prefix = free_port(), f"bench-{workers}{behind and '-split'}-{os.getpid()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULL_METRICS_")}
    env["PULL_METRICS_KEY_PREFIX"] = prefix
    if behind:
        env["PULL_METRICS_TRUSTED_PROXIES"] = behind
    command = [
        sys.executable, "-m", "pullstats_middleware.cli", "proxy", "--upstream", upstream,
        "--port", str(port), "--redis-url", redis_url, "--log-level", "warning",
        "--workers", str(workers),
    ]  # fmt: skip
    proc = stack.enter_context(serve(command, f"http://127.0.0.1:{port}/v2/", env))
    name = f"pullstats proxy, {workers} worker{'s' if workers > 1 else ''}"
    return Setup(name, f"http://127.0.0.1:{port}", [proc.pid], prefix)


def start_split(stack: ExitStack, upstream: str, redis_url: str) -> Setup | None:
    """The shipped recipe (examples/nginx/pullstats.conf): nginx sends manifests to a
    pullstats proxy of one worker, all else to the registry. Its CPU is both's."""
    if shutil.which("nginx") is None:
        return None
    proxy = start_pullstats(stack, upstream, redis_url, 1, behind="127.0.0.1")
    registry_address, proxy_address = (u.removeprefix("http://") for u in (upstream, proxy.base))
    # Like the nginx row: a worker per core, no access log.
    nginx = NginxSplit(registry_address, proxy_address, workers="auto", access_log=False)
    stack.enter_context(nginx)
    assert nginx.pid is not None
    name = "split: nginx, manifests to pullstats proxy"
    return Setup(name, nginx.url, [nginx.pid, *proxy.pids], proxy.prefix)


def counted(redis_url: str, prefix: str) -> int:
    settings = RedisSettings(url=redis_url)
    metrics = PullMetrics(PullStatsConfig(redis=settings, key_prefix=prefix))
    try:
        return int(metrics.get_tag_statistics("bench/app", "v1")["tag_pull_count"])
    finally:
        metrics.close()


def measure(setups: list[Setup], registry_pid: int, args: argparse.Namespace, layer: str) -> None:
    for s in setups:  # warm up: connections, pools, caches
        _, ok = h2load(s.base + MANIFEST_PATH, 500, 32)
        s.sent += ok
    for _ in range(args.rounds):
        for s in setups:
            mine, theirs = sum(tree_cpu(p) for p in s.pids), tree_cpu(registry_pid)
            rate, ok = h2load(s.base + MANIFEST_PATH, args.requests, 32)
            s.sent += ok
            s.rates.append(rate)
            s.cpu.append((sum(tree_cpu(p) for p in s.pids) - mine) / ok * 10_000)
            s.registry_cpu.append((tree_cpu(registry_pid) - theirs) / ok * 10_000)
    for s, samples in zip(setups, one_at_a_time([s.base for s in setups], 1000), strict=True):
        s.latency, s.sent = samples, s.sent + len(samples)
    for _ in range(args.rounds):
        for s in setups:
            s.blob.append(curl_mib_s(f"{s.base}/v2/bench/app/blobs/{layer}"))


def table(setups: list[Setup], counts: dict[str, int], args: argparse.Namespace) -> None:
    direct = setups[0]
    p50_0 = statistics.median(direct.latency)
    rows = [
        (
            "set-up", "req/s c=32", "of direct*", "p50", "p50 added", "p99",
            "CPU s/10k: own", "registry", f"{args.blob_mb} MiB blob, curl",
        )
    ]  # fmt: skip
    for s in setups:
        rate, p50 = statistics.median(s.rates), statistics.median(s.latency)
        # Each round against the direct run next to it: the machine's load drifts.
        ratio = statistics.median(r / d for r, d in zip(s.rates, direct.rates, strict=True))
        own = "—" if s is direct else f"{statistics.median(s.cpu):.1f} s"
        rows.append(
            (
                s.name,
                f"{rate:,.0f}",
                f"{ratio:.2f}",
                f"{p50 * 1000:.2f} ms",
                "" if s is direct else f"{(p50 - p50_0) * 1000:+.2f} ms",
                f"{percentile(s.latency, 99) * 1000:.2f} ms",
                own,
                f"{statistics.median(s.registry_cpu):.1f} s",
                f"{statistics.median(s.blob):,.0f} MiB/s",
            )
        )
    print(
        f"manifest GETs by tag: median of {args.rounds} interleaved rounds of {args.requests} "
        f"(h2load --h1); one at a time: 1,000 each; blob: median of {args.rounds}"
    )
    print_table(rows[0], rows[1:])
    print("* median of each round's rate over the direct rate of the same round")
    print("targets for pullstats proxy: ≥ 0.75 of direct, ≤ +0.6 ms p50, ≤ 4 s CPU per 10,000")
    nginx = next((s for s in setups if s.name.startswith("nginx")), None)
    split = next((s for s in setups if s.name.startswith("split")), None)
    if nginx and split:
        blob = statistics.median(b / n for b, n in zip(split.blob, nginx.blob, strict=True))
        print(
            f"split: CPU s/10k is nginx's and the proxy's together; blob {blob:.2f} of nginx "
            "proxy_pass (median of each round's ratio; target ≥ 0.95)"
        )
    for s in setups:
        if s.prefix:
            got = counts[s.prefix]
            verdict = "exact" if got == s.sent else f"OFF BY {got - s.sent:+d}"
            print(f"{s.name}: {s.sent:,} manifest GETs answered, {got:,} counted ({verdict})")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=5000, help="GETs per round (5000)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (3)")
    parser.add_argument("--blob-mb", type=int, default=200, help="layer size in MiB (200)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        direct, registry_proc = stack.enter_context(registry(Path(tmp)))
        _, layer, _ = seed(direct, args.blob_mb)
        redis_url = stack.enter_context(RedisServer()).url
        setups = [Setup("registry directly", direct, [])]
        nginx = start_nginx(stack, Path(tmp), direct)
        setups += [nginx] if nginx else []
        with ExitStack() as proxies:
            setups += [start_pullstats(proxies, direct, redis_url, n) for n in (1, 2)]
            split = start_split(proxies, direct, redis_url)
            setups += [split] if split else []
            measure(setups, registry_proc.pid, args, layer)
        # The proxies have stopped: every worker flushed on its way out.
        counts = {s.prefix: counted(redis_url, s.prefix) for s in setups if s.prefix}
    table(setups, counts, args)


if __name__ == "__main__":
    main()
