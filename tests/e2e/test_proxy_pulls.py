"""Pull statistics through `pullstats proxy`, end to end, with real clients.

One scenario, in file order (each step builds on the counts of the last):
a redis-server, a CNCF distribution registry, the proxy (as its command runs
it) in front of the registry, and a containerd. Images are pushed and pulled
through the proxy with skopeo and ctr, and the statistics are read from the
proxy's own HTTP routes. Then: a 200 MB blob through the proxy (memory), an
htpasswd-protected registry behind its own proxy, and two proxies behind a
round-robin balancer sharing one Redis (containerd's HEAD on one, its GET on
the other).

Reading the statistics: the proxy writes counts every 0.05 s in the
background, so every read polls until the answer is exactly what is expected
(or ~10 s pass; then the assertion shows the difference). After that, a
*sentinel* pull through each proxy involved is awaited in the statistics:
the recorder writes in order, so once the sentinel is in Redis, everything
the proxy saw before it is too, and a second read must give the same answer
(a late double count fails here rather than passing unnoticed).
"""

from __future__ import annotations

import base64
import hashlib
import platform
import re
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx2
import pytest

from tests.apps import TAG_FIELDS
from tests.e2e.oci_image import (
    ImageInfo,
    MultiArchInfo,
    build_large_image,
    build_multiarch_image,
    build_tiny_image,
    index_entries,
)
from tests.e2e.services import (
    Containerd,
    DockerRegistry,
    PullstatsProxy,
    RedisServer,
    skopeo_pull,
    skopeo_push,
)
from tests.test_proxy import Served

if TYPE_CHECKING:
    from starlette.types import Message, Receive, Scope, Send

pytestmark = pytest.mark.e2e

USER, PASSWORD = "alice", "s3cret-pw"
CREDS = f"{USER}:{PASSWORD}"
BASIC = "Basic " + base64.b64encode(CREDS.encode()).decode()
STATS_TIMEOUT = 10.0
MiB = 1024 * 1024
LARGE_SIZE = 200_000_000
RSS_LIMIT = 64 * MiB
ISO_SECOND = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
HOST_PLATFORM = "linux/" + _ARCH.get(platform.machine().lower(), platform.machine().lower())
MANIFEST_ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)


# --------------------------------------------------------------------------- #
# reading the statistics
# --------------------------------------------------------------------------- #


