"""Real services and clients for end-to-end tests (no mocks, no pytest fixtures).

Every service listens on a free loopback port (or a private unix socket), keeps
its files in its own temporary directory and is stopped cleanly: SIGTERM, wait,
SIGKILL after a timeout.  All classes are context managers::

    with RedisServer() as redis, DockerRegistry(auth=("user", "pass")) as reg:
        ...

Missing software is an error (``ServiceError``), never a skip: CI installs it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

LOOPBACK = "127.0.0.1"


class ServiceError(RuntimeError):
    """A service could not be started, or a required binary is missing."""


class CommandError(RuntimeError):
    """A client command (skopeo, ctr, ...) exited non-zero."""

    def __init__(self, proc: subprocess.CompletedProcess[str]) -> None:
        self.proc = proc
        self.returncode = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        cmd = " ".join(str(a) for a in proc.args)
        super().__init__(
            f"command failed with exit code {proc.returncode}: {cmd}\n"
            f"--- stderr ---\n{proc.stderr}\n--- stdout ---\n{proc.stdout}"
        )


# --------------------------------------------------------------------------- #
# small utilities
# --------------------------------------------------------------------------- #


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def require_binary(*names: str) -> str:
    """Absolute path of the first of ``names`` found on PATH; raise if none is."""
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    raise ServiceError(f"required binary not found on PATH: {' or '.join(names)}")


def run_command(
    args: Sequence[str],
    *,
    check: bool = True,
    timeout: float = 300.0,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command, capture its output as text; raise ``CommandError`` if ``check``."""
    proc = subprocess.run(
        list(args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if check and proc.returncode != 0:
        raise CommandError(proc)
    return proc


def _stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


def _cleanup(procs: list[subprocess.Popen[bytes] | None], tmpdir: str) -> None:
    for p in procs:
        _stop_process(p, timeout=5.0)
    shutil.rmtree(tmpdir, ignore_errors=True)


class _Service:
    """Common process + temp-dir handling.  Subclasses implement ``_command`` / ``_ready``."""

    name = "service"
    uses_tcp_port = True
    startup_timeout = 20.0
    stop_timeout = 10.0

    def __init__(self, port: int | None = None) -> None:
        self.tmpdir = Path(tempfile.mkdtemp(prefix=f"pullstats-{self.name}-"))
        self.log_path = self.tmpdir / f"{self.name}.log"
        self.host = LOOPBACK
        #: an auto-picked port is re-picked if another process grabbed it first
        self._port_auto = port is None and self.uses_tcp_port
        self.port = (port or free_port()) if self.uses_tcp_port else 0
        self._started_once = False
        self._log_offset = 0
        # one-element holder so the finalizer can see the current process without `self`
        self._procs: list[subprocess.Popen[bytes] | None] = [None]
        self._finalizer = weakref.finalize(self, _cleanup, self._procs, str(self.tmpdir))

    # -- to override ----------------------------------------------------- #
    def _command(self) -> list[str]:
        raise NotImplementedError

    def _env(self) -> dict[str, str] | None:
        return None

    def _ready(self) -> bool:
        raise NotImplementedError

    # -- lifecycle --------------------------------------------------------- #
    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        return self._procs[0]

    @property
    def pid(self) -> int | None:
        p = self._procs[0]
        return None if p is None else p.pid

    @property
    def running(self) -> bool:
        p = self._procs[0]
        return p is not None and p.poll() is None

    def start(self) -> _Service:
        """Start the process (no-op if running) and wait until it answers.

        On the very first start with an auto-picked port, a lost race for the
        port is retried on a new port; a restart always keeps the port.
        """
        if self.running:
            return self
        attempts = 3 if (self._port_auto and not self._started_once) else 1
        for attempt in range(attempts):
            try:
                self._start_once()
            except ServiceError:
                if attempt == attempts - 1:
                    raise
                self.port = free_port()
            else:
                self._started_once = True
                return self
        raise AssertionError("unreachable")

    def _start_once(self) -> None:
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            proc = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._env(),
                start_new_session=True,
            )
        self._procs[0] = proc
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if proc.poll() is not None:
                self._procs[0] = None
                raise ServiceError(
                    f"{self.name} exited with code {proc.returncode} during startup:\n"
                    + self.current_logs()[-4000:]
                )
            if self._ready():
                return
            if time.monotonic() > deadline:
                self.stop()
                raise ServiceError(
                    f"{self.name} not ready after {self.startup_timeout}s:\n"
                    + self.current_logs()[-4000:]
                )
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL after ``stop_timeout``); keep the temp dir."""
        _stop_process(self._procs[0], self.stop_timeout)
        self._procs[0] = None

    def close(self) -> None:
        """Stop the process and delete the temp dir."""
        self.stop()
        self._finalizer()

    def logs(self) -> str:
        """Everything the process (all runs, if restarted) wrote to stdout/stderr so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def current_logs(self) -> str:
        """What the current (last started) process wrote so far."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_offset)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# --------------------------------------------------------------------------- #
# Redis
# --------------------------------------------------------------------------- #


def redis_ping(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if a Redis server at host:port answers PING (raw RESP, no client library)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def redis_server_pid(host: str, port: int, timeout: float = 0.5) -> int | None:
    """``process_id`` from ``INFO server`` of the Redis at host:port, or None."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(b"*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n")
            data = b""
            while b"process_id:" not in data or not data.endswith(b"\r\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None
    m = re.search(rb"process_id:(\d+)", data)
    return int(m.group(1)) if m else None


class RedisServer(_Service):
    """A throw-away ``redis-server`` on 127.0.0.1 without persistence.

    ``stop()`` then ``start()`` restarts it on the same port (with an empty
    dataset).  Use as a context manager, or call ``start()`` and ``close()``.
    """

    name = "redis"
    startup_timeout = 10.0

    def __init__(self, port: int | None = None) -> None:
        self.binary = require_binary("redis-server")
        super().__init__(port)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def _command(self) -> list[str]:
        return [
            self.binary,
            "--port", str(self.port),
            "--bind", self.host,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.tmpdir),
        ]  # fmt: skip

    def _ready(self) -> bool:
        # our process, not some other server that got the port first
        return redis_server_pid(self.host, self.port) == self.pid

    def start(self) -> RedisServer:
        super().start()
        return self

    def __enter__(self) -> RedisServer:
        return self.start()


