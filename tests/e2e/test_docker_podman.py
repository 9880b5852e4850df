"""docker (20.10, a private dockerd) and podman (4.3) pulling through `pullstats proxy`,
with the exact count expected after every step.

What they send, as seen here: docker resolves a tag with `HEAD …/manifests/TAG` and then
GETs the digest (as containerd does); a repeat `docker pull` of an image it has only
HEADs. (So docker's images are removed together with the manifests its containerd
caches: docker 20.10 HEADs the tag, finds the manifest in that cache and skips the GET,
until containerd collects it.) podman GETs the manifest by tag on every pull. A pull by
digest is a GET by digest. For a multi-arch tag both GET the index, then their
platform's image; `docker pull --platform` with the index cached skips the index GET:
its HEAD answers the index digest, its GET asks for the platform image.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest

from tests.e2e.clients import Dockerd, Podman
from tests.e2e.oci_image import (
    ImageInfo,
    MultiArchInfo,
    build_multiarch_image,
    build_tiny_image,
)
from tests.e2e.services import PullstatsProxy, skopeo_push
from tests.e2e.test_proxy_pulls import (
    HOST_PLATFORM,
    Sentinel,
    Since,
    Stats,
    manifest_answer,
    tag_answer,
)

pytestmark = pytest.mark.e2e

OTHER_PLATFORM = "linux/arm64" if HOST_PLATFORM != "linux/arm64" else "linux/amd64"


@dataclass
class Images:
    a: ImageInfo
    b: ImageInfo
    c: ImageInfo  # pulled by digest only
    multi: MultiArchInfo


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Images:
    root = tmp_path_factory.mktemp("images")
    return Images(
        build_tiny_image(root / "a", "v1", content=b"image A\n"),
        build_tiny_image(root / "b", "v1", content=b"image B\n"),
        build_tiny_image(root / "c", "v1", content=b"image C\n"),
        build_multiarch_image(root / "multi", "m1"),
    )


@pytest.fixture(scope="module")
def stats(proxy: PullstatsProxy, images: Images) -> Iterator[Stats]:
    with httpx2.Client(trust_env=False, timeout=60.0) as client:
        skopeo_push(images.a.oci_ref, proxy.address, "e2e/sentinel", "s")
        sentinel = Sentinel(client, "e2e/sentinel", "s", images.a.manifest_digest)
        yield Stats(client, proxy.url, sentinel, (proxy.url,))


class Expect:
    """The statistics of one repository's tag and manifests, read through the proxy."""

    def __init__(self, stats: Stats, proxy: PullstatsProxy, repo: str, tag: str) -> None:
        self.stats, self.proxy, self.repo, self.tag = stats, proxy, repo, tag

    def __call__(self, tag_count: int, current: str, **manifests: int) -> None:
        """`manifests`: the count of each digest, by name (a, b, index, host, other)."""
        counts = {self.digests[name]: count for name, count in manifests.items()}
        date = Since("0") if tag_count else None
        current_count = counts.get(current, 0)
        current_date = Since("0") if current_count else None
        want = tag_answer(self.tag, tag_count, date, current, current_count, current_date)
        try:
            self.stats.tag(self.repo, self.tag, want)
            for digest, count in counts.items():
                answer = manifest_answer(digest, count, Since("0") if count else None)
                self.stats.manifest(self.repo, digest, answer)
        except AssertionError as exc:
            seen = [line for line in self.proxy.logs().splitlines() if "/manifests/" in line]
            raise AssertionError("\n".join([str(exc), "the proxy saw:", *seen[-12:]])) from None

    digests: dict[str, str]


def expectation(stats: Stats, proxy: PullstatsProxy, images: Images, repo: str, tag: str) -> Expect:
    expect = Expect(stats, proxy, repo, tag)
    expect.digests = {
        "a": images.a.manifest_digest,
        "b": images.b.manifest_digest,
        "c": images.c.manifest_digest,
        "index": images.multi.index_digest,
        "host": images.multi.manifest_digests[HOST_PLATFORM],
        "other": images.multi.manifest_digests[OTHER_PLATFORM],
    }
    return expect


