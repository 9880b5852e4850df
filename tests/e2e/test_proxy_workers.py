"""`pullstats proxy --workers N`: several processes on one port, counts exact.

Real processes over real HTTP: a redis-server, a docker-registry, and the
proxy command with three workers in front of it. The proxy's flush interval is
a minute, so nothing reaches Redis while the test runs: every count that lands
was written by a worker's shutdown flush after the master's SIGTERM. Clients
keep pulling while the master is told to stop (or, with SIGHUP, to replace its
workers one by one); afterwards Redis must hold exactly the pulls the clients
saw answered (none lost, none doubled).
And the access log: off unless `--access-log` asks for it.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from pullstats_middleware import PullMetrics, PullStatsConfig
from pullstats_middleware.config import RedisSettings
from tests.e2e.services import DockerRegistry, PullstatsProxy, RedisServer

pytestmark = pytest.mark.e2e

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
REPO, TAGS = "workers/app", ("a", "b", "c")
CLIENTS = 12  # keep-alive connections, spread over the workers by the kernel


def push(base: str) -> None:
    """One small image under each of TAGS, straight to the registry."""
    config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    digest = "sha256:" + hashlib.sha256(config).hexdigest()
    with httpx2.Client(base_url=base, trust_env=False, timeout=30) as client:
        start = client.post(f"/v2/{REPO}/blobs/uploads/")
        assert start.status_code == 202, start.text
        upload = httpx2.URL(start.headers["location"]).copy_merge_params({"digest": digest})
        assert client.put(upload, content=config).status_code == 201
        manifest = {
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": digest,
                "size": len(config),
            },
            "layers": [],
        }
        for tag in TAGS:
            put = client.put(
                f"/v2/{REPO}/manifests/{tag}",
                content=json.dumps(manifest).encode(),
                headers={"content-type": MANIFEST},
            )
            assert put.status_code == 201, put.text


def descendants(pid: int) -> set[int]:
    found, todo = set(), [pid]
    while todo:
        current = todo.pop()
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            children = [int(c) for c in task.read_text().split()]
            found.update(children)
            todo += children
    return found


def serving_pids(pids: set[int], port: int) -> set[int]:
    """The processes among `pids` holding an established connection on local `port`."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                inodes.add(fields[9])
    holders = set()
    for pid in pids:
        try:
            links = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
        except (FileNotFoundError, PermissionError):
            continue
        if any(link[8:-1] in inodes for link in links if link.startswith("socket:[")):
            holders.add(pid)
    return holders


@pytest.fixture()
def proxy(registry: DockerRegistry, redis: RedisServer) -> Iterator[PullstatsProxy]:
    push(registry.url)
    env = {"PULL_METRICS_KEY_PREFIX": f"workers-{time.monotonic_ns()}"}
    with PullstatsProxy(registry.url, redis.url, flush_interval=60, workers=3, env=env) as p:
        yield p


def totals(redis_url: str, prefix: str) -> int:
    metrics = PullMetrics(PullStatsConfig(redis=RedisSettings(url=redis_url), key_prefix=prefix))
    try:
        return sum(metrics.get_tag_statistics(REPO, tag)["tag_pull_count"] for tag in TAGS)
    finally:
        metrics.close()


