"""`pullstats proxy` against the registry it fronts, side by side in one run.

    python benchmarks/bench_proxy.py [--blob-mb 200] [--requests 500]

Starts a CNCF distribution registry (`docker-registry`) and `pullstats proxy`
in front of it (statistics on, embedded memory store), pushes one image with a
large layer, then measures, interleaved: manifest GET latency (median) and
blob download throughput, direct vs through the proxy. Prints one table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx2

MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_serving(url: str, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(500):
        if proc.poll() is not None:
            raise SystemExit(f"bench: {proc.args} exited with {proc.returncode}")
        try:
            httpx2.get(url, timeout=0.5)
            return
        except httpx2.TransportError:
            time.sleep(0.02)
    raise SystemExit(f"bench: {url} never answered")


@contextmanager
def serve(
    args: list[str], url: str, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        wait_until_serving(url, proc)
        yield proc
    finally:
        proc.terminate()
        proc.wait(10)


@contextmanager
def registry(tmp: Path) -> Iterator[str]:
    binary = shutil.which("docker-registry") or shutil.which("registry")
    if binary is None:
        raise SystemExit("bench: docker-registry not found (apt-get install docker-registry)")
    address = f"127.0.0.1:{free_port()}"
    config = {
        "version": "0.1",
        "log": {"level": "error", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(tmp / "storage")}},
        "http": {"addr": address},
    }
    (tmp / "config.yml").write_text(json.dumps(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    with serve([binary, "serve", str(tmp / "config.yml")], f"http://{address}/v2/", env):
        yield f"http://{address}"


def push_blob(
    client: httpx2.Client, base: str, repo: str, chunks: Iterator[bytes], digest: str
) -> None:
    start = client.post(f"{base}/v2/{repo}/blobs/uploads/")
    start.raise_for_status()
    location = start.headers["location"]
    upload = httpx2.URL(location if location.startswith("http") else base + location)
    done = client.put(
        upload.copy_merge_params({"digest": digest}),
        content=chunks,
        headers={"Content-Type": "application/octet-stream"},
    )
    done.raise_for_status()


def seed(base: str, blob_mb: int) -> tuple[str, str, int]:
    """Push an image with a `blob_mb` layer; return (manifest digest, layer digest, size)."""
    block = hashlib.sha256(b"pullstats").digest() * (1 << 15)  # 1 MiB, incompressible enough
    size = blob_mb * len(block)
    layer_hash = hashlib.sha256()
    for _ in range(blob_mb):
        layer_hash.update(block)
    layer = "sha256:" + layer_hash.hexdigest()
    config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    with httpx2.Client(timeout=120) as client:
        push_blob(client, base, "bench/app", iter([config]), config_digest)
        push_blob(client, base, "bench/app", (block for _ in range(blob_mb)), layer)
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
                        "size": size,
                    }
                ],
            }
        ).encode()
        put = client.put(
            f"{base}/v2/bench/app/manifests/v1",
            content=manifest,
            headers={"Content-Type": MANIFEST},
        )
        put.raise_for_status()
    return put.headers["docker-content-digest"], layer, size


def manifest_latency(client: httpx2.Client, bases: list[str], n: int) -> list[float]:
    samples: list[list[float]] = [[] for _ in bases]
    for _ in range(n):
        for i, base in enumerate(bases):  # interleaved: same machine state for both
            t0 = time.perf_counter()
            r = client.get(f"{base}/v2/bench/app/manifests/v1", headers={"Accept": MANIFEST})
            samples[i].append(time.perf_counter() - t0)
            assert r.status_code == 200
    return [statistics.median(s) for s in samples]


def blob_throughput(client: httpx2.Client, base: str, layer: str, size: int) -> float:
    t0 = time.perf_counter()
    received = 0
    with client.stream("GET", f"{base}/v2/bench/app/blobs/{layer}") as r:
        for chunk in r.iter_raw(1 << 20):
            received += len(chunk)
    elapsed = time.perf_counter() - t0
    assert received == size, (received, size)
    return size / elapsed / 2**20


def curl_throughput(base: str, layer: str) -> float | None:
    """The same download by curl (a client as fast as the Go clients), if installed."""
    curl = shutil.which("curl")
    if curl is None:
        return None
    out = subprocess.run(
        [
            curl,
            "-s",
            "-o",
            os.devnull,
            "-w",
            "%{speed_download}",
            f"{base}/v2/bench/app/blobs/{layer}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return float(out) / 2**20


def rss_mib(pid: int) -> tuple[float, float]:
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--blob-mb", type=int, default=200, help="layer size in MiB (default 200)")
    parser.add_argument(
        "--requests", type=int, default=500, help="manifest GETs per side (default 500)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="blob downloads per side (default 3)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, registry(Path(tmp)) as direct:
        manifest, layer, size = seed(direct, args.blob_mb)
        port = free_port()
        proxied = f"http://127.0.0.1:{port}"
        env = {**os.environ, "PULL_METRICS_FLUSH_INTERVAL": "0.5"}
        env.pop("PULL_METRICS_REDIS", None)
        env.pop("USER_EVENTS_REDIS", None)
        command = [
            sys.executable,
            "-m",
            "pullstats_middleware.cli",
            "proxy",
            "--upstream",
            direct,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ]
        with serve(command, f"{proxied}/v2/", env) as proxy, httpx2.Client(timeout=120) as client:
            manifest_latency(client, [direct, proxied], 50)  # warm up both
            direct_ms, proxy_ms = (
                x * 1000 for x in manifest_latency(client, [direct, proxied], args.requests)
            )
            rss_before, _ = rss_mib(proxy.pid)
            direct_mbs, proxy_mbs = [], []
            for _ in range(args.rounds):
                direct_mbs.append(blob_throughput(client, direct, layer, size))
                proxy_mbs.append(blob_throughput(client, proxied, layer, size))
            rss_after, peak = rss_mib(proxy.pid)
            curl_direct = [curl_throughput(direct, layer) for _ in range(args.rounds)]
            curl_proxy = [curl_throughput(proxied, layer) for _ in range(args.rounds)]
            stats = client.get(
                f"{proxied}/api/v1/repository/bench/app/tag/v1/pull_statistics"
            ).json()
    d_mbs, p_mbs = statistics.median(direct_mbs), statistics.median(proxy_mbs)
    blob = f"{args.blob_mb} MiB blob download, median of {args.rounds}"
    rows = [
        ("figure", "through proxy", "direct (same run)", "ratio / difference", "target"),
        (
            f"manifest GET, median of {args.requests}",
            f"{proxy_ms:.2f} ms",
            f"{direct_ms:.2f} ms",
            f"+{proxy_ms - direct_ms:.2f} ms",
            "",
        ),
        (
            f"{blob}, httpx2 client",
            f"{p_mbs:,.0f} MiB/s",
            f"{d_mbs:,.0f} MiB/s",
            f"{p_mbs / d_mbs:.0%}",
            "≥ 80%",
        ),
    ]
    if None not in curl_direct + curl_proxy:
        c_direct = statistics.median(x for x in curl_direct if x is not None)
        c_proxy = statistics.median(x for x in curl_proxy if x is not None)
        rows.append(
            (
                f"{blob}, curl client",
                f"{c_proxy:,.0f} MiB/s",
                f"{c_direct:,.0f} MiB/s",
                f"{c_proxy / c_direct:.0%}",
                "≥ 80%",
            )
        )
    rows += [
        (
            "proxy RSS before / after the downloads",
            f"{rss_before:.0f} / {rss_after:.0f} MiB",
            "",
            f"peak {peak:.0f} MiB",
            "constant memory",
        ),
        (
            "manifest pulls counted by the proxy",
            str(stats["tag_pull_count"]),
            "",
            "",
            f"{50 + args.requests} GETs sent",
        ),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for n, r in enumerate(rows):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))
    del manifest


if __name__ == "__main__":
    main()
