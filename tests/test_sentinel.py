"""Redis Sentinel through redis-py, against real redis-server processes:
a master, a replica and one sentinel; counts follow a failover."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from pullstats_middleware import ConfigError, PullMetrics, PullStatsConfig, RedisSettings
from tests.e2e.services import RedisServer, free_port

D = "sha256:" + "e" * 64


def until(check: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except redis.RedisError:
            pass
        time.sleep(0.05)
    raise AssertionError("condition not reached")


@pytest.fixture
def sentinel_setup() -> Iterator[tuple[int, RedisServer, RedisServer]]:
    with RedisServer() as master, RedisServer() as replica, tempfile.TemporaryDirectory() as tmp:
        redis.Redis(port=replica.port).replicaof("127.0.0.1", master.port)
        until(
            lambda: redis.Redis(port=replica.port).info("replication")["master_link_status"] == "up"
        )
        port = free_port()
        conf = Path(tmp) / "sentinel.conf"
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {tmp}\n"
            f"sentinel monitor pulls 127.0.0.1 {master.port} 1\n"
            "sentinel down-after-milliseconds pulls 1000\n"
            "sentinel failover-timeout pulls 10000\n"
        )
        binary = shutil.which("redis-server")
        assert binary is not None
        proc = subprocess.Popen([binary, str(conf), "--sentinel"], stdout=subprocess.DEVNULL)
        try:
            sentinel = redis.Redis(port=port)
            until(lambda: sentinel.sentinel_get_master_addr_by_name("pulls") is not None)
            # a replica the sentinel has talked to (not just heard of) can be promoted
            until(lambda: [r["flags"] for r in sentinel.sentinel_slaves("pulls")] == ["slave"])
            yield port, master, replica
        finally:
            proc.terminate()
            proc.wait(10)


def test_sentinel_settings_parse_and_validate() -> None:
    settings = PullStatsConfig(
        redis={"sentinels": ["10.0.0.1:26379", ["10.0.0.2", 26380]], "service_name": "pulls"}
    ).redis
    assert settings == RedisSettings(
        sentinels=(("10.0.0.1", 26379), ("10.0.0.2", 26380)), service_name="pulls"
    )
    assert settings.describe() == "sentinel://10.0.0.1:26379,10.0.0.2:26380/pulls/0"
    env = PullStatsConfig.from_env(
        {"PULL_METRICS_REDIS": '{"sentinels": "a:1,b:2", "service_name": "m"}'}
    )
    assert env.redis is not None and env.redis.sentinels == (("a", 1), ("b", 2))
    for bad, message in [
        ({"sentinels": ["a:1"]}, "sentinels and service_name go together"),
        ({"service_name": "m"}, "sentinels and service_name go together"),
        ({"sentinels": ["a"], "service_name": "m"}, "PULL_METRICS_REDIS.sentinels"),
        ({"sentinels": ["a:x"], "service_name": "m"}, "PULL_METRICS_REDIS.sentinels"),
        ({"sentinels": ["a:1"], "service_name": "m", "url": "redis://h"}, "not both"),
    ]:
        with pytest.raises(ConfigError, match=message):
            PullStatsConfig(redis=bad)


def test_counts_go_to_the_master_the_sentinel_names_and_follow_a_failover(
    sentinel_setup: tuple[int, RedisServer, RedisServer],
) -> None:
    port, master, replica = sentinel_setup
    config = PullStatsConfig(
        enabled=True,
        flush_interval=0.05,
        redis={"sentinels": [f"127.0.0.1:{port}"], "service_name": "pulls", "socket_timeout": 2},
    )
    metrics = PullMetrics(config)
    metrics.track_tag_pull("org/app", "v1", D)
    assert metrics.flush(10)
    old, new = redis.Redis(port=master.port), redis.Redis(port=replica.port)
    assert old.hget("pull_metrics/tag/org/app/v1", "pull_count") == b"1"

    redis.Redis(port=port).execute_command("SENTINEL", "FAILOVER", "pulls")
    until(lambda: new.info("replication")["role"] == "master")
    # once the old master is demoted, its connection answers READONLY; the batch
    # is kept, retried, and lands on the master the sentinel now names
    until(lambda: old.info("replication")["role"] == "slave")
    for _ in range(4):
        metrics.track_tag_pull("org/app", "v1", D)
    assert metrics.flush(30)
    # the replicated pull plus four written to the promoted master, none lost, none twice
    until(lambda: new.hget("pull_metrics/tag/org/app/v1", "pull_count") == b"5")
    assert metrics.get_tag_statistics("org/app", "v1")["tag_pull_count"] == 5
    metrics.close()