# --------------------------------------------------------------------------- #
# CNCF distribution (docker-registry)
# --------------------------------------------------------------------------- #


def http_status(url: str, timeout: float = 1.0) -> int | None:
    """Status code of ``GET url`` (any status, including 4xx/5xx), or None if unreachable."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except (OSError, ValueError):
        return None


# 127.0.0.1 - - [28/Nov/2026:16:10:06 +0000] "GET /v2/r/manifests/v1 HTTP/1.1" 200 401 "" "ua"
_ACCESS_LOG_RE = re.compile(
    r"^(?P<remote>\S+) \S+ (?P<user>\S+) \[[^\]]*\] "
    r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[0-9.]+" (?P<status>\d{3}) (?P<size>\d+|-) '
    r'"[^"]*" "(?P<ua>[^"]*)"',
    re.MULTILINE,
)


@dataclass(frozen=True)
class AccessLogEntry:
    """One request as recorded in the registry's (Apache combined) access log."""

    method: str
    path: str
    status: int
    size: int
    user_agent: str


def parse_access_log(text: str) -> list[AccessLogEntry]:
    """Parse the combined-format access-log lines out of a registry's output."""
    return [
        AccessLogEntry(
            method=m["method"],
            path=m["path"],
            status=int(m["status"]),
            size=0 if m["size"] == "-" else int(m["size"]),
            user_agent=m["ua"],
        )
        for m in _ACCESS_LOG_RE.finditer(text)
    ]


