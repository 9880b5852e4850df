"""docs/design.md, "Reliability", against a real redis-server: exact counts, faults,
re-sends, bounds, fork, close."""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import redis

from pullstats_middleware import PullMetrics, PullStatsConfig
from pullstats_middleware.store import MemoryStore, RedisStore
from tests.e2e.services import RedisServer

D = "sha256:" + "d" * 64


def digest(i: int) -> str:
    return f"sha256:{i:064x}"


@pytest.fixture
def server() -> Iterator[RedisServer]:
    """A private server per test: these tests stop and restart it."""
    with RedisServer() as s:
        yield s


def metrics_for(url: str, **config: object) -> PullMetrics:
    settings: dict[str, object] = {"flush_interval": 0.02, **config}
    return PullMetrics(PullStatsConfig(enabled=True, redis={"url": url}, **settings))  # type: ignore[arg-type]


def count(client: redis.Redis, key: str) -> int:
    return int(client.hget(key, "pull_count") or 0)


def pull_from_threads(metrics: PullMetrics, threads: int, each: int, tags: int = 10) -> None:
    def work(n: int) -> None:
        for i in range(each):
            metrics.track_tag_pull("org/app", f"t{(n + i) % tags}", digest((n + i) % tags))

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def test_exact_counts_after_10000_concurrent_pulls_from_8_threads(
    real_redis: redis.Redis, redis_server: RedisServer
) -> None:
    metrics = metrics_for(redis_server.url)
    pull_from_threads(metrics, threads=8, each=1250)
    assert metrics.flush(10)
    tags = [count(real_redis, f"pull_metrics/tag/org/app/t{i}") for i in range(10)]
    manifests = [count(real_redis, f"pull_metrics/manifest/org/app/{digest(i)}") for i in range(10)]
    assert sum(tags) == 10_000 and tags == manifests
    assert all(t == 1000 for t in tags)
    metrics.close()


def test_redis_stopped_and_restarted_mid_run_loses_nothing(server: RedisServer) -> None:
    metrics = metrics_for(server.url)
    client = redis.Redis.from_url(server.url)
    producer = threading.Thread(target=pull_from_threads, args=(metrics, 4, 5000))
    producer.start()
    # SHUTDOWN SAVE keeps what already landed (the server runs without persistence otherwise)
    with contextlib.suppress(redis.ConnectionError):
        client.shutdown(save=True)
    server.stop()
    metrics.track_tag_pull("org/app", "while-down", D)  # certainly pending now
    assert not metrics.flush(0.3)  # the store is down: flush says so, nothing is dropped
    server.start()
    producer.join()
    assert metrics.flush(30)
    total = sum(count(client, f"pull_metrics/tag/org/app/t{i}") for i in range(10))
    assert total == 20_000
    assert count(client, "pull_metrics/tag/org/app/while-down") == 1
    assert metrics.recorder.dropped == 0
    metrics.close()


class ReplyDropper:
    """A TCP relay to Redis that swallows the reply to the first `command` and hangs up,
    which is exactly when redis-py re-sends a command on its own.

    One thread per connection moves bytes both ways with a selector, so the reply
    cannot slip through on another thread: `dropped` counts replies really lost.
    """

    def __init__(self, port: int, command: bytes) -> None:
        self.target = port
        self.command = command
        self.dropped = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self._relay, args=(downstream, upstream), daemon=True).start()

    def _relay(self, downstream: socket.socket, upstream: socket.socket) -> None:
        swallow = False  # the command went upstream: its reply is the next upstream data
        with selectors.DefaultSelector() as selector, downstream, upstream:
            selector.register(downstream, selectors.EVENT_READ, upstream)
            selector.register(upstream, selectors.EVENT_READ, downstream)
            while True:
                for key, _ in selector.select():
                    src: socket.socket = key.fileobj  # type: ignore[assignment]
                    try:
                        data = src.recv(65536)
                    except OSError:
                        return
                    if not data:
                        return
                    if src is upstream and swallow:
                        self.dropped += 1  # the command ran; its reply is lost
                        return
                    key.data.sendall(data)
                    if src is downstream and not self.dropped and self.command in data.upper():
                        swallow = True

    def close(self) -> None:
        self.listener.close()


