"""PULL_METRICS_EXCLUDE: pulls by scanners, replication and robots change no count
and no date, through both adapters; every bad rule is a ConfigError naming it."""

from __future__ import annotations

import base64
import json

import pytest

from pullstats_middleware import ConfigError, PullMetrics, PullStatsConfig
from pullstats_middleware.demo_registry import MemoryRegistry
from pullstats_middleware.puller import username
from pullstats_middleware.store import MemoryStore
from tests.apps import make_driver

HELLO = "/v2/library/hello/manifests/v1"
RULES = [
    {"user_agent": "^Trivy/"},
    {"username": "replicator"},
    {"network": "10.8.0.0/16"},
    {"user_agent": "cosign", "network": "192.0.2.0/24"},
]


def basic(user: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:secret".encode()).decode()


def bearer(claims: dict[str, object]) -> str:
    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).decode().rstrip("=")

    return f"Bearer {part(b'{}')}.{part(json.dumps(claims).encode())}.{part(b'sig')}"


@pytest.mark.parametrize(
    "peer, headers, counted",
    [
        ("10.0.0.1", {"user-agent": "Trivy/0.50.1"}, False),
        ("10.0.0.1", {"user-agent": "docker/24.0 Trivy/"}, True),  # searched, anchored
        ("10.0.0.1", {"authorization": basic("replicator")}, False),
        ("10.0.0.1", {"authorization": bearer({"sub": "replicator"})}, False),
        ("10.0.0.1", {"authorization": basic("alice")}, True),
        ("10.8.3.4", {}, False),
        ("192.0.2.7", {"user-agent": "sigstore-cosign/2"}, False),  # both fields match
        ("192.0.2.7", {"user-agent": "containerd/1.7"}, True),  # only one does
        ("198.51.100.1", {"user-agent": "cosign"}, True),
    ],
)
def test_excluded_pulls_change_no_count_and_no_date(
    registry: MemoryRegistry, kind: str, peer: str, headers: dict[str, str], counted: bool
) -> None:
    config = PullStatsConfig(enabled=True, exclude=RULES)
    metrics = PullMetrics(config, store=MemoryStore())
    driver = make_driver(kind, registry, config, metrics, peer=peer)
    digest = driver.get(HELLO, **{k.replace("-", "_"): v for k, v in headers.items()})
    by_digest = f"/v2/library/hello/manifests/{digest.headers['docker-content-digest']}"
    driver.request("GET", by_digest, headers)
    driver.request("HEAD", HELLO, headers)  # a containerd pair from the same client
    driver.request("GET", by_digest, headers)
    driver.flush()
    tag = metrics.get_tag_statistics("library/hello", "v1")
    assert tag["tag_pull_count"] == (2 if counted else 0)
    assert (tag["last_tag_pull_date"] is None) == (not counted)
    assert metrics.health()["excluded_pulls"] == (0 if counted else 3)  # the HEAD is no pull
    metrics.close()


def test_rules_from_the_environment_as_json() -> None:
    config = PullStatsConfig.from_env({"PULL_METRICS_EXCLUDE": json.dumps(RULES)})
    assert len(config.exclude) == 4 and config.exclude[2].network is not None


@pytest.mark.parametrize(
    "value, message",
    [
        ("[{", "not valid JSON"),
        ({"user_agent": "x"}, "must be a list of rules"),
        ([{}], r"PULL_METRICS_EXCLUDE\[0\] must be a mapping"),
        ([{"agent": "x"}], "unknown field"),
        ([{"user_agent": "("}], r"\[0\].user_agent is not a regular expression"),
        ([{"network": "10.8.0.0/33"}], "is not an IP network"),
        ([{"username": 7}], "must be a non-empty string"),
    ],
)
def test_bad_rules_name_themselves(value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        PullStatsConfig(exclude=value)  # type: ignore[arg-type]


def test_username_is_read_without_verification_and_never_fails() -> None:
    assert username(basic("alice")) == "alice"
    assert username(bearer({"sub": "robot$ci"})) == "robot$ci"
    for junk in ("", "Basic !!!", "Bearer a.b", "Bearer a.%%%.c", bearer({"sub": 7}), "Digest x"):
        assert username(junk) is None