def utc_second() -> str:
    """Now, truncated to the second, in the format of `last_pull_date`."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Since:
    """Compares equal to an ISO 8601 UTC date (`YYYY-MM-DDTHH:MM:SSZ`) at or after `start`."""

    __hash__ = None  # type: ignore[assignment]

    def __init__(self, start: str) -> None:
        self.start = start

    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and bool(ISO_SECOND.fullmatch(other)) and other >= self.start

    def __repr__(self) -> str:
        return f"<ISO date >= {self.start}>"


def tag_route(base: str, repo: str, tag: str) -> str:
    return f"{base}/api/v1/repository/{repo}/tag/{tag}/pull_statistics"


def manifest_route(base: str, repo: str, digest: str) -> str:
    return f"{base}/api/v1/repository/{repo}/manifest/{digest}/pull_statistics"


def tag_answer(
    tag: str, count: int, date: Any, digest: str, manifests: int, manifest_date: Any
) -> dict[str, Any]:
    return {
        "tag_name": tag,
        "tag_pull_count": count,
        "last_tag_pull_date": date,
        "current_manifest_digest": digest,
        "manifest_pull_count": manifests,
        "last_manifest_pull_date": manifest_date,
    }


def manifest_answer(digest: str, count: int, date: Any) -> dict[str, Any]:
    return {
        "manifest_digest": digest,
        "manifest_pull_count": count,
        "last_manifest_pull_date": date,
    }


def read_json(client: httpx2.Client, url: str, headers: Mapping[str, str]) -> Any:
    response = client.get(url, headers=dict(headers))
    if response.status_code != 200:
        return {"HTTP status": response.status_code, "body": response.text}
    return response.json()


def poll_exact(
    client: httpx2.Client, url: str, want: Mapping[str, Any], headers: Mapping[str, str]
) -> Any:
    """Read `url` until its JSON equals `want` (or STATS_TIMEOUT passes); assert equality."""
    deadline = time.monotonic() + STATS_TIMEOUT
    got = read_json(client, url, headers)
    while got != want and time.monotonic() < deadline:
        time.sleep(0.05)
        got = read_json(client, url, headers)
    assert got == want, url
    return got


@dataclass
class Sentinel:
    """A pull of its own through a proxy, awaited in Redis: proof that the proxy wrote
    everything it recorded before it (the recorder applies batches in order)."""

    client: httpx2.Client
    repo: str
    tag: str
    digest: str
    headers: dict[str, str] = field(default_factory=dict)
    count: int = 0

    def settle(self, *bases: str) -> None:
        for base in bases:
            pulled = self.client.get(
                f"{base}/v2/{self.repo}/manifests/{self.tag}",
                headers={
                    "Accept": MANIFEST_ACCEPT,
                    "User-Agent": "pullstats-e2e-sentinel",
                    **self.headers,
                },
            )
            assert pulled.status_code == 200, pulled.text
            assert pulled.headers["docker-content-digest"] == self.digest
            self.count += 1
            want = tag_answer(self.tag, self.count, Since("0"), self.digest, self.count, Since("0"))
            poll_exact(self.client, tag_route(base, self.repo, self.tag), want, self.headers)


@dataclass
class Stats:
    """The statistics routes of one proxy (and the proxies whose writes must have landed)."""

    client: httpx2.Client
    base: str
    sentinel: Sentinel
    settle_through: tuple[str, ...]
    headers: dict[str, str] = field(default_factory=dict)

    def expect(self, url: str, want: Mapping[str, Any]) -> Any:
        got = poll_exact(self.client, url, want, self.headers)
        self.sentinel.settle(*self.settle_through)
        assert read_json(self.client, url, self.headers) == got, f"{url} changed after settling"
        return got

    def tag(self, repo: str, tag: str, want: Mapping[str, Any]) -> Any:
        got = self.expect(tag_route(self.base, repo, tag), want)
        assert set(got) == set(TAG_FIELDS)
        return got

    def manifest(self, repo: str, digest: str, want: Mapping[str, Any]) -> Any:
        return self.expect(manifest_route(self.base, repo, digest), want)


# --------------------------------------------------------------------------- #
# proxy memory
# --------------------------------------------------------------------------- #


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of `pid`, in bytes."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def reset_peak(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux `clear_refs` 5); False where not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class RssSampler(threading.Thread):
    """Samples a process's VmRSS every few milliseconds, keeping the highest."""

    def __init__(self, pid: int, interval: float = 0.005) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.peak = max(self.peak, proc_status(self.pid)["VmRSS"])
            self.samples += 1
            self._stop_event.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop_event.set()
        self.join(5)


@dataclass
class MemoryFigures:
    before: int
    peak: int
    after: int
    samples: int
    hwm_reset: bool

    @property
    def growth(self) -> int:
        return self.peak - self.before

    def line(self, what: str, seconds: float) -> str:
        mb = LARGE_SIZE / seconds / 1e6
        return (
            f"{what}: RSS before {self.before / MiB:.1f} MiB, peak {self.peak / MiB:.1f} MiB "
            f"(+{self.growth / MiB:.1f} MiB; {self.samples} samples, VmHWM "
            f"{'reset before' if self.hwm_reset else 'since start'}), after "
            f"{self.after / MiB:.1f} MiB; {seconds:.2f} s, {mb:.0f} MB/s"
        )