def test_a_batch_resent_by_redis_py_after_a_lost_reply_is_applied_once(
    real_redis: redis.Redis, redis_server: RedisServer
) -> None:
    relay = ReplyDropper(redis_server.port, b"EVALSHA")
    metrics = metrics_for(f"redis://127.0.0.1:{relay.port}/0")
    for _ in range(5):
        metrics.track_tag_pull("org/app", "v1", D)
    assert metrics.flush(10)
    assert relay.dropped == 1
    assert count(real_redis, "pull_metrics/tag/org/app/v1") == 5
    assert count(real_redis, f"pull_metrics/manifest/org/app/{D}") == 5
    metrics.close()
    relay.close()


def test_the_same_lost_reply_doubles_a_plain_hincrby(
    real_redis: redis.Redis, redis_server: RedisServer
) -> None:
    """The control: why the batch guard exists (redis-py re-sends on its own)."""
    relay = ReplyDropper(redis_server.port, b"HINCRBY")
    client = redis.Redis(port=relay.port)
    client.hincrby("plain", "pull_count", 5)
    assert relay.dropped == 1
    assert count(real_redis, "plain") == 10
    relay.close()


def test_full_buffer_drops_new_keys_and_counts_them(server: RedisServer) -> None:
    metrics = metrics_for(server.url, buffer_max_keys=100, flush_interval=60.0)
    server.stop()
    for i in range(150):
        metrics.track_manifest_pull("org/app", digest(i))
    for _ in range(9):
        metrics.track_manifest_pull("org/app", digest(0))  # existing keys keep counting
    assert metrics.recorder.dropped == 50
    server.start()
    assert metrics.flush(30)
    client = redis.Redis.from_url(server.url)
    stored = {i: count(client, f"pull_metrics/manifest/org/app/{digest(i)}") for i in range(150)}
    assert sum(1 for n in stored.values() if n) == 100
    assert stored[0] == 10
    assert metrics.health() == {
        "dropped_pulls": 50,
        "dropped_attribution_events": 0,
        "excluded_pulls": 0,
        "skipped_keys": 0,
        "buffered_keys": 0,
        "pending_batches": 0,
        "tag_pulls_written": 0,
        "manifest_pulls_written": 109,  # 99 keys once, one key 10 times
        "attribution_pairs": 0,
        "batches_applied": 1,
        "batch_retries": 0,
        "seconds_since_flush": 0.0,
    }
    metrics.close()


def test_attribution_events_coalesce_and_known_keys_count_at_the_cap(server: RedisServer) -> None:
    """100 GETs of one known digest and 150 HEADs of one tag while Redis is down, at a
    100-key cap: nothing is dropped, and HEADs are never counted as dropped pulls."""
    from pullstats_middleware.store import DigestFetch, Resolution

    metrics = metrics_for(server.url, buffer_max_keys=100, flush_interval=60.0)
    server.stop()
    recorder = metrics.recorder
    metrics.track_manifest_pull("org/app", D)  # the digest is a known key
    for i in range(95):
        metrics.track_manifest_pull("org/app", digest(i + 1))
    now = time.time() // 86400 * 86400 + 43200  # noon today: a key is known per UTC day
    for n in range(100):
        recorder.add_attribution_event(DigestFetch("node-1", "org/app", D, now + n / 1e4))
    for n in range(150):
        recorder.add_attribution_event(Resolution("node-2", "org/app", "v1", D, now + n / 1e4))
    assert len(recorder) == 100  # 96 manifests, 2 GETs and 2 HEADs: the cap, not 346 slots
    assert metrics.health()["dropped_pulls"] == 0
    for n in range(10):  # a new client's HEAD at the cap: an event dropped, not a pull
        recorder.add_attribution_event(Resolution(f"node-{n + 3}", "org/app", "v1", D, now))
    assert metrics.health()["dropped_pulls"] == 0
    assert metrics.health()["dropped_attribution_events"] == 10
    server.start()
    assert metrics.flush(30)
    client = redis.Redis.from_url(server.url)
    assert count(client, f"pull_metrics/manifest/org/app/{D}") == 101
    metrics.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_never_resends_the_parents_counts(
    real_redis: redis.Redis, redis_server: RedisServer
) -> None:
    metrics = metrics_for(redis_server.url, flush_interval=60.0)  # nothing flushes on its own
    metrics.track_tag_pull("org/app", "parent", D)
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            assert len(metrics.recorder) == 0
            metrics.track_tag_pull("org/app", "child", D)
            code = 0 if metrics.close() else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert metrics.close()
    assert count(real_redis, "pull_metrics/tag/org/app/parent") == 1
    assert count(real_redis, "pull_metrics/tag/org/app/child") == 1
    assert count(real_redis, f"pull_metrics/manifest/org/app/{D}") == 2


