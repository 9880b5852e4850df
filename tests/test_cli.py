"""The `pullstats` command: help, one-line errors, `stats` against a real Redis,
and `demo` and `proxy` as real subprocesses on free ports."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import shlex
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import sqlalchemy

from pullstats_middleware import PullMetrics, PullStatsConfig
from pullstats_middleware.cli import load_config, main, parse_reference
from pullstats_middleware.config import KEYS, READING_KEYS, ConfigError, RedisSettings
from pullstats_middleware.demo_registry import MemoryRegistry, starlette_app
from tests.apps import TAG_FIELDS
from tests.e2e.services import RedisServer
from tests.test_proxy import Served, free_port

DIGEST = "sha256:" + "ab" * 32


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in KEYS:
        monkeypatch.delenv(key, raising=False)


def clean_environ(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in KEYS}
    return {**env, **extra}


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("pullstats: error: ")
    for fragment in fragments:
        assert fragment in lines[0]


# -- help and usage errors --------------------------------------------------------


def test_top_level_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["--help"], capsys)
    assert code == 0
    for word in ("proxy", "demo", "stats", "examples:"):
        assert word in out


@pytest.mark.parametrize(
    ("command", "flags"),
    [
        (
            "proxy",
            [
                "--upstream",
                "--host",
                "--port",
                "--redis-url",
                "--config",
                "--connect-timeout",
                "--read-timeout",
                "--no-upstream-check",
                "--log-level",
            ],
        ),
        ("demo", ["--host", "--port", "--flush-interval", "--log-level"]),
        ("stats", ["REPO:TAG|REPO@DIGEST", "--redis-url", "--config", "--json"]),
    ],
)
def test_subcommand_help(
    command: str, flags: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run([command, "--help"], capsys)
    assert code == 0
    for flag in flags:
        assert flag in out
    if command == "proxy":  # the configuration keys, each one
        for key in KEYS:
            assert key in out
    if command == "stats":  # only the keys a reader needs
        for key in KEYS:
            assert (key in out) == (key in READING_KEYS), key
        assert "PULL_METRICS_REDIS" in out
    if command != "demo":
        assert "precedence" in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from pullstats_middleware import __version__

    code, out, _ = run(["--version"], capsys)
    assert code == 0 and out.strip() == f"pullstats {__version__}"


def test_module_entry_point_help() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pullstats_middleware.cli", "stats", "--help"],
        capture_output=True,
        text=True,
        env=clean_environ(),
        check=False,
    )
    assert done.returncode == 0
    assert "usage: pullstats stats" in done.stdout


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["bogus"],
        ["proxy"],
        ["proxy", "--upstream", "http://127.0.0.1:5000", "--bogus"],
        ["proxy", "--upstream", "http://127.0.0.1:5000", "--port", "99999"],
        ["proxy", "--upstream", "http://127.0.0.1:5000", "--read-timeout", "0"],
        ["proxy", "--upstream", "http://127.0.0.1:5000", "--connect-timeout", "soon"],
        ["demo", "--flush-interval", "-1"],
        ["stats"],
    ],
)
def test_bad_flags_are_one_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(argv, capsys)
    assert_one_line_error(code, err, "--help")
    assert out == ""


@pytest.mark.parametrize(
    "url", ["ftp://registry:5000", "registry:5000", "http://", "http://registry:5000/v2"]
)
def test_bad_upstream_url(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["proxy", "--upstream", url], capsys)
    assert_one_line_error(code, err, "upstream URL")


def test_unreachable_redis(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    argv = ["proxy", "--upstream", "http://127.0.0.1:5000", "--redis-url", url]
    code, _, err = run(argv, capsys)
    assert_one_line_error(code, err, "cannot reach Redis", f"127.0.0.1:{url.split(':')[2]}")


def test_unreachable_upstream(capsys: pytest.CaptureFixture[str]) -> None:
    upstream = f"http://127.0.0.1:{free_port()}"
    argv = ["proxy", "--upstream", upstream, "--port", str(free_port())]
    code, _, err = run(argv, capsys)
    assert_one_line_error(code, err, "cannot reach the upstream registry", upstream)


def test_invalid_redis_url(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["proxy", "--upstream", "http://127.0.0.1:5000", "--redis-url", "http://nope"]
    assert_one_line_error(*run(argv, capsys)[::2], "--redis-url")


def test_port_in_use(capsys: pytest.CaptureFixture[str]) -> None:
    with Served(starlette_app(MemoryRegistry())) as taken:
        argv = ["proxy", "--upstream", "http://127.0.0.1:5000", "--port", str(taken.port)]
        code, _, err = run(argv, capsys)
    assert_one_line_error(code, err, "cannot listen on")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("PULL_METRICS_FLUSH_INTERVAL: [\n", "not valid YAML"),
        ("- just\n- a list\n", "mapping"),
        ("PULL_METRICS_FLUSH_INTERVAL: soon\n", "PULL_METRICS_FLUSH_INTERVAL"),
        ("PULL_METRICS_REDIS: {hots: x}\n", "PULL_METRICS_REDIS"),
        ("PULL_METRICS_TRUSTED_PROXIES: 12\n", "PULL_METRICS_TRUSTED_PROXIES"),
    ],
)
def test_bad_config_file(
    text: str, fragment: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    argv = ["proxy", "--upstream", "http://127.0.0.1:5000", "--config", str(path)]
    code, _, err = run(argv, capsys)
    assert_one_line_error(code, err, fragment)


def test_missing_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["stats", "hello:v1", "--config", str(tmp_path / "absent.yaml")]
    assert_one_line_error(*run(argv, capsys)[::2], "cannot read config file")


def test_bad_environment_value(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PULL_METRICS_BUFFER_MAX_KEYS", "lots")
    argv = ["proxy", "--upstream", "http://127.0.0.1:5000"]
    assert_one_line_error(*run(argv, capsys)[::2], "PULL_METRICS_BUFFER_MAX_KEYS")


# -- configuration ---------------------------------------------------------------------


def test_config_precedence_file_then_env_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        "SERVER_HOSTNAME: quay.example.com\n"  # a whole Quay config: other keys are ignored
        "PULL_METRICS_FLUSH_INTERVAL: 3\n"
        "PULL_METRICS_KEY_PREFIX: from_file\n"
        "PULL_METRICS_REDIS: {host: file-redis, port: 6380}\n"
    )
    env = {"PULL_METRICS_FLUSH_INTERVAL": "2", "PULL_METRICS_REDIS": "redis://env-redis:6379/1"}
    config = load_config(str(path), environ=env)
    assert config.enabled  # the proxy's default
    assert config.flush_interval == 2.0
    assert config.key_prefix == "from_file"
    assert config.redis is not None and config.redis.url == "redis://env-redis:6379/1"
    flagged = load_config(str(path), environ=env, redis_url="redis://flag-redis:1/2")
    assert flagged.redis is not None and flagged.redis.url == "redis://flag-redis:1/2"


def test_feature_can_be_switched_off_by_file_or_env(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("FEATURE_IMAGE_PULL_STATS: false\nUSER_EVENTS_REDIS: {host: events}\n")
    from_file = load_config(str(path), environ={})
    assert not from_file.enabled
    assert from_file.redis is not None and from_file.redis.host == "events"
    assert not load_config(None, environ={"FEATURE_IMAGE_PULL_STATS": "false"}).enabled
    assert load_config(str(path), environ={"FEATURE_IMAGE_PULL_STATS": "true"}).enabled
    assert load_config(None, environ={}).enabled


def test_empty_config_file(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("")
    assert load_config(str(path), environ={}) == PullStatsConfig(enabled=True)


def test_bad_redis_flag_raises_config_error() -> None:
    with pytest.raises(ConfigError, match="--redis-url"):
        load_config(None, environ={}, redis_url="mysql://x")


# -- pullstats stats ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("library/hello:v1", ("library/hello", "v1", None)),
        ("library/hello", ("library/hello", "latest", None)),
        (f"library/hello@{DIGEST}", ("library/hello", None, DIGEST)),
        ("a/b.c/d-e:V1.0_x", ("a/b.c/d-e", "V1.0_x", None)),
    ],
)
def test_parse_reference(text: str, expected: tuple[str, str | None, str | None]) -> None:
    assert parse_reference(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "Library/hello:v1",
        "hello:",
        "hello:-bad",
        "hello@sha256:abc",
        "hello@",
        f"hello:v1@{DIGEST}",
        "localhost:5000/hello:v1",
        ":v1",
    ],
)
def test_malformed_reference(text: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["stats", text, "--redis-url", "redis://127.0.0.1:1/0"], capsys)
    assert_one_line_error(code, err)
    assert out == ""


def test_stats_without_redis_refuses_to_print_zeros(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["stats", "library/hello:v1"], capsys)
    assert_one_line_error(code, err, "no Redis configured", "memory")
    assert out == ""


def test_stats_unreachable_redis(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    code, out, err = run(["stats", "library/hello:v1", "--redis-url", url], capsys)
    assert_one_line_error(code, err, "cannot read Redis")
    assert out == ""


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with RedisServer() as server:
        yield server.url


def seed(url: str, *, tag_pulls: int, digest_pulls: int, prefix: str = "pull_metrics") -> None:
    metrics = PullMetrics(
        PullStatsConfig(enabled=True, redis=RedisSettings(url=url), key_prefix=prefix)
    )
    for _ in range(tag_pulls):
        metrics.track_tag_pull("library/hello", "v1", DIGEST)
    for _ in range(digest_pulls):
        metrics.track_manifest_pull("library/hello", DIGEST)
    assert metrics.flush(5)
    metrics.close()


def table(out: str) -> dict[str, str]:
    rows = {}
    for line in out.strip().splitlines():
        label, _, value = line.partition("  ")
        rows[label] = value.strip()
    return rows


def test_stats_table_and_json(redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    seed(redis_url, tag_pulls=2, digest_pulls=1)
    code, out, err = run(["stats", "library/hello:v1", "--redis-url", redis_url], capsys)
    assert code == 0, err
    rows = table(out)
    assert rows["repository"] == "library/hello"
    assert rows["tag"] == "v1"
    assert rows["tag pulls"] == "2"
    assert rows["current manifest"] == DIGEST
    assert rows["manifest pulls"] == "3"
    assert rows["last tag pull"].endswith("Z")
    # aligned: every value starts in the same column
    starts = {len(line) - len(line.split("  ", 1)[1].lstrip()) for line in out.splitlines()}
    assert len(starts) == 1

    code, out, _ = run(["stats", "library/hello:v1", "--redis-url", redis_url, "--json"], capsys)
    assert code == 0
    payload = json.loads(out)
    assert payload["tag_name"] == "v1"
    assert payload["tag_pull_count"] == 2
    assert payload["current_manifest_digest"] == DIGEST
    assert payload["manifest_pull_count"] == 3
    assert list(payload) == TAG_FIELDS

    code, out, _ = run(
        ["stats", f"library/hello@{DIGEST}", "--redis-url", redis_url, "--json"], capsys
    )
    assert code == 0
    assert json.loads(out) == {
        "manifest_digest": DIGEST,
        "manifest_pull_count": 3,
        "last_manifest_pull_date": payload["last_manifest_pull_date"],
    }


def test_stats_reads_redis_and_prefix_from_env_and_file(
    redis_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    seed(redis_url, tag_pulls=4, digest_pulls=0, prefix="elsewhere")
    path = tmp_path / "config.yaml"
    path.write_text("PULL_METRICS_KEY_PREFIX: elsewhere\n")
    monkeypatch.setenv("PULL_METRICS_REDIS", redis_url)
    code, out, err = run(["stats", "library/hello:v1", "--config", str(path), "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["tag_pull_count"] == 4


def test_stats_never_pulled(redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["stats", "library/never:v1", "--redis-url", redis_url], capsys)
    assert code == 0
    rows = table(out)
    assert rows["tag pulls"] == "0"
    assert rows["last tag pull"] == "never"
    assert rows["current manifest"] == "-"


# -- demo and proxy as subprocesses ---------------------------------------------------


class Command:
    """`python -m pullstats_middleware.cli ...` in the background, output in files."""

    def __init__(self, tmp_path: Path, *argv: str, env: dict[str, str] | None = None) -> None:
        self.out = tmp_path / "stdout"
        self.err = tmp_path / "stderr"
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pullstats_middleware.cli", *argv],
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=env or clean_environ(),
            )

    def wait_until_serving(self, url: str) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"exited {self.process.returncode}: {self.err.read_text()}")
            try:
                httpx2.get(url, trust_env=False, timeout=1)
                return
            except httpx2.TransportError:
                time.sleep(0.05)
        raise AssertionError(f"not serving: {self.err.read_text()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(15)


def eventually(read: Any, check: Any, timeout: float = 15) -> Any:
    """Poll `read()` until `check(value)`; the last value either way."""
    deadline = time.monotonic() + timeout
    value = read()
    while not check(value) and time.monotonic() < deadline:
        time.sleep(0.05)
        value = read()
    return value


def curl(client: httpx2.Client, line: str) -> httpx2.Response:
    """Run one printed `curl` line with httpx2: -s, -sI (HEAD), -H headers, the URL."""
    words = shlex.split(line)
    assert words[0] == "curl"
    method, headers, url = "GET", {}, words[-1]
    rest = iter(words[1:-1])
    for word in rest:
        if word == "-sI":
            method = "HEAD"
        elif word == "-H":
            name, _, value = next(rest).partition(": ")
            headers[name] = value
        else:
            assert word == "-s", word
    return client.request(method, url, headers=headers)


def test_demo_prints_requests_that_count(tmp_path: Path) -> None:
    port = free_port()
    demo = Command(tmp_path, "demo", "--port", str(port), "--log-level", "warning")
    try:
        demo.wait_until_serving(f"http://127.0.0.1:{port}/v2/")
        lines = [ln for ln in demo.out.read_text().splitlines() if ln.startswith("curl ")]
        pulls = [ln for ln in lines if "/v2/" in ln]
        reads = [ln for ln in lines if "pull_statistics" in ln]
        assert len(pulls) == 6 and len(reads) == 3
        assert sum(" -sI " in ln for ln in pulls) == 1
        # One client identity (address + user agent), as one shell running curl would be.
        with httpx2.Client(trust_env=False, headers={"user-agent": "curl/8"}) as client:
            for line in pulls:
                assert curl(client, line).status_code == 200, line

            def read_all() -> list[dict[str, Any]]:
                return [curl(client, line).json() for line in reads]

            hello_tag, hello_manifest, multi_tag = eventually(
                read_all, lambda v: v[0]["tag_pull_count"] == 2 and v[2]["tag_pull_count"] == 1
            )
    finally:
        demo.stop()
    assert hello_tag["tag_pull_count"] == 2  # by tag, and HEAD-then-GET-by-digest
    assert hello_tag["manifest_pull_count"] == 3  # by tag, by digest, containerd's GET
    assert hello_manifest["manifest_pull_count"] == 3
    assert hello_tag["current_manifest_digest"] == hello_manifest["manifest_digest"]
    assert multi_tag["tag_pull_count"] == 1
    assert multi_tag["manifest_pull_count"] == 1  # the index; its amd64 image is counted apart
    assert "Traceback" not in demo.err.read_text()


def test_proxy_command_counts_into_redis(redis_url: str, tmp_path: Path) -> None:
    registry = MemoryRegistry()
    digest = registry.push_image("library/proxied", "v1")
    port = free_port()
    env = clean_environ(PULL_METRICS_FLUSH_INTERVAL="0.05")
    with Served(starlette_app(registry)) as upstream:
        argv = ["proxy", "--upstream", upstream.url, "--port", str(port)]
        proxy = Command(tmp_path, *argv, "--redis-url", redis_url, env=env)
        try:
            base = f"http://127.0.0.1:{port}"
            proxy.wait_until_serving(f"{base}/v2/")
            with httpx2.Client(trust_env=False) as client:
                pulled = client.get(f"{base}/v2/library/proxied/manifests/v1")
                assert pulled.status_code == 200
                assert pulled.headers["docker-content-digest"] == digest
                route = f"{base}/api/v1/repository/library/proxied/tag/v1/pull_statistics"
                answer = eventually(
                    lambda: client.get(route), lambda r: r.json().get("tag_pull_count") == 1
                )
                assert answer.json()["current_manifest_digest"] == digest
        finally:
            proxy.stop()
    stats = PullMetrics(PullStatsConfig(redis=RedisSettings(url=redis_url)))
    try:
        assert stats.get_tag_statistics("library/proxied", "v1")["tag_pull_count"] == 1
    finally:
        stats.close()
    assert "Traceback" not in proxy.err.read_text()
    listening = f"listening on http://127.0.0.1:{port}, upstream {upstream.url}, pull statistics: "
    assert listening in proxy.err.read_text()


def test_proxy_serves_https_and_keeps_plain_http_probes_quiet(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """docker and podman need TLS for a registry that is not on localhost; clients that
    try HTTPS first on a plain-HTTP proxy are no warning for the operator."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    names = "subjectAltName=IP:127.0.0.1,DNS:localhost"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=localhost", "-addext", names, "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    registry = MemoryRegistry()
    digest = registry.push_image("library/secure", "v1")
    with Served(starlette_app(registry)) as upstream:
        port, plain_port = free_port(), free_port()
        argv = ["proxy", "--upstream", upstream.url, "--port"]
        secure = Command(tmp_path, *argv, str(port), "--tls-cert", str(cert), "--tls-key", str(key))
        (tmp_path / "plain").mkdir()
        plain = Command(tmp_path / "plain", *argv, str(plain_port))
        try:
            base = f"https://127.0.0.1:{port}"
            with httpx2.Client(
                trust_env=False, verify=ssl.create_default_context(cafile=cert)
            ) as c:
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    try:
                        pulled = c.get(f"{base}/v2/library/secure/manifests/v1")
                        break
                    except httpx2.TransportError:
                        time.sleep(0.05)
                assert pulled.headers["docker-content-digest"] == digest
            plain.wait_until_serving(f"http://127.0.0.1:{plain_port}/v2/")
            with socket.create_connection(("127.0.0.1", plain_port)) as probe:
                probe.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64)
                probe.settimeout(5)
                with contextlib.suppress(OSError):
                    probe.recv(1024)
            assert httpx2.get(f"http://127.0.0.1:{plain_port}/v2/", trust_env=False).status_code
        finally:
            secure.stop()
            plain.stop()
    assert f"listening on https://127.0.0.1:{port}" in secure.err.read_text()
    assert "Invalid HTTP request" not in plain.err.read_text()
    assert f"listening on http://127.0.0.1:{plain_port}" in plain.err.read_text()
    code, _, err = run(["proxy", "--upstream", "http://x", "--tls-cert", str(cert)], capsys)
    assert_one_line_error(code, err, "--tls-cert and --tls-key go together")
    code, _, err = run(
        ["proxy", "--upstream", "http://x", "--tls-cert", str(key), "--tls-key", str(key)], capsys
    )
    assert_one_line_error(code, err, "cannot use TLS certificate")