class MemoryWatch:
    """RSS of `pid` before, during (sampled, and VmHWM reset beforehand) and after a block."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.figures: MemoryFigures | None = None

    def __enter__(self) -> MemoryWatch:
        self.hwm_reset = reset_peak(self.pid)
        self.before = proc_status(self.pid)["VmRSS"]
        self.sampler = RssSampler(self.pid).__enter__()
        self.started = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.monotonic() - self.started
        self.sampler.__exit__()
        status = proc_status(self.pid)
        peak = max(self.sampler.peak, status["VmRSS"])
        if self.hwm_reset:
            peak = max(peak, status["VmHWM"])
        self.figures = MemoryFigures(
            self.before, peak, status["VmRSS"], self.sampler.samples, self.hwm_reset
        )


def stream_sha256(client: httpx2.Client, url: str) -> tuple[str, int, httpx2.Headers]:
    digest = hashlib.sha256()
    size = 0
    with client.stream("GET", url) as response:
        assert response.status_code == 200, response.read()
        for chunk in response.iter_raw(1 << 20):
            digest.update(chunk)
            size += len(chunk)
        return "sha256:" + digest.hexdigest(), size, response.headers


# --------------------------------------------------------------------------- #
# a round-robin load balancer (ASGI, uvicorn in a thread)
# --------------------------------------------------------------------------- #

_HOP_BY_HOP = frozenset(
    b"connection keep-alive proxy-authenticate proxy-authorization te trailer "
    b"transfer-encoding upgrade".split()
)


@dataclass(frozen=True)
class Forwarded:
    backend: str
    method: str
    path: str
    status: int


class RoundRobin:
    """Sends each request to the next backend in turn, streaming both ways.

    Headers pass unchanged (Host, User-Agent, Authorization included) except
    the hop-by-hop ones; the client's address is appended to X-Forwarded-For,
    as a real balancer does (the proxies trust no forwarder, so they key the
    client by the balancer's address: 127.0.0.1 either way). `served` records
    which backend answered which request.
    """

    def __init__(self, backends: dict[str, str]) -> None:
        self.backends = backends
        self.names = list(backends)
        self.served: list[Forwarded] = []
        self._turn = 0
        self._lock = threading.Lock()
        self._client: httpx2.AsyncClient | None = None

    def start_with(self, name: str) -> None:
        with self._lock:
            self._turn = self.names.index(name)

    def _next(self) -> str:
        with self._lock:
            name = self.names[self._turn % len(self.names)]
            self._turn += 1
            return name

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    self._client = httpx2.AsyncClient(trust_env=False, timeout=60.0)
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    if self._client is not None:
                        await self._client.aclose()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        assert self._client is not None
        name = self._next()
        headers: list[tuple[bytes, bytes]] = []
        forwarded: list[bytes] = []
        has_body = False
        for key, value in scope["headers"]:
            if key == b"transfer-encoding" or (key == b"content-length" and value != b"0"):
                has_body = True
            if key == b"x-forwarded-for":
                forwarded.append(value)
            elif key not in _HOP_BY_HOP:
                headers.append((key, value))
        forwarded.append(scope["client"][0].encode())
        headers.append((b"x-forwarded-for", b", ".join(forwarded)))
        target = scope.get("raw_path") or scope["path"].encode()
        if scope.get("query_string"):
            target += b"?" + scope["query_string"]

        async def body() -> AsyncIterator[bytes]:
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return
                if message.get("body"):
                    yield message["body"]
                if not message.get("more_body", False):
                    return

        request = self._client.build_request(
            scope["method"],
            self.backends[name] + target.decode("latin-1"),
            headers=headers,
            content=body() if has_body else None,
        )
        response = await self._client.send(request, stream=True)
        try:
            self.served.append(
                Forwarded(name, scope["method"], scope["path"], response.status_code)
            )
            start: Message = {
                "type": "http.response.start",
                "status": response.status_code,
                "headers": [
                    (k, v) for k, v in response.headers.raw if k.lower() not in _HOP_BY_HOP
                ],
            }
            await send(start)
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await response.aclose()


# --------------------------------------------------------------------------- #
# module services and images
# --------------------------------------------------------------------------- #


@dataclass
class Scenario:
    """Answers of earlier steps that later steps compare against."""

    answers: dict[str, Any] = field(default_factory=dict)


@pytest.fixture(scope="module")
def scenario() -> Scenario:
    return Scenario()


@pytest.fixture(scope="module")
def containerd() -> Iterator[Containerd]:
    with Containerd() as ctrd:
        yield ctrd


@pytest.fixture(scope="module")
def client() -> Iterator[httpx2.Client]:
    with httpx2.Client(trust_env=False, timeout=60.0) as c:
        yield c


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> tuple[ImageInfo, MultiArchInfo]:
    root = tmp_path_factory.mktemp("images")
    return build_tiny_image(root / "tiny", "v1"), build_multiarch_image(root / "multi", "v1")


@pytest.fixture(scope="module")
def tiny(images: tuple[ImageInfo, MultiArchInfo]) -> ImageInfo:
    return images[0]


@pytest.fixture(scope="module")
def multi(images: tuple[ImageInfo, MultiArchInfo]) -> MultiArchInfo:
    return images[1]


@pytest.fixture(scope="module")
def sentinel(proxy: PullstatsProxy, tiny: ImageInfo, client: httpx2.Client) -> Sentinel:
    skopeo_push(tiny.oci_ref, proxy.address, "e2e/sentinel", "s")
    return Sentinel(client, "e2e/sentinel", "s", tiny.manifest_digest)


@pytest.fixture(scope="module")
def stats(client: httpx2.Client, proxy: PullstatsProxy, sentinel: Sentinel) -> Stats:
    return Stats(client, proxy.url, sentinel, (proxy.url,))


def manifest_requests(reg: DockerRegistry, since: int) -> list[tuple[str, str, int]]:
    return [(e.method, e.path, e.status) for e in reg.requests(since) if "/manifests/" in e.path]


# --------------------------------------------------------------------------- #
# 1-5: one image, skopeo and ctr, through the proxy
# --------------------------------------------------------------------------- #

TINY = "e2e/tiny"


def test_push_through_the_proxy_counts_nothing(
    proxy: PullstatsProxy, tiny: ImageInfo, stats: Stats, scenario: Scenario
) -> None:
    skopeo_push(tiny.oci_ref, proxy.address, TINY, "v1")
    digest = tiny.manifest_digest
    stats.sentinel.settle(proxy.url)  # whatever the push recorded has landed by now
    scenario.answers["tiny"] = stats.tag(TINY, "v1", tag_answer("v1", 0, None, digest, 0, None))
    stats.manifest(TINY, digest, manifest_answer(digest, 0, None))


def test_skopeo_pull_by_tag(
    proxy: PullstatsProxy, tiny: ImageInfo, stats: Stats, scenario: Scenario, tmp_path: Path
) -> None:
    start = utc_second()
    out = skopeo_pull(proxy.docker_ref(TINY, "v1"), tmp_path / "pulled")
    assert index_entries(out)["pulled"].digest == tiny.manifest_digest
    digest = tiny.manifest_digest
    scenario.answers["tiny"] = stats.tag(
        TINY, "v1", tag_answer("v1", 1, Since(start), digest, 1, Since(start))
    )
    stats.manifest(
        TINY,
        digest,
        manifest_answer(digest, 1, scenario.answers["tiny"]["last_manifest_pull_date"]),
    )


def test_skopeo_pull_by_digest(
    proxy: PullstatsProxy, tiny: ImageInfo, stats: Stats, scenario: Scenario, tmp_path: Path
) -> None:
    digest = tiny.manifest_digest
    before = scenario.answers["tiny"]
    start = utc_second()
    out = skopeo_pull(proxy.docker_ref(TINY, digest=digest), tmp_path / "pulled")
    assert index_entries(out)["pulled"].digest == digest
    scenario.answers["tiny"] = stats.tag(
        TINY, "v1", tag_answer("v1", 1, before["last_tag_pull_date"], digest, 2, Since(start))
    )
    stats.manifest(TINY, digest, manifest_answer(digest, 2, Since(start)))


def test_ctr_fetch_by_tag(
    proxy: PullstatsProxy,
    registry: DockerRegistry,
    containerd: Containerd,
    tiny: ImageInfo,
    stats: Stats,
    scenario: Scenario,
) -> None:
    digest = tiny.manifest_digest
    containerd.clear()
    mark = len(registry.requests())
    start = utc_second()
    containerd.fetch(proxy.image_ref(TINY, "v1"))
    assert tiny.layer_digest in containerd.content_digests()
    # through the proxy the registry sees what ctr sends (CLIENT_BEHAVIOUR.md)
    assert manifest_requests(registry, mark) == [
        ("HEAD", f"/v2/{TINY}/manifests/v1", 200),
        ("GET", f"/v2/{TINY}/manifests/{digest}", 200),
    ]
    scenario.answers["tiny"] = stats.tag(
        TINY, "v1", tag_answer("v1", 2, Since(start), digest, 3, Since(start))
    )
    stats.manifest(TINY, digest, manifest_answer(digest, 3, Since(start)))


def test_ctr_fetch_again_only_resolves_and_counts_nothing(
    proxy: PullstatsProxy,
    registry: DockerRegistry,
    containerd: Containerd,
    tiny: ImageInfo,
    stats: Stats,
    scenario: Scenario,
) -> None:
    before = scenario.answers["tiny"]
    mark = len(registry.requests())
    containerd.fetch(proxy.image_ref(TINY, "v1"))  # content still in the store: HEAD only
    assert [(m, p) for m, p, _ in manifest_requests(registry, mark)] == [
        ("HEAD", f"/v2/{TINY}/manifests/v1")
    ]
    stats.sentinel.settle(proxy.url)
    assert stats.tag(TINY, "v1", before) == before
    digest = tiny.manifest_digest
    stats.manifest(TINY, digest, manifest_answer(digest, 3, before["last_manifest_pull_date"]))


# --------------------------------------------------------------------------- #
# 6: multi-arch
# --------------------------------------------------------------------------- #

MULTI = "e2e/multi"


def multi_answers(
    stats: Stats, multi: MultiArchInfo, want: dict[str, tuple[int, Any]]
) -> dict[str, Any]:
    """Assert the manifest route for the index and every platform: {name: (count, date)}."""
    digests = {"index": multi.index_digest, **multi.manifest_digests}
    return {
        name: stats.manifest(MULTI, digests[name], manifest_answer(digests[name], *want[name]))
        for name in digests
    }


def test_multiarch_skopeo_then_ctr(
    proxy: PullstatsProxy,
    containerd: Containerd,
    multi: MultiArchInfo,
    stats: Stats,
    tmp_path: Path,
) -> None:
    assert HOST_PLATFORM in multi.images, f"no image for this machine's {HOST_PLATFORM}"
    (other,) = set(multi.images) - {HOST_PLATFORM}
    host = multi.images[HOST_PLATFORM]
    index = multi.index_digest
    skopeo_push(multi.oci_ref, proxy.address, MULTI, "v1", all_images=True)
    stats.sentinel.settle(proxy.url)
    stats.tag(MULTI, "v1", tag_answer("v1", 0, None, index, 0, None))
    multi_answers(stats, multi, {"index": (0, None), HOST_PLATFORM: (0, None), other: (0, None)})

    # skopeo: GET index by tag, GET the host platform's manifest by digest
    start = utc_second()
    out = skopeo_pull(proxy.docker_ref(MULTI, "v1"), tmp_path / "one")
    assert index_entries(out)["pulled"].digest == host.manifest_digest
    after_skopeo = stats.tag(MULTI, "v1", tag_answer("v1", 1, Since(start), index, 1, Since(start)))
    multi_answers(
        stats,
        multi,
        {"index": (1, Since(start)), HOST_PLATFORM: (1, Since(start)), other: (0, None)},
    )

    # ctr: HEAD tag, GET index by digest, GET the host platform's manifest by digest
    containerd.clear()
    start = utc_second()
    containerd.fetch(proxy.image_ref(MULTI, "v1"))
    content = containerd.content_digests()
    assert {index, host.manifest_digest, host.layer_digest} <= content
    assert multi.images[other].layer_digest not in content
    answer = stats.tag(MULTI, "v1", tag_answer("v1", 2, Since(start), index, 2, Since(start)))
    assert answer["last_tag_pull_date"] >= after_skopeo["last_tag_pull_date"]
    multi_answers(
        stats,
        multi,
        {"index": (2, Since(start)), HOST_PLATFORM: (2, Since(start)), other: (0, None)},
    )


# --------------------------------------------------------------------------- #
# 8: a 200 MB blob through the proxy
# --------------------------------------------------------------------------- #


def test_large_blob_streams_through_the_proxy_in_constant_memory(
    proxy: PullstatsProxy,
    registry: DockerRegistry,
    client: httpx2.Client,
    stats: Stats,
    tmp_path: Path,
) -> None:
    assert proxy.pid is not None
    big = build_large_image(tmp_path / "big", size=LARGE_SIZE, tag="v1")
    digest = big.layer_digest

    with MemoryWatch(proxy.pid) as upload:
        skopeo_push(big.oci_ref, proxy.address, "e2e/big", "v1")
    (tmp_path / "big" / "blobs" / "sha256" / big.layer.hex).unlink()  # free the disk early
    assert upload.figures is not None
    print(f"\n{upload.figures.line('push of the 200 MB layer through the proxy', upload.seconds)}")

    blob = f"/v2/e2e/big/blobs/{digest}"
    with MemoryWatch(proxy.pid) as download:
        proxied, proxied_size, proxied_headers = stream_sha256(client, proxy.url + blob)
    assert download.figures is not None
    print(download.figures.line("download of the 200 MB layer through the proxy", download.seconds))
    started = time.monotonic()
    direct, direct_size, direct_headers = stream_sha256(client, registry.url + blob)
    seconds = time.monotonic() - started
    print(
        f"download of the 200 MB layer from the registry directly: {seconds:.2f} s, "
        f"{LARGE_SIZE / seconds / 1e6:.0f} MB/s"
    )

    assert (proxied, proxied_size) == (digest, LARGE_SIZE)
    assert (direct, direct_size) == (proxied, proxied_size)  # the same bytes both ways
    for name in ("content-length", "docker-content-digest", "content-type", "etag"):
        assert proxied_headers.get(name) == direct_headers.get(name), name
    assert download.figures.growth < RSS_LIMIT, download.figures
    assert upload.figures.growth < RSS_LIMIT, upload.figures
    # a blob is not a manifest: nothing counted for the image
    stats.tag("e2e/big", "v1", tag_answer("v1", 0, None, big.manifest_digest, 0, None))


# --------------------------------------------------------------------------- #
# 9: an htpasswd-protected registry behind its own proxy
# --------------------------------------------------------------------------- #

SECRET = "e2e/secret"


@pytest.fixture(scope="module")
def auth_registry() -> Iterator[DockerRegistry]:
    with DockerRegistry(auth=(USER, PASSWORD)) as reg:
        yield reg


@pytest.fixture(scope="module")
def auth_proxy(auth_registry: DockerRegistry, redis: RedisServer) -> Iterator[PullstatsProxy]:
    with PullstatsProxy(auth_registry.url, redis.url) as service:
        yield service


def test_auth_registry_statistics_and_pulls(
    auth_registry: DockerRegistry,
    auth_proxy: PullstatsProxy,
    containerd: Containerd,
    client: httpx2.Client,
    tiny: ImageInfo,
    tmp_path: Path,
) -> None:
    digest = tiny.manifest_digest
    skopeo_push(tiny.oci_ref, auth_proxy.address, "e2e/secret-sentinel", "s", creds=CREDS)
    skopeo_push(tiny.oci_ref, auth_proxy.address, SECRET, "v1", creds=CREDS)
    authorized = {"Authorization": BASIC}
    sentinel = Sentinel(client, "e2e/secret-sentinel", "s", digest, dict(authorized))
    stats = Stats(client, auth_proxy.url, sentinel, (auth_proxy.url,), dict(authorized))

    route = tag_route(auth_proxy.url, SECRET, "v1")
    direct = client.head(f"{auth_registry.url}/v2/{SECRET}/manifests/v1")
    assert direct.status_code == 401
    challenge = direct.headers["www-authenticate"]
    for headers in ({}, {"Authorization": "Basic " + base64.b64encode(b"alice:no").decode()}):
        refused = client.get(route, headers=headers)
        assert refused.status_code == 401, refused.text
        assert refused.headers.get("www-authenticate") == challenge
        body = refused.json()
        assert body["status"] == 401 and set(body) == {"status", "title", "detail", "error_message"}
    refused = client.get(manifest_route(auth_proxy.url, SECRET, digest))
    assert refused.status_code == 401 and refused.headers.get("www-authenticate") == challenge

    sentinel.settle(auth_proxy.url)
    stats.tag(SECRET, "v1", tag_answer("v1", 0, None, digest, 0, None))

    start = utc_second()
    out = skopeo_pull(auth_proxy.docker_ref(SECRET, "v1"), tmp_path / "pulled", creds=CREDS)
    assert index_entries(out)["pulled"].digest == digest
    stats.tag(SECRET, "v1", tag_answer("v1", 1, Since(start), digest, 1, Since(start)))

    containerd.clear()
    mark = len(auth_registry.requests())
    start = utc_second()
    containerd.fetch(auth_proxy.image_ref(SECRET, "v1"), user=CREDS)
    assert tiny.layer_digest in containerd.content_digests()
    # ctr tries each manifest request anonymously first: two 401s that must not count
    assert manifest_requests(auth_registry, mark) == [
        ("HEAD", f"/v2/{SECRET}/manifests/v1", 401),
        ("HEAD", f"/v2/{SECRET}/manifests/v1", 200),
        ("GET", f"/v2/{SECRET}/manifests/{digest}", 401),
        ("GET", f"/v2/{SECRET}/manifests/{digest}", 200),
    ]
    stats.tag(SECRET, "v1", tag_answer("v1", 2, Since(start), digest, 2, Since(start)))
    stats.manifest(SECRET, digest, manifest_answer(digest, 2, Since(start)))


# --------------------------------------------------------------------------- #
# 10: two proxies behind a round-robin balancer, one Redis
# --------------------------------------------------------------------------- #

BALANCED = "e2e/balanced"


@pytest.fixture(scope="module")
def proxy_pair(
    registry: DockerRegistry, redis: RedisServer
) -> Iterator[tuple[PullstatsProxy, PullstatsProxy]]:
    with (
        PullstatsProxy(registry.url, redis.url) as a,
        PullstatsProxy(registry.url, redis.url) as b,
    ):
        yield a, b


def access_lines(service: PullstatsProxy, method: str, path: str) -> int:
    """How many times the proxy's (uvicorn) access log shows `METHOD path` answered 200."""
    return service.logs().count(f'"{method} {quote(path)} HTTP/1.1" 200')  # as uvicorn logs it


def test_two_proxies_behind_a_balancer_count_each_ctr_pull_once(
    proxy_pair: tuple[PullstatsProxy, PullstatsProxy],
    containerd: Containerd,
    client: httpx2.Client,
    sentinel: Sentinel,
    tiny: ImageInfo,
) -> None:
    a, b = proxy_pair
    balancer = RoundRobin({"A": a.url, "B": b.url})
    proxies = {"A": a, "B": b}
    digest = tiny.manifest_digest
    stats = Stats(client, a.url, sentinel, (a.url, b.url))
    head_path = f"/v2/{BALANCED}/manifests/v1"
    get_path = f"/v2/{BALANCED}/manifests/{digest}"
    with Served(balancer) as front:
        address = front.url.removeprefix("http://")
        skopeo_push(tiny.oci_ref, address, BALANCED, "v1")  # uploads alternate A, B, A, ...
        assert {f.backend for f in balancer.served} == {"A", "B"}
        sentinel.settle(a.url, b.url)
        stats.tag(BALANCED, "v1", tag_answer("v1", 0, None, digest, 0, None))

        for pull in range(1, 4):
            first, second = ("A", "B") if pull % 2 else ("B", "A")
            heads = {n: access_lines(p, "HEAD", head_path) for n, p in proxies.items()}
            gets = {n: access_lines(p, "GET", get_path) for n, p in proxies.items()}
            containerd.clear()
            balancer.start_with(first)
            mark = len(balancer.served)
            start = utc_second()
            containerd.fetch(f"{address}/{BALANCED}:v1")
            manifests = [
                (f.backend, f.method, f.path, f.status)
                for f in balancer.served[mark:]
                if "/manifests/" in f.path
            ]
            assert manifests == [
                (first, "HEAD", head_path, 200),
                (second, "GET", get_path, 200),
            ]
            # and the proxies' own access logs agree
            assert access_lines(proxies[first], "HEAD", head_path) == heads[first] + 1
            assert access_lines(proxies[second], "HEAD", head_path) == heads[second]
            assert access_lines(proxies[second], "GET", get_path) == gets[second] + 1
            assert access_lines(proxies[first], "GET", get_path) == gets[first]
            stats.tag(
                BALANCED,
                "v1",
                tag_answer("v1", pull, Since(start), digest, pull, Since(start)),
            )
            stats.manifest(BALANCED, digest, manifest_answer(digest, pull, Since(start)))


def test_no_tracebacks_in_the_proxy_logs(
    proxy: PullstatsProxy,
    auth_proxy: PullstatsProxy,
    proxy_pair: tuple[PullstatsProxy, PullstatsProxy],
) -> None:
    for service in (proxy, auth_proxy, *proxy_pair):
        assert "Traceback" not in service.logs(), service.logs()[-4000:]
