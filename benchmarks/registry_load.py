"""What the proxy benchmarks share: a docker-registry with one seeded image, the
load tools, and the CPU clock of a process tree.

Load is driven by tools written in C so that the client's own CPU does not
decide the result on a 2-core machine: `h2load --h1` (HTTP/1.1, keep-alive, a
fixed number of requests, so the counts can be checked exactly) for
throughput, `curl` for blobs. The one-at-a-time latency is timed from Python
on one keep-alive `http.client` connection per set-up, interleaved, so the
client's cost is the same for every row.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MANIFEST_PATH = "/v2/bench/app/manifests/v1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def need(binary: str, package: str) -> str:
    path = shutil.which(binary)
    if path is None:
        raise SystemExit(f"bench: {binary} not found (apt-get install {package})")
    return path


def status(url: str) -> int | None:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.netloc, timeout=1)
    try:
        conn.request("GET", parts.path)
        return conn.getresponse().status
    except OSError:
        return None
    finally:
        conn.close()


@contextmanager
def serve(
    args: list[str], url: str, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Run `args` until `url` answers; stop it (SIGTERM, then wait) on the way out."""
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        for _ in range(1500):
            if proc.poll() is not None:
                raise SystemExit(f"bench: {args} exited with {proc.returncode}")
            if status(url) is not None:
                break
            time.sleep(0.02)
        else:
            raise SystemExit(f"bench: {url} never answered")
        yield proc
    finally:
        proc.terminate()
        proc.wait(30)


@contextmanager
def registry(tmp: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    binary = shutil.which("docker-registry") or need("registry", "docker-registry")
    address = f"127.0.0.1:{free_port()}"
    config = {
        "version": "0.1",
        "log": {"level": "error", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(tmp / "storage")}},
        "http": {"addr": address},
    }
    (tmp / "config.yml").write_text(json.dumps(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    with serve([binary, "serve", str(tmp / "config.yml")], f"http://{address}/v2/", env) as proc:
        yield f"http://{address}", proc


def _push_blob(conn: http.client.HTTPConnection, data: Iterator[bytes], digest: str) -> None:
    conn.request("POST", "/v2/bench/app/blobs/uploads/")
    answer = conn.getresponse()
    answer.read()
    location = urlsplit(answer.headers["location"])
    sep = "&" if location.query else ""
    target = f"{location.path}?{location.query}{sep}digest={digest}"
    conn.request(
        "PUT", target, body=data, headers={"Content-Type": "application/octet-stream"}
    )  # an iterator: sent chunked
    done = conn.getresponse()
    done.read()
    assert done.status == 201, (done.status, target)


def seed(base: str, blob_mb: int) -> tuple[str, str, int]:
    """Push an image with a `blob_mb` MiB layer: (manifest digest, layer digest, size)."""
    block = hashlib.sha256(b"pullstats").digest() * (1 << 15)  # 1 MiB
    layer_hash = hashlib.sha256()
    for _ in range(blob_mb):
        layer_hash.update(block)
    layer = "sha256:" + layer_hash.hexdigest()
    config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    conn = http.client.HTTPConnection(urlsplit(base).netloc, timeout=120)
    _push_blob(conn, iter([config]), config_digest)
    _push_blob(conn, (block for _ in range(blob_mb)), layer)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer,
                    "size": blob_mb * len(block),
                }
            ],
        }
    ).encode()
    conn.request("PUT", MANIFEST_PATH, body=manifest, headers={"Content-Type": MANIFEST})
    put = conn.getresponse()
    put.read()
    conn.close()
    assert put.status == 201, put.status
    return put.headers["docker-content-digest"], layer, blob_mb * len(block)


def h2load(url: str, requests: int, concurrency: int) -> tuple[float, int]:
    """GET `url` `requests` times over `concurrency` keep-alive HTTP/1.1 connections:
    (requests per second, how many were answered 2xx)."""
    command = [need("h2load", "nghttp2-client"), "--h1", "-t", "1", "-H", f"accept: {MANIFEST}"]
    out = subprocess.run(
        [*command, "-n", str(requests), "-c", str(concurrency), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rate = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    codes = re.search(r"status codes: (\d+) 2xx", out)
    if rate is None or codes is None:
        raise SystemExit(f"bench: cannot read h2load's output:\n{out}")
    return float(rate.group(1)), int(codes.group(1))


def one_at_a_time(bases: list[str], n: int) -> list[list[float]]:
    """`n` manifest GETs per base, one at a time and interleaved: seconds per request."""
    conns = [http.client.HTTPConnection(urlsplit(b).netloc, timeout=30) for b in bases]
    samples: list[list[float]] = [[] for _ in bases]
    headers = {"Accept": MANIFEST}
    for _ in range(n):
        for conn, times in zip(conns, samples, strict=True):
            t0 = time.perf_counter()
            conn.request("GET", MANIFEST_PATH, headers=headers)
            answer = conn.getresponse()
            answer.read()
            times.append(time.perf_counter() - t0)
            assert answer.status == 200, answer.status
    for conn in conns:
        conn.close()
    return samples


def percentile(samples: list[float], p: float) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[int(p) - 1]


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of `pid` and all its living descendants.

    Read from each process's CPU-time clock (Linux: clock_getcpuclockid(), which
    Python does not wrap, is the clock id `~pid << 3 | 2`), in nanoseconds, with
    the time of threads that exited; /proc/<pid>/stat counts in clock ticks (10 ms,
    0.5 µs a request over 20,000)."""
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            total += time.clock_gettime(_cpu_clock(current))
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except OSError:  # it exited: FileNotFoundError, or EINVAL from the clock
            continue
    return total


def _cpu_clock(pid: int) -> int:
    """The id of the CPU-time clock of process `pid` (the kernel's MAKE_PROCESS_CPUCLOCK
    of CPUCLOCK_SCHED: user + system time, as utime + stime)."""
    return (~pid << 3) | 2


def curl_mib_s(url: str) -> float:
    out = subprocess.run(
        [need("curl", "curl"), "-s", "-o", os.devnull, "-w", "%{speed_download}", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return float(out) / 2**20