class _RegistryEndpoint(_Service):
    """A service that clients address as a registry host (a registry or a proxy)."""

    @property
    def address(self) -> str:
        """``127.0.0.1:N`` — the host part of image references."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def docker_ref(self, repo: str, tag: str | None = None, digest: str | None = None) -> str:
        """``docker://127.0.0.1:N/repo:tag`` or ``docker://127.0.0.1:N/repo@sha256:...``."""
        return "docker://" + image_ref(self.address, repo, tag=tag, digest=digest)

    def image_ref(self, repo: str, tag: str | None = None, digest: str | None = None) -> str:
        """``127.0.0.1:N/repo:tag`` (no transport prefix; what ctr expects)."""
        return image_ref(self.address, repo, tag=tag, digest=digest)


class DockerRegistry(_RegistryEndpoint):
    """CNCF distribution 2.x (``docker-registry`` on Debian, ``registry`` upstream).

    Filesystem storage in a temp dir, deletes enabled, no cache, optional
    htpasswd (bcrypt) basic auth via ``auth=(user, password)``.  The access log
    and app log (method, URI, user agent, status per request) are in ``logs()``;
    ``requests()`` parses the access log.  ``stop()`` + ``start()`` restarts it
    on the same port with the same storage.
    """

    name = "registry"
    startup_timeout = 20.0

    def __init__(
        self,
        *,
        auth: tuple[str, str] | None = None,
        port: int | None = None,
        log_level: str = "info",
    ) -> None:
        self.binary = require_binary("docker-registry", "registry")
        self.auth = auth
        self.log_level = log_level
        if auth is not None:
            require_binary("htpasswd")
        super().__init__(port)
        self.storage_dir = self.tmpdir / "storage"
        self.config_path = self.tmpdir / "config.yml"
        self.htpasswd_path = self.tmpdir / "htpasswd"

    def requests(self, since: int = 0) -> list[AccessLogEntry]:
        """Requests served so far (from the access log), starting at index ``since``.

        Use ``mark = len(reg.requests())`` before an operation and
        ``reg.requests(since=mark)`` after it.  The log line is written when the
        response completes; use ``wait_for_requests`` if a client might still
        be finishing.
        """
        return parse_access_log(self.logs())[since:]

    def wait_for_requests(
        self,
        predicate: Callable[[list[AccessLogEntry]], bool],
        *,
        since: int = 0,
        timeout: float = 5.0,
    ) -> list[AccessLogEntry]:
        """Poll ``requests(since)`` until ``predicate`` holds; raise ``TimeoutError`` if not."""
        deadline = time.monotonic() + timeout
        while True:
            entries = self.requests(since)
            if predicate(entries):
                return entries
            if time.monotonic() > deadline:
                raise TimeoutError(f"access log condition not met; got {entries!r}")
            time.sleep(0.05)

    def _write_config(self) -> None:
        self.storage_dir.mkdir(exist_ok=True)
        config: dict[str, Any] = {
            "version": "0.1",
            "log": {
                "level": self.log_level,
                "formatter": "text",
                "accesslog": {"disabled": False},
                "fields": {"service": "registry"},
            },
            "storage": {
                "filesystem": {"rootdirectory": str(self.storage_dir)},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {
                "addr": self.address,
                "secret": "pullstats-e2e-not-a-secret",
                "headers": {"X-Content-Type-Options": ["nosniff"]},
            },
        }
        if self.auth is not None:
            user, password = self.auth
            out = run_command(
                [require_binary("htpasswd"), "-Bbn", user, password], timeout=60
            ).stdout
            self.htpasswd_path.write_text(out.strip() + "\n")
            config["auth"] = {
                "htpasswd": {"realm": "pullstats-e2e", "path": str(self.htpasswd_path)}
            }
        # JSON is valid YAML, and avoids any quoting issue
        self.config_path.write_text(json.dumps(config, indent=2))

    def _command(self) -> list[str]:
        self._write_config()
        return [self.binary, "serve", str(self.config_path)]

    def _env(self) -> dict[str, str]:
        # REGISTRY_* variables override the config file; do not inherit any
        return {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}

    def _ready(self) -> bool:
        # "listening on" (info level) proves that our process bound the port
        if self.log_level in ("debug", "info") and (
            f"listening on {self.address}" not in self.current_logs()
        ):
            return False
        return http_status(self.url + "/v2/") in (200, 401)

    def start(self) -> DockerRegistry:
        super().start()
        return self

    def __enter__(self) -> DockerRegistry:
        return self.start()


def image_ref(host: str, repo: str, tag: str | None = None, digest: str | None = None) -> str:
    """``host/repo:tag``, ``host/repo@digest`` (or ``host/repo:tag@digest``)."""
    ref = f"{host}/{repo}"
    if tag:
        ref += f":{tag}"
    if digest:
        ref += f"@{digest}"
    if not tag and not digest:
        raise ValueError("tag or digest required")
    return ref


# --------------------------------------------------------------------------- #
# pullstats proxy (the product, as its command runs it)
# --------------------------------------------------------------------------- #

#: Configuration the proxy would read from the environment; the tests' own settings win.
_PULLSTATS_ENV_PREFIXES = ("PULL_METRICS_", "FEATURE_IMAGE_PULL_STATS", "USER_EVENTS_REDIS")


class PullstatsProxy(_RegistryEndpoint):
    """``python -m pullstats_middleware.cli proxy`` in front of ``upstream``, counting into Redis.

    Records every ``PULL_METRICS_FLUSH_INTERVAL`` (default here 0.05 s) seconds;
    ``env`` adds or overrides configuration variables; ``workers`` is ``--workers``.
    Its log (with uvicorn's access log, which the tests read, at ``info``) is in
    ``logs()``.
    """

    name = "pullstats-proxy"
    startup_timeout = 30.0

    def __init__(
        self,
        upstream: str,
        redis_url: str,
        *,
        port: int | None = None,
        flush_interval: float = 0.05,
        log_level: str = "info",
        env: dict[str, str] | None = None,
        workers: int = 1,
    ) -> None:
        self.upstream = upstream
        self.workers = workers
        self.redis_url = redis_url
        self.flush_interval = flush_interval
        self.log_level = log_level
        self.extra_env = dict(env or {})
        super().__init__(port)

    def _command(self) -> list[str]:
        return [
            sys.executable, "-m", "pullstats_middleware.cli", "proxy",
            "--upstream", self.upstream,
            "--host", self.host,
            "--port", str(self.port),
            "--redis-url", self.redis_url,
            "--log-level", self.log_level,
            "--access-log",
            "--workers", str(self.workers),
        ]  # fmt: skip

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(_PULLSTATS_ENV_PREFIXES)}
        env["PULL_METRICS_FLUSH_INTERVAL"] = str(self.flush_interval)
        env.update(self.extra_env)
        return env

    def _ready(self) -> bool:
        # The command binds the port itself and exits if it is taken, so an
        # answer from a live process of ours is an answer from this proxy.
        return http_status(self.url + "/v2/") in (200, 401)

    def start(self) -> PullstatsProxy:
        super().start()
        return self

    def __enter__(self) -> PullstatsProxy:
        return self.start()


