"""The e2e helpers against a bare CNCF distribution registry (no middleware).

These prove that the image builders, the services and the client wrappers work
with real skopeo, ctr/containerd and docker-registry, and pin down the client
request sequences documented in CLIENT_BEHAVIOUR.md.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.oci_image import (
    MEDIA_TYPE_INDEX,
    MEDIA_TYPE_LAYER,
    MEDIA_TYPE_MANIFEST,
    ImageInfo,
    MultiArchInfo,
    blob_path,
    build_large_image,
    build_multiarch_image,
    build_tiny_image,
    index_entries,
    read_json_blob,
)
from tests.e2e.services import (
    CommandError,
    Containerd,
    DockerRegistry,
    RedisServer,
    http_status,
    redis_ping,
    skopeo_copy,
    skopeo_inspect,
    skopeo_pull,
    skopeo_push,
)

pytestmark = pytest.mark.e2e

USER, PASSWORD = "alice", "s3cret-pw"
CREDS = f"{USER}:{PASSWORD}"
SKOPEO_UA = "skopeo/"
CONTAINERD_UA = "containerd/"


# --------------------------------------------------------------------------- #
# module fixtures (local to this module; conftest.py belongs to the package tests)
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def registry() -> Iterator[DockerRegistry]:
    with DockerRegistry() as reg:
        yield reg


@pytest.fixture(scope="module")
def auth_registry() -> Iterator[DockerRegistry]:
    with DockerRegistry(auth=(USER, PASSWORD)) as reg:
        yield reg


@pytest.fixture(scope="module")
def containerd() -> Iterator[Containerd]:
    with Containerd() as ctrd:
        yield ctrd


@pytest.fixture()
def ctrd(containerd: Containerd) -> Containerd:
    """The shared containerd with an empty content store (so fetches really download)."""
    containerd.clear()
    return containerd


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> ImageInfo:
    return build_tiny_image(tmp_path_factory.mktemp("tiny"), "v1")


@pytest.fixture(scope="module")
def multi(tmp_path_factory: pytest.TempPathFactory) -> MultiArchInfo:
    return build_multiarch_image(tmp_path_factory.mktemp("multi"), "v1")


@pytest.fixture(scope="module")
def pushed_tiny(registry: DockerRegistry, tiny: ImageInfo) -> str:
    """Repo name of the tiny image pushed as ``tiny:v1`` to the open registry."""
    skopeo_push(tiny.oci_ref, registry, "tiny", "v1")
    return "tiny"


@pytest.fixture(scope="module")
def pushed_multi(registry: DockerRegistry, multi: MultiArchInfo) -> str:
    skopeo_push(multi.oci_ref, registry, "multi", "v1", all_images=True)
    return "multi"


def manifest_requests(reg: DockerRegistry, since: int) -> list[tuple[str, str, int, str]]:
    return [
        (e.method, e.path, e.status, e.user_agent)
        for e in reg.requests(since)
        if "/manifests/" in e.path
    ]


def assert_layout_has(layout: Path, digests: list[str]) -> None:
    for digest in digests:
        path = blob_path(layout, digest)
        assert path.is_file(), f"missing blob {digest}"
        assert "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest() == digest


# --------------------------------------------------------------------------- #
# pure-Python image layouts
# --------------------------------------------------------------------------- #


def test_tiny_layout_is_valid_and_deterministic(tmp_path: Path) -> None:
    a = build_tiny_image(tmp_path / "a", "x")
    b = build_tiny_image(tmp_path / "b", "x")
    assert a.manifest == b.manifest and a.layers == b.layers and a.config == b.config
    assert (tmp_path / "a" / "oci-layout").is_file()
    assert index_entries(tmp_path / "a")["x"].digest == a.manifest_digest
    assert_layout_has(a.layout, [a.manifest_digest, a.config.digest, a.layer_digest])
    manifest = read_json_blob(a.layout, a.manifest_digest)
    assert manifest["mediaType"] == MEDIA_TYPE_MANIFEST
    assert manifest["layers"][0]["digest"] == a.layer_digest
    config = read_json_blob(a.layout, a.config.digest)
    assert config["rootfs"]["diff_ids"] == list(a.diff_ids)
    other = build_tiny_image(tmp_path / "c", "x", content=b"something else\n")
    assert other.manifest_digest != a.manifest_digest


def test_multiarch_layout(tmp_path: Path) -> None:
    m = build_multiarch_image(tmp_path, "m")
    index = read_json_blob(tmp_path, m.index_digest)
    assert index["mediaType"] == MEDIA_TYPE_INDEX
    plats = {
        f"{d['platform']['os']}/{d['platform']['architecture']}": d for d in index["manifests"]
    }
    assert set(plats) == {"linux/amd64", "linux/arm64"}
    for plat, img in m.images.items():
        assert plats[plat]["digest"] == img.manifest_digest
        assert read_json_blob(tmp_path, img.config.digest)["architecture"] == plat.split("/")[1]
    assert len(set(m.manifest_digests.values())) == 2
    assert build_multiarch_image(tmp_path / "again", "m").index == m.index


# --------------------------------------------------------------------------- #
# services
# --------------------------------------------------------------------------- #


def test_redis_server_restart_same_port() -> None:
    with RedisServer() as redis:
        assert redis.url == f"redis://127.0.0.1:{redis.port}/0"
        assert redis_ping(redis.host, redis.port)
        redis.stop()
        assert not redis.running
        assert not redis_ping(redis.host, redis.port)
        redis.start()
        assert redis_ping(redis.host, redis.port)
        tmpdir = redis.tmpdir
    assert not redis.running
    assert not tmpdir.exists()


def test_registry_answers_v2(registry: DockerRegistry, auth_registry: DockerRegistry) -> None:
    assert registry.url.startswith("http://127.0.0.1:")
    assert http_status(registry.url + "/v2/") == 200
    assert http_status(auth_registry.url + "/v2/") == 401


# --------------------------------------------------------------------------- #
# skopeo
# --------------------------------------------------------------------------- #


def test_skopeo_push_then_pull_by_tag(
    registry: DockerRegistry, tiny: ImageInfo, pushed_tiny: str, tmp_path: Path
) -> None:
    mark = len(registry.requests())
    out = skopeo_pull(registry.docker_ref(pushed_tiny, "v1"), tmp_path / "pulled", tag="t")
    assert index_entries(out)["t"].digest == tiny.manifest_digest  # digests preserved
    assert_layout_has(out, [tiny.manifest_digest, tiny.config.digest, tiny.layer_digest])
    entries = registry.wait_for_requests(
        lambda r: sum("/blobs/" in e.path for e in r) >= 2, since=mark
    )
    assert all(e.user_agent.startswith(SKOPEO_UA) for e in entries)
    # skopeo fetches the manifest with one GET by tag (see CLIENT_BEHAVIOUR.md)
    assert [(m, p, s) for m, p, s, _ in manifest_requests(registry, mark)] == [
        ("GET", "/v2/tiny/manifests/v1", 200)
    ]
    blobs = {e.path for e in entries if e.method == "GET" and "/blobs/" in e.path}
    assert blobs == {f"/v2/tiny/blobs/{d}" for d in (tiny.layer_digest, tiny.config.digest)}


def test_skopeo_pull_by_digest(
    registry: DockerRegistry, tiny: ImageInfo, pushed_tiny: str, tmp_path: Path
) -> None:
    mark = len(registry.requests())
    ref = registry.docker_ref(pushed_tiny, digest=tiny.manifest_digest)
    out = skopeo_pull(ref, tmp_path / "pulled", tag="d")
    assert index_entries(out)["d"].digest == tiny.manifest_digest
    assert_layout_has(out, [tiny.manifest_digest, tiny.layer_digest])
    reqs = manifest_requests(registry, mark)
    assert [(m, p, s) for m, p, s, _ in reqs] == [
        ("GET", f"/v2/tiny/manifests/{tiny.manifest_digest}", 200)
    ]


def test_skopeo_inspect_raw(registry: DockerRegistry, tiny: ImageInfo, pushed_tiny: str) -> None:
    raw = skopeo_inspect(registry.docker_ref(pushed_tiny, "v1"), raw=True)
    assert raw == read_json_blob(tiny.layout, tiny.manifest_digest)
    info = skopeo_inspect(registry.docker_ref(pushed_tiny, "v1"))
    assert info["Digest"] == tiny.manifest_digest
    assert info["Architecture"] == "amd64"


def test_skopeo_missing_tag_fails(registry: DockerRegistry, pushed_tiny: str) -> None:
    with pytest.raises(CommandError) as exc:
        skopeo_inspect(registry.docker_ref(pushed_tiny, "does-not-exist"), raw=True)
    assert "manifest unknown" in exc.value.stderr


# --------------------------------------------------------------------------- #
# containerd / ctr
# --------------------------------------------------------------------------- #


def test_ctr_fetch_by_tag(
    registry: DockerRegistry, tiny: ImageInfo, pushed_tiny: str, ctrd: Containerd
) -> None:
    mark = len(registry.requests())
    ctrd.fetch(registry.image_ref(pushed_tiny, "v1"))
    assert {tiny.manifest_digest, tiny.config.digest, tiny.layer_digest} <= ctrd.content_digests()
    reqs = registry.wait_for_requests(lambda r: len(r) >= 4, since=mark)
    assert all(e.user_agent.startswith(CONTAINERD_UA) for e in reqs)
    # HEAD by tag to resolve, then GET by digest (see CLIENT_BEHAVIOUR.md)
    assert [(m, p, s) for m, p, s, _ in manifest_requests(registry, mark)] == [
        ("HEAD", "/v2/tiny/manifests/v1", 200),
        ("GET", f"/v2/tiny/manifests/{tiny.manifest_digest}", 200),
    ]


def test_ctr_fetch_twice_only_resolves_when_content_present(
    registry: DockerRegistry, tiny: ImageInfo, pushed_tiny: str, ctrd: Containerd
) -> None:
    ctrd.fetch(registry.image_ref(pushed_tiny, "v1"))
    registry.wait_for_requests(lambda r: any("/blobs/" in e.path for e in r))
    mark = len(registry.requests())
    ctrd.fetch(registry.image_ref(pushed_tiny, "v1"))
    assert [(e.method, e.path) for e in registry.requests(mark)] == [
        ("HEAD", "/v2/tiny/manifests/v1")
    ]
    ctrd.clear()
    assert ctrd.content_digests() == set()


def test_ctr_fetch_by_digest(
    registry: DockerRegistry, tiny: ImageInfo, pushed_tiny: str, ctrd: Containerd
) -> None:
    mark = len(registry.requests())
    ctrd.fetch(registry.image_ref(pushed_tiny, digest=tiny.manifest_digest))
    assert tiny.layer_digest in ctrd.content_digests()
    by_digest = f"/v2/tiny/manifests/{tiny.manifest_digest}"
    assert [(m, p, s) for m, p, s, _ in manifest_requests(registry, mark)] == [
        ("HEAD", by_digest, 200),
        ("GET", by_digest, 200),
    ]


# --------------------------------------------------------------------------- #
# multi-arch
# --------------------------------------------------------------------------- #


def test_multiarch_push_and_inspect(
    registry: DockerRegistry, multi: MultiArchInfo, pushed_multi: str
) -> None:
    raw = skopeo_inspect(registry.docker_ref(pushed_multi, "v1"), raw=True)
    assert raw["mediaType"] == MEDIA_TYPE_INDEX
    assert raw == read_json_blob(multi.layout, multi.index_digest)
    for digest in multi.manifest_digests.values():
        manifest = skopeo_inspect(registry.docker_ref(pushed_multi, digest=digest), raw=True)
        assert manifest["mediaType"] == MEDIA_TYPE_MANIFEST


def test_multiarch_skopeo_pull_all(
    registry: DockerRegistry, multi: MultiArchInfo, pushed_multi: str, tmp_path: Path
) -> None:
    mark = len(registry.requests())
    out = skopeo_pull(registry.docker_ref(pushed_multi, "v1"), tmp_path / "all", all_images=True)
    assert index_entries(out)["pulled"].digest == multi.index_digest
    assert_layout_has(out, [img.layer_digest for img in multi.images.values()])
    paths = [p for m, p, s, _ in manifest_requests(registry, mark) if m == "GET" and s == 200]
    assert paths[0] == "/v2/multi/manifests/v1"
    assert set(paths[1:]) == {f"/v2/multi/manifests/{d}" for d in multi.manifest_digests.values()}


def test_multiarch_skopeo_pull_default_platform(
    registry: DockerRegistry, multi: MultiArchInfo, pushed_multi: str, tmp_path: Path
) -> None:
    mark = len(registry.requests())
    out = skopeo_pull(registry.docker_ref(pushed_multi, "v1"), tmp_path / "one")
    amd64 = multi.images["linux/amd64"]  # the test machines are amd64
    assert index_entries(out)["pulled"].digest == amd64.manifest_digest
    assert [(m, p) for m, p, _, _ in manifest_requests(registry, mark)] == [
        ("GET", "/v2/multi/manifests/v1"),
        ("GET", f"/v2/multi/manifests/{amd64.manifest_digest}"),
    ]


def test_multiarch_ctr_fetch_platform(
    registry: DockerRegistry, multi: MultiArchInfo, pushed_multi: str, ctrd: Containerd
) -> None:
    arm64, amd64 = multi.images["linux/arm64"], multi.images["linux/amd64"]
    mark = len(registry.requests())
    ctrd.fetch(registry.image_ref(pushed_multi, "v1"), platform="linux/arm64")
    content = ctrd.content_digests()
    assert {multi.index_digest, arm64.manifest_digest, arm64.layer_digest} <= content
    assert amd64.layer_digest not in content
    assert [(m, p) for m, p, _, _ in manifest_requests(registry, mark)] == [
        ("HEAD", "/v2/multi/manifests/v1"),
        ("GET", f"/v2/multi/manifests/{multi.index_digest}"),
        ("GET", f"/v2/multi/manifests/{arm64.manifest_digest}"),
    ]


def test_multiarch_ctr_fetch_all_platforms(
    registry: DockerRegistry, multi: MultiArchInfo, pushed_multi: str, ctrd: Containerd
) -> None:
    ctrd.fetch(registry.image_ref(pushed_multi, "v1"), all_platforms=True)
    content = ctrd.content_digests()
    for img in multi.images.values():
        assert {img.manifest_digest, img.config.digest, img.layer_digest} <= content


# --------------------------------------------------------------------------- #
# authentication
# --------------------------------------------------------------------------- #


def test_auth_registry_rejects_without_creds_and_accepts_with_them(
    auth_registry: DockerRegistry, tiny: ImageInfo, ctrd: Containerd, tmp_path: Path
) -> None:
    ref = auth_registry.docker_ref("secret", "v1")
    with pytest.raises(CommandError) as exc:
        skopeo_push(tiny.oci_ref, auth_registry, "secret", "v1")
    assert "authentication required" in exc.value.stderr
    with pytest.raises(CommandError):
        skopeo_push(tiny.oci_ref, auth_registry, "secret", "v1", creds=f"{USER}:wrong")
    skopeo_push(tiny.oci_ref, auth_registry, "secret", "v1", creds=CREDS)

    with pytest.raises(CommandError) as exc:
        skopeo_inspect(ref, raw=True)
    assert "unauthorized" in exc.value.stderr
    assert skopeo_inspect(ref, raw=True, creds=CREDS)["layers"][0]["digest"] == tiny.layer_digest
    out = skopeo_pull(ref, tmp_path / "p", creds=CREDS)
    assert index_entries(out)["pulled"].digest == tiny.manifest_digest

    with pytest.raises(CommandError) as exc:
        ctrd.fetch(auth_registry.image_ref("secret", "v1"))
    assert "401" in exc.value.stderr
    mark = len(auth_registry.requests())
    ctrd.fetch(auth_registry.image_ref("secret", "v1"), user=CREDS)
    assert tiny.layer_digest in ctrd.content_digests()
    # containerd sends each manifest request anonymously first, then with Basic auth
    assert [(m, s) for m, _, s, _ in manifest_requests(auth_registry, mark)] == [
        ("HEAD", 401),
        ("HEAD", 200),
        ("GET", 401),
        ("GET", 200),
    ]


# --------------------------------------------------------------------------- #
# large blob (the only test that builds one)
# --------------------------------------------------------------------------- #


def test_large_layer_push_pull_fetch(
    registry: DockerRegistry, ctrd: Containerd, tmp_path: Path
) -> None:
    size = 200_000_000
    big = build_large_image(tmp_path / "src", size=size, tag="big")
    assert big.layer.media_type == MEDIA_TYPE_LAYER
    assert big.layer_size == size == blob_path(big.layout, big.layer_digest).stat().st_size
    skopeo_push(big.oci_ref, registry, "big", "v1")

    mark = len(registry.requests())
    ctrd.fetch(registry.image_ref("big", "v1"))
    assert big.layer_digest in ctrd.content_digests()
    entries = registry.wait_for_requests(
        lambda r: any(e.path.endswith(big.layer_digest) for e in r), since=mark
    )
    (layer_get,) = [e for e in entries if e.path.endswith(big.layer_digest)]
    assert (layer_get.method, layer_get.status, layer_get.size) == ("GET", 200, size)

    out = skopeo_pull(registry.docker_ref("big", "v1"), tmp_path / "pulled")
    assert blob_path(out, big.layer_digest).stat().st_size == size
    blob_path(out, big.layer_digest).unlink()  # free the disk early
    config = json.loads(blob_path(out, big.config.digest).read_bytes())
    assert config["rootfs"]["diff_ids"] == [big.layer_digest]


def test_skopeo_copy_between_registries(
    registry: DockerRegistry, auth_registry: DockerRegistry, tiny: ImageInfo, pushed_tiny: str
) -> None:
    skopeo_copy(
        registry.docker_ref(pushed_tiny, "v1"),
        auth_registry.docker_ref("copied", "v1"),
        dest_creds=CREDS,
    )
    raw = skopeo_inspect(auth_registry.docker_ref("copied", "v1"), raw=True, creds=CREDS)
    assert raw == read_json_blob(tiny.layout, tiny.manifest_digest)
