"""Many workers, restarts and kills, over real HTTP into a real Redis: gunicorn with 4 sync
workers around the Flask example (--preload), gunicorn with 4 uvicorn workers and
`uvicorn --workers 4` around the Starlette example.

Every pull a client saw answered in full is counted once, whatever the master is
sent mid-run (SIGTERM: stop; SIGHUP: graceful reload); SIGKILL of a worker loses
at most what that worker answered within one flush interval before it died.
"""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from tests.e2e.services import RedisServer, free_port

ROOT = Path(__file__).resolve().parents[2]
TAG_KEY = "pull_metrics/tag/library/hello/v1"
FLUSH_INTERVAL = 0.5

SERVERS: dict[str, Callable[[int], list[str]]] = {
    "gunicorn-sync": lambda port: [
        sys.executable, "-m", "gunicorn", "--preload", "-w", "4", "-k", "sync",
        "-b", f"127.0.0.1:{port}", "--graceful-timeout", "20", "flask_worker_app:app",
    ],
    "gunicorn-uvicorn": lambda port: [
        sys.executable, "-m", "gunicorn", "-w", "4", "-k", "uvicorn_worker.UvicornWorker",
        "-b", f"127.0.0.1:{port}", "--graceful-timeout", "20", "starlette_worker_app:app",
    ],
    "uvicorn": lambda port: [
        sys.executable, "-m", "uvicorn", "--workers", "4", "--port", str(port),
        "--no-proxy-headers", "--no-access-log", "--timeout-graceful-shutdown", "20",
        # a reload gives up (keeping the old workers) when a new one is not ready in
        # time: on a busy machine, starting one takes longer than the default 5 s
        "--timeout-worker-healthcheck", "60",
        "starlette_worker_app:app",
    ],
}  # fmt: skip


@dataclass
class Server:
    kind: str
    redis_url: str
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> Server:
        paths = [ROOT / "tests" / "e2e", ROOT / "examples", ROOT]
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(str(path) for path in paths),
            "PULL_METRICS_REDIS": self.redis_url,
            "PULL_METRICS_FLUSH_INTERVAL": str(FLUSH_INTERVAL),
        }
        self.process = subprocess.Popen(
            SERVERS[self.kind](self.port), env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while len(self.workers()) < 4 or not self._answers():
            assert self.process.poll() is None, self.process.stderr.read().decode()[-3000:]  # type: ignore[union-attr]
            assert time.monotonic() < deadline, f"{self.kind} did not start"
            time.sleep(0.2)
        return self

    def _answers(self) -> bool:
        try:  # a HEAD by tag resolves, it does not count
            return head(self.port, "/v2/library/hello/manifests/v1", "probe")[0] == 200
        except OSError:
            return False

    def workers(self) -> set[int]:
        assert self.process is not None
        return children(self.process.pid)

    def signal(self, number: int) -> None:
        assert self.process is not None
        os.kill(self.process.pid, number)

    def wait(self, timeout: float = 60) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)


def children(pid: int) -> set[int]:
    """The processes `pid` started (uvicorn's supervisor may hold them one level down)."""
    found: set[int] = set()
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            text = Path(f"/proc/{pid}/task/{task}/children").read_text()
            found.update(int(child) for child in text.split())
    except FileNotFoundError:
        return set()
    # uvicorn --workers also starts a resource tracker: not a worker
    return {c for c in found if "resource_tracker" not in _cmdline(c)}


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except FileNotFoundError:
        return ""


def head(port: int, path: str, agent: str) -> tuple[int, str, int]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("HEAD", path, headers={"User-Agent": agent})
        response = connection.getresponse()
        response.read()
        pid = int(response.getheader("X-Worker-Pid") or 0)
        return response.status, response.getheader("Docker-Content-Digest") or "", pid
    finally:
        connection.close()


def get(port: int, path: str, agent: str) -> tuple[int, int]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path, headers={"User-Agent": agent})
        response = connection.getresponse()
        body = response.read()
        whole = len(body) == int(response.getheader("Content-Length") or -1)
        return (response.status if whole else 0), int(response.getheader("X-Worker-Pid") or 0)
    finally:
        connection.close()