# --------------------------------------------------------------------------- #
# containerd + ctr
# --------------------------------------------------------------------------- #

_CONTAINERD_DISABLED_PLUGINS = [
    "io.containerd.grpc.v1.cri",
    "io.containerd.internal.v1.opt",  # would write to /opt/containerd
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
]


class Containerd(_Service):
    """A private ``containerd`` daemon (root required) with its own root, state and socket.

    Only the content store / images / leases services matter here; CRI and the
    snapshotters that need special filesystems are disabled.
    """

    name = "containerd"
    uses_tcp_port = False  # listens on a unix socket in its temp dir
    startup_timeout = 30.0

    def __init__(self, *, namespace: str = "pullstats-e2e") -> None:
        self.binary = require_binary("containerd")
        self.ctr_binary = require_binary("ctr")
        if os.geteuid() != 0:
            raise ServiceError("containerd must run as root")
        super().__init__()
        self.namespace = namespace
        self.root = self.tmpdir / "root"
        self.state = self.tmpdir / "state"
        self.address = str(self.tmpdir / "containerd.sock")
        self.config_path = self.tmpdir / "config.toml"
        if len(self.address) > 100:
            raise ServiceError(f"unix socket path too long: {self.address}")

    def _write_config(self) -> None:
        self.root.mkdir(exist_ok=True)
        self.state.mkdir(exist_ok=True)
        q = json.dumps  # TOML basic strings are compatible with JSON strings
        lines = [
            "version = 2",
            f"root = {q(str(self.root))}",
            f"state = {q(str(self.state))}",
            f"disabled_plugins = [{', '.join(q(p) for p in _CONTAINERD_DISABLED_PLUGINS)}]",
            "",
            "[grpc]",
            f"  address = {q(self.address)}",
            "",
            "[ttrpc]",
            f"  address = {q(self.address + '.ttrpc')}",
            "",
            "[debug]",
            '  level = "info"',
            "",
        ]
        self.config_path.write_text("\n".join(lines))

    def _command(self) -> list[str]:
        self._write_config()
        return [self.binary, "--config", str(self.config_path)]

    def _ready(self) -> bool:
        if not os.path.exists(self.address):
            return False
        return self.ctr("version", check=False, timeout=10).returncode == 0

    def start(self) -> Containerd:
        super().start()
        return self

    def __enter__(self) -> Containerd:
        return self.start()

    def ctr(
        self, *args: str, check: bool = True, timeout: float = 300.0
    ) -> subprocess.CompletedProcess[str]:
        """Run ``ctr --address SOCK --namespace NS ARGS...``."""
        return run_command(
            [self.ctr_binary, "--address", self.address, "--namespace", self.namespace, *args],
            check=check,
            timeout=timeout,
        )

    def fetch(
        self,
        ref: str,
        plain_http: bool = True,
        user: str | None = None,
        *,
        platform: str | None = None,
        all_platforms: bool = False,
        http_dump: bool = False,
        check: bool = True,
        timeout: float = 300.0,
    ) -> subprocess.CompletedProcess[str]:
        """``ctr content fetch [--plain-http] [--user u:p] [--platform P] REF``.

        ``ref`` is ``host:port/repo:tag`` or ``host:port/repo@sha256:...`` (no
        ``docker://``).  Without ``platform``/``all_platforms`` ctr picks the
        host platform from an index.  ``http_dump`` makes ctr print every HTTP
        request and response to stderr.
        """
        args = ["content", "fetch"]
        if plain_http:
            args.append("--plain-http")
        if user is not None:
            args += ["--user", user]
        if platform is not None:
            args += ["--platform", platform]
        if all_platforms:
            args.append("--all-platforms")
        if http_dump:
            args.append("--http-dump")
        args.append(ref)
        return self.ctr(*args, check=check, timeout=timeout)

    def content_digests(self) -> set[str]:
        """Digests of all blobs in the content store."""
        out = self.ctr("content", "ls", "-q").stdout
        return {line.strip() for line in out.splitlines() if line.strip()}

    def image_names(self) -> list[str]:
        out = self.ctr("images", "ls", "-q").stdout
        return [line.strip() for line in out.splitlines() if line.strip()]

    def clear(self) -> None:
        """Remove all images and content, so the next fetch downloads everything again."""
        images = self.image_names()
        if images:
            self.ctr("images", "rm", "--sync", *images)
        digests = sorted(self.content_digests())
        if digests:
            self.ctr("content", "rm", *digests)