def test_close_flushes(real_redis: redis.Redis, redis_server: RedisServer) -> None:
    metrics = metrics_for(redis_server.url, flush_interval=60.0)
    metrics.track_tag_pull("org/app", "v1", D)
    assert count(real_redis, "pull_metrics/tag/org/app/v1") == 0
    assert metrics.close()
    assert count(real_redis, "pull_metrics/tag/org/app/v1") == 1
    assert metrics.close()  # idempotent


def test_close_is_bounded_when_the_store_is_down() -> None:
    with RedisServer() as server:
        metrics = metrics_for(server.url)
        server.stop()
        metrics.track_tag_pull("org/app", "v1", D)
        assert metrics.close(timeout=0.5) is False


def test_track_rejects_malformed_names_with_a_precise_error() -> None:
    metrics = PullMetrics(PullStatsConfig(enabled=True), store=MemoryStore())
    with pytest.raises(ValueError, match="invalid repository name 'Org/App'"):
        metrics.track_tag_pull("Org/App", "v1", D)
    with pytest.raises(ValueError, match="invalid tag"):
        metrics.track_tag_pull("org/app", "-v1", D)
    with pytest.raises(ValueError, match="invalid digest"):
        metrics.track_manifest_pull("org/app", "sha256:short")
    assert len(metrics.recorder) == 0
    metrics.close()


def test_memory_store_through_the_recorder() -> None:
    metrics = PullMetrics(PullStatsConfig(enabled=True, flush_interval=0.02), store=MemoryStore())
    for _ in range(3):
        metrics.track_tag_pull("org/app", "v1", D)
    assert metrics.flush(5)
    assert metrics.get_tag_statistics("org/app", "v1")["tag_pull_count"] == 3
    assert isinstance(metrics.store, MemoryStore) and not isinstance(metrics.store, RedisStore)
    metrics.close()


def test_failed_attempts_do_not_keep_their_batches_alive() -> None:
    """A client error whose frames hold the error itself (redis-py's retry does) is a
    reference cycle; uncleared, every retry's batch arguments would wait for a full gc."""
    import gc
    import weakref

    from pullstats_middleware.recorder import Recorder
    from pullstats_middleware.store import Batch

    class Payload:
        pass

    payloads: list[weakref.ref[Payload]] = []

    class DownStore(MemoryStore):
        def apply(self, batch: Batch, *, window: float, skew: float) -> list[str]:
            arguments = Payload()  # what a real client builds from the batch
            payloads.append(weakref.ref(arguments))
            try:
                raise redis.ConnectionError("connection refused")
            except redis.ConnectionError as error:
                saved = error  # frame -> error -> traceback -> frame
                raise saved from None

    gc.disable()
    try:
        recorder = Recorder(DownStore(), flush_interval=0.01)
        recorder.add_manifest_pull("org/app", D)
        assert not recorder.flush(0.5)  # several attempts, with backoff
        recorder.close(timeout=0.05)
        assert len(payloads) >= 3
        assert [ref() for ref in payloads[:-1]] == [None] * (len(payloads) - 1)
    finally:
        gc.enable()


def test_keys_with_foreign_data_are_counted_in_health(
    real_redis: redis.Redis, redis_server: RedisServer
) -> None:
    real_redis.set("pull_metrics/tag/org/app/v1", "not a hash")
    metrics = metrics_for(redis_server.url)
    metrics.track_tag_pull("org/app", "v1", D)
    assert metrics.flush(10)
    assert metrics.health()["skipped_keys"] == 1
    assert real_redis.get("pull_metrics/tag/org/app/v1") == b"not a hash"
    assert count(real_redis, f"pull_metrics/manifest/org/app/{D}") == 1  # the rest landed
    metrics.close()