def push(image: ImageInfo | MultiArchInfo, proxy: PullstatsProxy, repo: str, tag: str) -> None:
    skopeo_push(
        image.oci_ref, proxy.address, repo, tag, all_images=isinstance(image, MultiArchInfo)
    )


def test_docker(proxy: PullstatsProxy, images: Images, stats: Stats) -> None:
    with Dockerd(insecure_registries=(proxy.address,)) as dockerd:
        docker = dockerd.docker
        ref = f"{proxy.address}/e2e/docker"
        push(images.a, proxy, "e2e/docker", "v1")
        push(images.c, proxy, "e2e/docker", "c")
        push(images.multi, proxy, "e2e/docker-multi", "m1")
        expect = expectation(stats, proxy, images, "e2e/docker", "v1")
        a, b = images.a.manifest_digest, images.b.manifest_digest

        docker("pull", f"{ref}:v1")  # HEAD v1, GET @a
        expect(1, a, a=1)
        docker("pull", f"{ref}:v1")  # up to date: HEAD v1 only
        expect(1, a, a=1)
        dockerd.remove_all_images()
        docker("pull", f"{ref}:v1")  # after rmi: HEAD v1, GET @a
        expect(2, a, a=2)
        docker("pull", f"{ref}@{images.c.manifest_digest}")  # by digest: GET @c
        expect(2, a, a=2, c=1)

        multi = expectation(stats, proxy, images, "e2e/docker-multi", "m1")
        index = images.multi.index_digest
        docker("pull", f"{proxy.address}/e2e/docker-multi:m1")  # HEAD m1, GET @index, GET @host
        multi(1, index, index=1, host=1, other=0)
        # the index is cached: HEAD m1 (the index digest), then GET @other only
        docker("pull", "--platform", OTHER_PLATFORM, f"{proxy.address}/e2e/docker-multi:m1")
        multi(2, index, index=1, host=1, other=1)

        push(images.b, proxy, "e2e/docker", "v1")  # the tag moves to image B
        docker("pull", f"{ref}:v1")  # HEAD v1 (now b), GET @b
        expect(3, b, a=2, b=1, c=1)


def test_podman(proxy: PullstatsProxy, images: Images, stats: Stats, tmp_path: Path) -> None:
    with Podman() as podman_client:

        def podman(*args: str) -> None:
            podman_client.podman(*args[:1], "--tls-verify=false", *args[1:])

        ref = f"{proxy.address}/e2e/podman"
        push(images.a, proxy, "e2e/podman", "v1")
        push(images.c, proxy, "e2e/podman", "c")
        push(images.multi, proxy, "e2e/podman-multi", "m1")
        expect = expectation(stats, proxy, images, "e2e/podman", "v1")
        a, b = images.a.manifest_digest, images.b.manifest_digest

        podman("pull", f"{ref}:v1")  # GET v1
        expect(1, a, a=1)
        podman("pull", f"{ref}:v1")  # podman GETs the manifest again
        expect(2, a, a=2)
        podman_client.podman("rmi", "--all", "--force")
        podman("pull", f"{ref}:v1")
        expect(3, a, a=3)
        podman("pull", f"{ref}@{images.c.manifest_digest}")  # GET @c
        expect(3, a, a=3, c=1)

        multi = expectation(stats, proxy, images, "e2e/podman-multi", "m1")
        index = images.multi.index_digest
        podman("pull", f"{proxy.address}/e2e/podman-multi:m1")  # GET m1 (index), GET @host
        multi(1, index, index=1, host=1, other=0)
        podman("pull", "--platform", OTHER_PLATFORM, f"{proxy.address}/e2e/podman-multi:m1")
        multi(2, index, index=2, host=1, other=1)

        push(images.b, proxy, "e2e/podman", "v1")
        podman("pull", f"{ref}:v1")
        expect(4, b, a=3, b=1, c=1)