# --------------------------------------------------------------------------- #
# skopeo
# --------------------------------------------------------------------------- #


def _is_docker(ref: str) -> bool:
    return ref.startswith("docker://")


def skopeo(
    *args: str, check: bool = True, timeout: float = 300.0
) -> subprocess.CompletedProcess[str]:
    """Run ``skopeo --insecure-policy ARGS...``."""
    return run_command(
        [require_binary("skopeo"), "--insecure-policy", *args], check=check, timeout=timeout
    )


def skopeo_copy(
    src: str,
    dst: str,
    *,
    creds: str | None = None,
    src_creds: str | None = None,
    dest_creds: str | None = None,
    tls_verify: bool = False,
    all_images: bool = False,
    preserve_digests: bool = True,
    check: bool = True,
    timeout: float = 300.0,
) -> subprocess.CompletedProcess[str]:
    """``skopeo copy SRC DST`` for ``oci:DIR:TAG`` / ``docker://host/repo:tag|@digest`` refs.

    ``creds`` ("user:pass") applies to every ``docker://`` side unless
    ``src_creds``/``dest_creds`` are given.  A ``docker://`` side without
    credentials is accessed anonymously (``--*-no-creds``), ignoring any
    auth.json of the machine.  ``all_images`` copies every image of an index.
    """
    verify = "true" if tls_verify else "false"
    args = ["copy", "--retry-times", "0"]
    if all_images:
        args.append("--all")
    if preserve_digests:
        args.append("--preserve-digests")
    for side, ref, side_creds in (("src", src, src_creds), ("dest", dst, dest_creds)):
        if not _is_docker(ref):
            continue
        args.append(f"--{side}-tls-verify={verify}")
        c = side_creds if side_creds is not None else creds
        args += [f"--{side}-creds", c] if c is not None else [f"--{side}-no-creds"]
    args += [src, dst]
    return skopeo(*args, check=check, timeout=timeout)