def test_the_listening_socket_is_tcp_so_asyncio_sets_nodelay() -> None:
    """A socket without proto=IPPROTO_TCP gets no TCP_NODELAY from asyncio, and
    every keep-alive response then waits for a delayed ACK (~40 ms)."""
    import socket

    from pullstats_middleware import serving

    sock = serving.listen("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()


def test_demo_ignores_forwarded_for_without_trusted_proxies(tmp_path: Path) -> None:
    """uvicorn's own proxy_headers would rewrite the client address from
    X-Forwarded-For; everything this package starts honours only
    PULL_METRICS_TRUSTED_PROXIES, so a client cannot choose its identity."""
    port = free_port()
    demo = Command(tmp_path, "demo", "--port", str(port), "--log-level", "warning")
    base = f"http://127.0.0.1:{port}"
    try:
        demo.wait_until_serving(f"{base}/v2/")
        with httpx2.Client(trust_env=False, headers={"user-agent": "containerd/1.7"}) as client:
            head = client.head(
                f"{base}/v2/library/hello/manifests/v1", headers={"x-forwarded-for": "192.0.2.1"}
            )
            digest = head.headers["docker-content-digest"]
            got = client.get(
                f"{base}/v2/library/hello/manifests/{digest}",
                headers={"x-forwarded-for": "192.0.2.2"},
            )
            assert got.status_code == 200
            route = f"{base}/api/v1/repository/library/hello/tag/v1/pull_statistics"
            stats = eventually(
                lambda: client.get(route).json(), lambda v: v["manifest_pull_count"] == 1
            )
    finally:
        demo.stop()
    assert stats["tag_pull_count"] == 1  # one client: the header was not believed


def test_a_config_file_that_is_not_utf8_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(b"PULL_METRICS_AUTH: caf\xe9\n")
    code, _, err = run(["stats", "library/hello:v1", "--config", str(path)], capsys)
    assert_one_line_error(code, err, str(path), "is not UTF-8")


def test_db_upgrade_then_flush_once(
    redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    database = f"sqlite:///{tmp_path / 'pullstats.db'}"
    code, _, err = run(
        ["flush", "--once", "--redis-url", redis_url, "--database", database], capsys
    )
    assert_one_line_error(code, err, "is at schema none", "run `pullstats db upgrade`")
    code, out, _ = run(["db", "upgrade", "--database", database], capsys)
    assert code == 0 and "is up to date" in out
    code, out, _ = run(["db", "upgrade", "--database", database], capsys)  # again: nothing to do
    assert code == 0
    config = PullStatsConfig(
        enabled=True, redis={"url": redis_url}, database=database, embedded_flusher=False
    )
    metrics = PullMetrics(config)
    metrics.track_tag_pull("library/flushed", "v1", DIGEST)
    assert metrics.flush(10)
    code, out, err = run(
        ["flush", "--once", "--redis-url", redis_url, "--database", database], capsys
    )
    assert code == 0, err
    assert out.strip() == "pullstats: moved 2 record(s) to the database"
    # The worker froze its startup heap (durable/flusher.py); give this process its own back.
    assert gc.get_freeze_count() > 0
    gc.unfreeze()
    assert metrics.get_tag_statistics("library/flushed", "v1")["tag_pull_count"] == 1  # from SQL
    metrics.close()
    code, _, err = run(["flush", "--once", "--database", database], capsys)
    assert_one_line_error(code, err, "no Redis configured")
    code, _, err = run(["db", "upgrade"], capsys)
    assert_one_line_error(code, err, "no database configured")


def test_stale_and_top(redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import redis as redis_client

    from pullstats_middleware.durable import Flusher

    redis_client.Redis.from_url(redis_url).flushall()
    database = f"sqlite:///{tmp_path / 'pullstats.db'}"
    assert run(["db", "upgrade", "--database", database], capsys)[0] == 0
    config = PullStatsConfig(
        enabled=True, redis={"url": redis_url}, database=database, embedded_flusher=False
    )
    metrics = PullMetrics(config)
    for tag, pulls in (("busy", 5), ("quiet", 1)):
        for _ in range(pulls):
            metrics.track_tag_pull("team/app", tag, DIGEST)
    metrics.recorder.add_push("team/app", "fresh", DIGEST)  # pushed, never pulled
    assert metrics.flush(10)
    Flusher(metrics.store, metrics.database).flush()  # type: ignore[arg-type]
    metrics.close()
    where = ["--redis-url", redis_url, "--database", database, "--json"]
    code, out, err = run(["top", "team/app", *where], capsys)
    assert code == 0, err
    assert [(r["tag_name"], r["tag_pull_count"]) for r in json.loads(out)] == [
        ("busy", 5),
        ("quiet", 1),
        ("fresh", 0),
    ]
    code, out, _ = run(["top", "team/app", "--days", "7", "--limit", "1", *where], capsys)
    assert [(r["tag_name"], r["tag_pull_count"]) for r in json.loads(out)] == [("busy", 5)]
    code, out, _ = run(["stale", "team/app", "--days", "1", *where], capsys)
    stale = json.loads(out)
    assert [r["tag_name"] for r in stale] == ["fresh"]  # pulled today: not stale
    assert stale[0]["last_push_date"] is not None  # new, not forgotten: its push shows it
    code, out, _ = run(["stale", "team/app", "--redis-url", redis_url, "--database", database],
                       capsys)  # fmt: skip
    assert out.splitlines()[0].split() == ["TAG", "PULLS", "LAST", "PULL", "LAST", "PUSH"]
    code, _, err = run(["stale", "Team/App", *where], capsys)
    assert_one_line_error(code, err, "invalid repository name")


def test_demo_flushes_into_an_sqlite_file_and_answers_history(tmp_path: Path) -> None:
    port = free_port()
    demo = Command(tmp_path, "demo", "--port", str(port), "--log-level", "warning")
    base = f"http://127.0.0.1:{port}"
    try:
        demo.wait_until_serving(f"{base}/v2/")
        assert "and flushed to sqlite:///" in demo.out.read_text()
        with httpx2.Client(trust_env=False) as client:
            assert client.get(f"{base}/v2/library/hello/manifests/v1").status_code == 200
            route = f"{base}/api/v1/repository/library/hello/tag/v1/pull_statistics/history"
            days = eventually(
                lambda: client.get(route).json()["days"], lambda d: d[-1]["pull_count"] == 1
            )
            # The embedded flusher moves it to the SQLite file the demo named: still one pull.
            url = demo.out.read_text().split("flushed to ", 1)[1].split(" ", 1)[0]
            engine = sqlalchemy.create_engine(url)

            def in_sql() -> int:
                with engine.connect() as connection:
                    query = "SELECT pull_count FROM tag_daily WHERE tag = 'v1'"
                    return int(connection.exec_driver_sql(query).scalar() or 0)

            assert eventually(in_sql, lambda n: n == 1) == 1
            engine.dispose()
            assert client.get(route).json()["days"][-1]["pull_count"] == 1
    finally:
        demo.stop()
    assert days[-1]["pull_count"] == 1 and len(days) == 30
