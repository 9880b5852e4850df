"""The split deployment, end to end: real nginx running the shipped recipe
(`examples/nginx/pullstats.conf`, rendered as a user renders it) in front of a
CNCF distribution registry, with `pullstats proxy` beside it for manifests and
the statistics routes only. skopeo and ctr push and pull through nginx.

After every step: the exact counts (read through nginx), and nginx's access
log, whose `upstream=` names who answered each request, split exactly as the
recipe promises (manifests and statistics to the proxy, all else to the
registry); the proxy's own access log never shows a blob. The proxy trusts
nginx's address (127.0.0.1) for X-Forwarded-For, and clients on other loopback
addresses show that it keys containerd's HEAD-then-GET pairing by the real
client, and that a client cannot pass itself off as another. Then: a chunked
48 MiB upload and a 1.5 MiB manifest (neither spooled to disk nor refused), and
the same recipe listening with TLS, where every Location keeps `https`.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx2
import pytest

from tests.e2e.nginx import (
    PLACEHOLDERS,
    RECIPE,
    NginxSplit,
    chunked_upload,
    render_recipe,
    to_proxy,
)
from tests.e2e.oci_image import MEDIA_TYPE_LAYER, MEDIA_TYPE_MANIFEST, ImageInfo, build_tiny_image
from tests.e2e.oci_image import deterministic_bytes as random_bytes
from tests.e2e.services import (
    Containerd,
    DockerRegistry,
    PullstatsProxy,
    RedisServer,
    require_binary,
    run_command,
    skopeo_pull,
    skopeo_push,
)
from tests.e2e.test_proxy_pulls import (
    Sentinel,
    Since,
    Stats,
    manifest_answer,
    tag_answer,
    utc_second,
)

pytestmark = pytest.mark.e2e

REPO = "e2e/split"
NGINX_HOST = "127.0.0.1"  # what nginx connects to the proxy from: the proxy trusts it


@pytest.fixture(scope="module")
def split_proxy(registry: DockerRegistry, redis: RedisServer) -> Iterator[PullstatsProxy]:
    env = {"PULL_METRICS_TRUSTED_PROXIES": NGINX_HOST}
    with PullstatsProxy(registry.url, redis.url, env=env) as service:
        yield service


@pytest.fixture(scope="module")
def nginx(registry: DockerRegistry, split_proxy: PullstatsProxy) -> Iterator[NginxSplit]:
    with NginxSplit(registry.address, split_proxy.address) as service:
        yield service


@pytest.fixture(scope="module")
def containerd() -> Iterator[Containerd]:
    with Containerd() as ctrd:
        yield ctrd


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> ImageInfo:
    return build_tiny_image(tmp_path_factory.mktemp("images") / "tiny", "v1")


@pytest.fixture(scope="module")
def stats(nginx: NginxSplit, tiny: ImageInfo) -> Iterator[Stats]:
    """The statistics routes, read through nginx (settled by a pull through nginx)."""
    with httpx2.Client(trust_env=False, timeout=60.0) as client:
        skopeo_push(tiny.oci_ref, nginx.address, "e2e/sentinel", "s")
        sentinel = Sentinel(client, "e2e/sentinel", "s", tiny.manifest_digest)
        yield Stats(client, nginx.url, sentinel, (nginx.url,))


def blobs_in_proxy_log(proxy: PullstatsProxy) -> list[str]:
    return [line for line in proxy.logs().splitlines() if "/blobs/" in line]


def test_the_recipe_documents_its_placeholders_and_renders_completely() -> None:
    text = RECIPE.read_text()
    for name in PLACEHOLDERS:
        assert f"#   ${{{name}}}" in text, f"{name} is not documented in the recipe's header"
    rendered = render_recipe("127.0.0.1:5000", "registry:5000", "pullstats:8080")
    assert "${" not in rendered
    assert "server registry:5000;" in rendered and "server pullstats:8080;" in rendered


def test_push_uploads_go_to_the_registry_and_count_nothing(
    nginx: NginxSplit, tiny: ImageInfo, stats: Stats
) -> None:
    mark = nginx.mark()
    skopeo_push(tiny.oci_ref, nginx.address, REPO, "v1")
    served = nginx.routed(mark)
    uploads = [s for s in served if "/blobs/uploads/" in s.path]
    assert {s.method for s in uploads} == {"POST", "PATCH", "PUT"}
    assert [(s.method, s.path) for s in served if to_proxy(s.path)] == [
        ("PUT", f"/v2/{REPO}/manifests/v1")
    ]
    digest = tiny.manifest_digest
    stats.sentinel.settle(nginx.url)
    stats.tag(REPO, "v1", tag_answer("v1", 0, None, digest, 0, None))


def test_skopeo_pulls_count_and_blobs_bypass_the_proxy(
    nginx: NginxSplit,
    split_proxy: PullstatsProxy,
    registry: DockerRegistry,
    tiny: ImageInfo,
    stats: Stats,
    tmp_path: Path,
) -> None:
    digest = tiny.manifest_digest
    mark = nginx.mark()
    start = utc_second()
    skopeo_pull(nginx.docker_ref(REPO, "v1"), tmp_path / "by-tag")
    tagged = stats.tag(REPO, "v1", tag_answer("v1", 1, Since(start), digest, 1, Since(start)))
    skopeo_pull(nginx.docker_ref(REPO, digest=digest), tmp_path / "by-digest")
    stats.tag(
        REPO, "v1", tag_answer("v1", 1, tagged["last_tag_pull_date"], digest, 2, Since(start))
    )
    served = nginx.routed(mark)
    blobs = [s for s in served if s.method == "GET" and "/blobs/" in s.path]
    assert {s.path for s in blobs} >= {f"/v2/{REPO}/blobs/{tiny.layer_digest}"}
    assert all(s.upstreams == {registry.address} for s in blobs)
    assert blobs_in_proxy_log(split_proxy) == []


def test_ctr_pull_pairs_head_and_get_through_nginx(
    nginx: NginxSplit,
    split_proxy: PullstatsProxy,
    containerd: Containerd,
    tiny: ImageInfo,
    stats: Stats,
) -> None:
    digest = tiny.manifest_digest
    containerd.clear()
    mark = nginx.mark()
    start = utc_second()
    containerd.fetch(nginx.image_ref(REPO, "v1"))
    assert tiny.layer_digest in containerd.content_digests()
    served = nginx.routed(mark)
    assert [(s.method, s.path, s.status) for s in served if to_proxy(s.path)] == [
        ("HEAD", f"/v2/{REPO}/manifests/v1", 200),
        ("GET", f"/v2/{REPO}/manifests/{digest}", 200),
    ]
    assert any(s.path == f"/v2/{REPO}/blobs/{tiny.layer_digest}" for s in served)
    before = stats.tag(REPO, "v1", tag_answer("v1", 2, Since(start), digest, 3, Since(start)))

    containerd.fetch(nginx.image_ref(REPO, "v1"))  # content kept: a HEAD only, no pull
    stats.sentinel.settle(nginx.url)
    assert stats.tag(REPO, "v1", before) == before
    stats.manifest(REPO, digest, manifest_answer(digest, 3, before["last_manifest_pull_date"]))
    assert blobs_in_proxy_log(split_proxy) == []


def test_the_proxy_keys_pairing_by_the_client_nginx_saw(
    nginx: NginxSplit, tiny: ImageInfo, stats: Stats
) -> None:
    digest = tiny.manifest_digest
    head, get = f"/v2/{REPO}/manifests/v1", f"/v2/{REPO}/manifests/{digest}"
    tags, manifests = 2, 3  # where the ctr test left them
    # (HEAD from, its extra headers, GET from, a tag pull?) — one user agent per step,
    # so that no step's unpaired HEAD can pair with a later step's GET
    steps = [
        ("127.0.0.2", {}, "127.0.0.3", False),  # two clients: a check, then a pull by digest
        ("127.0.0.1", {"X-Forwarded-For": "127.0.0.2"}, "127.0.0.2", False),  # a spoofed HEAD
        ("127.0.0.2", {}, "127.0.0.2", True),  # one client, HEAD then GET: containerd's pull
    ]
    for n, (head_from, extra, get_from, paired) in enumerate(steps):
        agent = {"User-Agent": f"pullstats-e2e-xff-{n}"}
        mark = nginx.mark()
        start = utc_second()
        assert nginx.request_from(head_from, "HEAD", head, **agent, **extra) == 200
        assert nginx.request_from(get_from, "GET", get, **agent) == 200
        # nginx saw the two requests from the addresses the test chose
        assert [(s.remote, s.method) for s in nginx.served(mark)] == [
            (head_from, "HEAD"),
            (get_from, "GET"),
        ]
        tags, manifests = tags + paired, manifests + 1
        tag_date = Since(start) if paired else Since("0")
        stats.tag(REPO, "v1", tag_answer("v1", tags, tag_date, digest, manifests, Since(start)))


def test_statistics_routes_answer_through_nginx(nginx: NginxSplit, stats: Stats) -> None:
    client, base = stats.client, nginx.url
    mark = nginx.mark()
    document = client.get(f"{base}/api/v1/pull_statistics/openapi.json")
    assert document.status_code == 200 and document.json()["openapi"].startswith("3.1")
    page = client.get(f"{base}/api/v1/pull_statistics/ui/{REPO}")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    listing = client.get(f"{base}/api/v1/repository/{REPO}/pull_statistics")
    assert listing.status_code == 200, listing.text
    slash = client.get(f"{base}/api/v1/repository/{REPO}/tag/v1/pull_statistics")
    encoded = client.get(f"{base}/api/v1/repository/e2e%2Fsplit/tag/v1/pull_statistics")
    assert slash.status_code == encoded.status_code == 200
    assert slash.json() == encoded.json() and slash.json()["tag_pull_count"] == 3
    assert client.get(f"{base}/v2/{REPO}/tags/list").json()["tags"] == ["v1"]
    assert REPO in client.get(f"{base}/v2/_catalog").json()["repositories"]
    served = nginx.routed(mark)
    assert sum(to_proxy(s.path) for s in served) == 5 and len(served) == 7


MiB = 1 << 20


def test_chunked_upload_and_a_large_manifest_stream_through(
    nginx: NginxSplit, registry: DockerRegistry, stats: Stats
) -> None:
    repo, size = "e2e/split-large", 48 * MiB
    layer = "sha256:" + hashlib.sha256(b"".join(random_bytes(size, b"split"))).hexdigest()
    config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    mark = nginx.mark()
    conn = http.client.HTTPConnection(nginx.host, nginx.port, timeout=120)
    location = chunked_upload(conn, repo, random_bytes(size, b"split"), layer)
    assert urlsplit(location).netloc == nginx.address
    uploads = rf'request\.host="?([^"\s]+).*uri=/v2/{repo}/blobs/uploads/'
    hosts = re.findall(uploads, registry.logs())
    assert hosts and set(hosts) == {nginx.address}  # the client's Host reached the registry
    chunked_upload(conn, repo, iter([config]), config_digest)
    # over nginx's default client_max_body_size (1 MiB), and over the proxy's 256 KiB
    # threshold for answers read whole: the GET below streams through it
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": len(config)},
        "layers": [{"mediaType": MEDIA_TYPE_LAYER, "digest": layer, "size": size}],
        "annotations": {"org.example.padding": "x" * (3 * MiB // 2)},
    }  # fmt: skip
    body = json.dumps(manifest).encode()
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    conn.request("PUT", f"/v2/{repo}/manifests/v1", body, {"Content-Type": MEDIA_TYPE_MANIFEST})
    put = conn.getresponse()
    put.read()
    conn.close()
    assert (put.status, put.headers["docker-content-digest"]) == (201, digest)

    start = utc_second()
    accept = {"Accept": MEDIA_TYPE_MANIFEST}
    pulled = stats.client.get(f"{nginx.url}/v2/{repo}/manifests/v1", headers=accept)
    assert pulled.status_code == 200, pulled.text[:200]
    assert "sha256:" + hashlib.sha256(pulled.content).hexdigest() == digest
    stats.tag(repo, "v1", tag_answer("v1", 1, Since(start), digest, 1, Since(start)))
    with stats.client.stream("GET", f"{nginx.url}/v2/{repo}/blobs/{layer}") as blob:
        hashed = hashlib.sha256()
        for chunk in blob.iter_raw(MiB):
            hashed.update(chunk)
    assert "sha256:" + hashed.hexdigest() == layer
    nginx.routed(mark)
    # nginx spooled neither the upload nor the download to a temporary file
    spooled = [line for line in nginx.logs().splitlines() if "to a temporary file" in line]
    assert [line for line in spooled if "request body" in line or "/blobs/" in line] == []


def test_behind_tls_every_answer_names_the_clients_scheme(
    registry: DockerRegistry,
    split_proxy: PullstatsProxy,
    tiny: ImageInfo,
    stats: Stats,
    tmp_path: Path,
) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    openssl = [require_binary("openssl"), "req", "-x509", "-newkey", "rsa:2048", "-nodes"]
    run_command([*openssl, "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"])
    repo, digest = "e2e/split-tls", tiny.manifest_digest
    with (
        NginxSplit(registry.address, split_proxy.address, tls=(cert, key)) as tls,
        httpx2.Client(verify=False, trust_env=False) as client,
    ):
        skopeo_push(tiny.oci_ref, tls.address, repo, "v1")  # skopeo tries HTTPS first
        manifest = tiny.blob_path(digest).read_bytes()
        put = client.put(
            f"{tls.url}/v2/{repo}/manifests/v2",
            content=manifest,
            headers={"Content-Type": MEDIA_TYPE_MANIFEST},
        )
        started = client.post(f"{tls.url}/v2/{repo}/blobs/uploads/")
        # through the proxy (which tells the registry `http`) and straight from it
        assert (put.status_code, started.status_code) == (201, 202)
        assert put.headers["location"].startswith(f"https://{tls.address}/v2/{repo}/manifests/")
        assert started.headers["location"].startswith(f"https://{tls.address}/v2/{repo}/blobs/")
        start = utc_second()
        skopeo_pull(tls.docker_ref(repo, "v1"), tmp_path / "pulled")
        tls.routed(0)
    stats.tag(repo, "v1", tag_answer("v1", 1, Since(start), digest, 1, Since(start)))


def test_blobs_never_reached_the_proxy_and_nothing_failed(
    nginx: NginxSplit, split_proxy: PullstatsProxy
) -> None:
    served = nginx.routed(0)  # the whole run
    assert sum("/blobs/" in s.path for s in served) > 10
    assert blobs_in_proxy_log(split_proxy) == []
    assert "Traceback" not in split_proxy.logs(), split_proxy.logs()[-4000:]
    levels = ("[error]", "[crit]", "[alert]", "[emerg]")
    assert [line for line in nginx.logs().splitlines() if any(x in line for x in levels)] == []