def skopeo_inspect(
    ref: str,
    *,
    creds: str | None = None,
    tls_verify: bool = False,
    raw: bool = False,
    config: bool = False,
    check: bool = True,
    timeout: float = 120.0,
) -> Any:
    """``skopeo inspect [--raw] [--config] REF`` parsed as JSON.

    With ``raw`` this is the manifest (or index) exactly as served.
    """
    args = ["inspect", "--retry-times", "0"]
    if _is_docker(ref):
        args.append(f"--tls-verify={'true' if tls_verify else 'false'}")
        args += ["--creds", creds] if creds is not None else ["--no-creds"]
    if raw:
        args.append("--raw")
    if config:
        args.append("--config")
    args.append(ref)
    proc = skopeo(*args, check=check, timeout=timeout)
    if proc.returncode != 0:
        return None
    return json.loads(proc.stdout)


def skopeo_pull(
    ref: str,
    dest: Path | str | None = None,
    *,
    tag: str = "pulled",
    creds: str | None = None,
    all_images: bool = False,
    timeout: float = 300.0,
) -> Path:
    """Copy ``docker://...`` (by tag or ``@sha256:`` digest) into an ``oci:`` layout.

    ``dest`` defaults to a new temp dir (the caller removes it).  Returns the
    layout directory; the image is stored there under ``tag``.
    """
    if not _is_docker(ref):
        ref = "docker://" + ref
    out = Path(dest) if dest is not None else Path(tempfile.mkdtemp(prefix="pullstats-pull-"))
    skopeo_copy(ref, f"oci:{out}:{tag}", creds=creds, all_images=all_images, timeout=timeout)
    return out


def skopeo_push(
    src: str,
    registry: DockerRegistry | str,
    repo: str,
    tag: str,
    *,
    creds: str | None = None,
    all_images: bool = False,
    timeout: float = 300.0,
) -> subprocess.CompletedProcess[str]:
    """Copy ``src`` (e.g. ``oci:DIR:TAG``) to ``docker://REGISTRY/repo:tag``."""
    host = registry.address if isinstance(registry, DockerRegistry) else registry
    dst = "docker://" + image_ref(host, repo, tag=tag)
    return skopeo_copy(src, dst, creds=creds, all_images=all_images, timeout=timeout)


@contextlib.contextmanager
def temp_dir(prefix: str = "pullstats-e2e-") -> Iterator[Path]:
    """A temp directory removed on exit (for pull destinations and layouts)."""
    d = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)