class Pullers:
    """CLIENTS threads, each pulling over its own keep-alive connection until stopped;
    a request without an answer (the workers going or coming) is retried, uncounted."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.answered = [0] * CLIENTS
        self.failed = [0] * CLIENTS
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._pull, args=(n,)) for n in range(CLIENTS)]

    def _pull(self, n: int) -> None:
        headers = {"accept": MANIFEST}
        with httpx2.Client(base_url=self.base, trust_env=False, timeout=10) as client:
            i = 0
            while not self.stop.is_set():
                try:
                    r = client.get(f"/v2/{REPO}/manifests/{TAGS[i % 3]}", headers=headers)
                except httpx2.TransportError:
                    self.failed[n] += 1
                    time.sleep(0.01)
                    continue
                assert r.status_code == 200, r.text
                self.answered[n] += 1
                i += 1

    def __enter__(self) -> Pullers:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)

    def wait_for(self, answered: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while sum(self.answered) < answered:
            assert time.monotonic() < deadline, f"only {sum(self.answered)} pulls answered"
            time.sleep(0.02)


def wait_for_log(proxy: PullstatsProxy, line: str, times: int, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while proxy.logs().count(line) < times:
        assert time.monotonic() < deadline, proxy.logs()[-4000:]
        time.sleep(0.05)


def test_workers_count_exactly_and_flush_when_the_master_is_terminated(
    proxy: PullstatsProxy, redis: RedisServer
) -> None:
    prefix = proxy.extra_env["PULL_METRICS_KEY_PREFIX"]
    assert proxy.pid is not None and proxy.process is not None
    # The master listens at once; a client that connects before the other workers
    # accept would leave them idle, and the spread below would test the start-up race.
    wait_for_log(proxy, "Application startup complete.", 3)
    with Pullers(proxy.url) as pullers:
        pullers.wait_for(600)
        workers = descendants(proxy.pid)
        serving = serving_pids(workers, proxy.port)
        before = totals(redis.url, prefix)
        proxy.process.terminate()  # SIGTERM to the master only, mid-run
        proxy.process.wait(60)
    assert len(serving) >= 2, f"one worker took every connection: {serving} of {workers}"
    assert before == 0  # nothing flushed yet: what lands below is the shutdown flushes'
    assert proxy.process.returncode == 0
    assert sum(pullers.failed) > 0  # the clients were still pulling when the workers stopped
    answered, counted = sum(pullers.answered), totals(redis.url, prefix)
    print(
        f"\n3 workers ({len(serving)} held client connections), SIGTERM: {answered} pulls "
        f"answered, {counted} counted, {sum(pullers.failed)} requests unanswered meanwhile"
    )
    assert counted == answered
    assert not any(Path(f"/proc/{pid}").exists() for pid in serving)
    log = proxy.logs()
    assert log.count("Application shutdown complete.") == 3
    assert "Traceback" not in log, log[-4000:]
    assert f'"GET /v2/{REPO}/manifests/a HTTP/1.1" 200' in log  # --access-log


def test_sighup_replaces_the_workers_and_loses_nothing(
    proxy: PullstatsProxy, redis: RedisServer
) -> None:
    prefix = proxy.extra_env["PULL_METRICS_KEY_PREFIX"]
    assert proxy.pid is not None and proxy.process is not None
    wait_for_log(proxy, "Application startup complete.", 3)
    with Pullers(proxy.url) as pullers:
        pullers.wait_for(300)
        old = serving_pids(descendants(proxy.pid), proxy.port)
        os.kill(proxy.pid, signal.SIGHUP)
        wait_for_log(proxy, "Application startup complete.", 6)  # three new workers
        wait_for_log(proxy, "Application shutdown complete.", 3)  # the old ones gone
        flushed_by_the_old = totals(redis.url, prefix)
        reloaded = sum(pullers.answered)
        pullers.wait_for(reloaded + 300)  # the new workers serve
        new = serving_pids(descendants(proxy.pid), proxy.port)
        proxy.process.terminate()
        proxy.process.wait(60)
    answered, counted = sum(pullers.answered), totals(redis.url, prefix)
    print(
        f"\n3 workers, SIGHUP then SIGTERM: {answered} pulls answered, {counted} counted "
        f"({flushed_by_the_old} flushed by the replaced workers), "
        f"{sum(pullers.failed)} requests unanswered meanwhile"
    )
    assert old and new and not old & new  # other processes serve after the reload
    assert flushed_by_the_old > 0  # the replaced workers flushed on their way out
    assert counted == answered
    assert "Traceback" not in proxy.logs(), proxy.logs()[-4000:]


def test_several_workers_need_redis(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from pullstats_middleware.cli import main

    for key in [k for k in os.environ if k.startswith(("PULL_METRICS_", "USER_EVENTS_"))]:
        monkeypatch.delenv(key)
    code = main(["proxy", "--upstream", "http://127.0.0.1:5000", "--workers", "2"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines() == [
        "pullstats: error: --workers 2 needs Redis (--redis-url or PULL_METRICS_REDIS): "
        "the memory store is per process, each worker would count apart"
    ]


def test_access_log_is_off_unless_asked(registry: DockerRegistry, tmp_path: Path) -> None:
    push(registry.url)
    logs = {}
    for flags in ([], ["--access-log"]):
        proxy = PullstatsProxy(registry.url, "redis://unused")
        command = [sys.executable, "-m", "pullstats_middleware.cli", "proxy"]
        command += ["--upstream", registry.url, "--port", str(proxy.port), *flags]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PULL_METRICS_")}
        out = tmp_path / f"log{len(flags)}"
        with open(out, "wb") as sink:
            process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env)
        try:
            with httpx2.Client(trust_env=False, timeout=5) as client:
                deadline = time.monotonic() + 30
                while True:
                    try:
                        answer = client.get(
                            f"{proxy.url}/v2/{REPO}/manifests/a", headers={"accept": MANIFEST}
                        )
                        break
                    except httpx2.TransportError:
                        assert time.monotonic() < deadline and process.poll() is None
                        time.sleep(0.05)
                assert answer.status_code == 200, answer.text
        finally:
            process.terminate()
            process.wait(30)
            proxy.close()
        logs[bool(flags)] = out.read_text()
    line = f'"GET /v2/{REPO}/manifests/a HTTP/1.1" 200'
    assert line in logs[True]
    assert line not in logs[False] and "Application startup complete." in logs[False]