class Pullers:
    """Client threads pulling `library/hello:v1` until stopped; they keep a record of
    every pull answered in full: (when, which worker)."""

    def __init__(self, port: int, threads: int = 6) -> None:
        self.port = port
        self.answered: list[tuple[float, int]] = []
        self.failures = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> Pullers:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                status, pid = get(self.port, "/v2/library/hello/manifests/v1", "docker/24.0")
            except (OSError, http.client.HTTPException):  # a worker killed mid-answer
                status, pid = 0, 0
            with self._lock:
                if status == 200:
                    self.answered.append((time.monotonic(), pid))
                else:
                    self.failures += 1
            if status != 200:
                time.sleep(0.05)

    def wait_for_workers(self, count: int, timeout: float = 60) -> set[int]:
        """Until `count` workers have answered (one may win every accept for a while)."""
        deadline = time.monotonic() + timeout
        while len(served := {pid for _, pid in list(self.answered)}) < count:
            assert time.monotonic() < deadline, f"only workers {served} answered"
            time.sleep(0.05)
        return served

    def wait_for(self, count: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while len(self.answered) < count:
            assert time.monotonic() < deadline, f"only {len(self.answered)} pulls answered"
            time.sleep(0.05)


@pytest.fixture
def counts(redis_server: RedisServer) -> Iterator[Callable[[], tuple[int, int]]]:
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()

    def read() -> tuple[int, int]:
        tag = client.hget(TAG_KEY, "pull_count")
        manifests = [k for k in client.keys("pull_metrics/manifest/library/hello/*")]
        manifest = client.hget(manifests[0], "pull_count") if manifests else 0
        return int(tag or 0), int(manifest or 0)

    yield read
    client.close()


@pytest.fixture(params=sorted(SERVERS))
def server(request: pytest.FixtureRequest, redis_server: RedisServer) -> Iterator[Server]:
    one = Server(request.param, redis_server.url).start()
    yield one
    one.kill()


def test_sigterm_mid_run_loses_and_doubles_nothing(
    server: Server, counts: Callable[[], tuple[int, int]]
) -> None:
    with Pullers(server.port) as pullers:
        pullers.wait_for(300)
        pullers.wait_for_workers(2)
        server.signal(signal.SIGTERM)
        assert server.wait() == 0
        stopped = len(pullers.answered)
        time.sleep(0.3)
    assert pullers.failures > 0, "the clients never saw the server go: SIGTERM was not mid-run"
    assert len(pullers.answered) == stopped
    assert counts() == (stopped, stopped)


def test_sighup_reloads_workers_and_loses_and_doubles_nothing(
    server: Server, counts: Callable[[], tuple[int, int]]
) -> None:
    before = server.workers()
    with Pullers(server.port) as pullers:
        pullers.wait_for(200)
        server.signal(signal.SIGHUP)
        deadline = time.monotonic() + 240  # uvicorn replaces its workers one by one
        while not (server.workers() and server.workers().isdisjoint(before)):
            assert time.monotonic() < deadline, f"workers not replaced: {server.workers()}"
            time.sleep(0.1)
        reloaded = len(pullers.answered)
        pullers.wait_for(reloaded + 200)
    new_pids = {pid for _, pid in pullers.answered[reloaded:]}
    assert new_pids and new_pids.isdisjoint(before), "the new workers never answered"
    server.signal(signal.SIGTERM)
    assert server.wait() == 0
    answered = len(pullers.answered)
    assert counts() == (answered, answered)


@pytest.mark.parametrize("server", ["gunicorn-sync", "gunicorn-uvicorn"], indirect=True)
def test_sigkill_of_a_worker_loses_at_most_its_last_flush_interval(
    server: Server, counts: Callable[[], tuple[int, int]]
) -> None:
    with Pullers(server.port) as pullers:
        pullers.wait_for(300)
        time.sleep(4 * FLUSH_INTERVAL)  # the victim has flushed a few times before it dies
        victim = pullers.answered[-1][1]
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        deadline = time.monotonic() + 60
        while victim in server.workers() or len(server.workers()) < 4:
            assert time.monotonic() < deadline, "the master did not replace the killed worker"
            time.sleep(0.1)
        pullers.wait_for(len(pullers.answered) + 200)
    server.signal(signal.SIGTERM)
    assert server.wait() == 0
    answered = len(pullers.answered)
    tag, manifest = counts()
    lost = answered - tag
    at_risk = sum(1 for when, pid in pullers.answered
                  if pid == victim and when > killed_at - FLUSH_INTERVAL - 0.5)  # fmt: skip
    total = sum(1 for _, pid in pullers.answered if pid == victim)
    print(f"{server.kind}: SIGKILL of one worker lost {lost} of {answered} pulls; it had "
          f"answered {total}, {at_risk} of them in its last flush interval + 0.5 s")  # fmt: skip
    assert manifest == tag and 0 <= lost <= at_risk < total


@pytest.mark.parametrize("server", ["gunicorn-sync"], indirect=True)
def test_a_head_and_its_get_on_different_workers_pair(
    server: Server, counts: Callable[[], tuple[int, int]]
) -> None:
    pairs, split = 60, 0
    for n in range(pairs):
        agent = f"containerd/1.7 client-{n}"  # a client of its own per pair
        status, digest, head_pid = head(server.port, "/v2/library/hello/manifests/v1", agent)
        assert status == 200
        status, get_pid = get(server.port, f"/v2/library/hello/manifests/{digest}", agent)
        assert status == 200
        split += head_pid != get_pid
    assert split > 0, "every HEAD and its GET went to the same worker"
    server.signal(signal.SIGTERM)
    assert server.wait() == 0
    assert counts() == (pairs, pairs)  # every pair a tag pull, across workers too
