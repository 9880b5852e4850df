"""docs/design.md, "Names": the OCI name grammar and the manifest-path matcher."""

from __future__ import annotations

import pytest

from pullstats_middleware.matchers import (
    ManifestRequest,
    OCIMatcher,
    is_digest,
    validate_repository,
    validate_tag,
)

SHA256 = "sha256:" + "a" * 64
SHA512 = "sha512:" + "b" * 128

VALID_REPOSITORIES = [
    "a",
    "library/hello",
    "my.org/my_repo",
    "a__b",
    "a---b",
    "a/b/c/d",
    "x" * 255,
    "library/manifests/tools",
]
INVALID_REPOSITORIES = [
    "",
    "Library",
    "a/",
    "/a",
    "a//b",
    "a___b",
    "a.-b",
    "-a",
    "a_",
    "a b",
    "x" * 256,
]


@pytest.mark.parametrize("name", VALID_REPOSITORIES)
def test_valid_repositories(name: str) -> None:
    assert validate_repository(name) is None


@pytest.mark.parametrize("name", INVALID_REPOSITORIES)
def test_invalid_repositories(name: str) -> None:
    assert validate_repository(name) is not None


@pytest.mark.parametrize("tag", ["v1", "latest", "_x", "1.2.3-rc_1", "A" * 128])
def test_valid_tags(tag: str) -> None:
    assert validate_tag(tag) is None


@pytest.mark.parametrize("tag", ["", ".v1", "-v1", "v:1", "v/1", "A" * 129, "v 1"])
def test_invalid_tags(tag: str) -> None:
    assert validate_tag(tag) is not None


@pytest.mark.parametrize(
    "digest",
    [
        SHA256,
        SHA512,
        "blake3:" + "c" * 64,
    ],
)
def test_valid_digests(digest: str) -> None:
    assert is_digest(digest)


@pytest.mark.parametrize(
    "digest",
    [
        "sha256:" + "a" * 63,
        "sha256:" + "a" * 65,
        "sha256:" + "A" * 64,
        "sha512:" + "b" * 64,
        "SHA256:" + "a" * 64,
        "sha256" + "a" * 64,
        ":abc",
        "sha256:",
        "sha256:abc def",
        # the grammar allows these; no registry serves them, and each would be a
        # Redis key of whatever length the client chose
        "sha384+b64:abc=",
        "multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8",
        "md5:0123456789abcdef0123456789abcdef",
        "foo:" + "A" * 10_000,
    ],
)
def test_invalid_digests(digest: str) -> None:
    assert not is_digest(digest)


@pytest.mark.parametrize(
    "path, expected",
    [
        ("/v2/library/hello/manifests/v1", ManifestRequest("library/hello", "v1", False)),
        (f"/v2/library/hello/manifests/{SHA256}", ManifestRequest("library/hello", SHA256, True)),
        ("/v2/a/manifests/b/manifests/v1", ManifestRequest("a/manifests/b", "v1", False)),
        ("/v2/manifests/manifests/latest", ManifestRequest("manifests", "latest", False)),
        ("/v2/library/hello/manifests/", None),
        ("/v2/library/hello/manifests/v1/extra", None),
        ("/v2/Library/hello/manifests/v1", None),
        ("/v2/library/hello/manifests/sha256:abc", None),
        ("/v2//manifests/v1", None),
        ("/v2/manifests/v1", None),
        ("/v1/library/hello/manifests/v1", None),
        ("/v2/library/hello/blobs/" + SHA256, None),
        ("/v2/library/hello/tags/list", None),
    ],
)
def test_manifest_paths(path: str, expected: ManifestRequest | None) -> None:
    assert OCIMatcher().match_manifest(path) == expected


def test_configured_path_prefix() -> None:
    matcher = OCIMatcher("/registry/")
    assert matcher.match_manifest("/registry/v2/a/manifests/v1") == ManifestRequest(
        "a", "v1", False
    )
    assert matcher.match_manifest("/v2/a/manifests/v1") is None
    assert matcher.match_manifest("/other/v2/a/manifests/v1") is None


def test_only_valid_paths_are_cached_and_the_cache_is_bounded() -> None:
    """Hostile 64 KB paths must not pin memory: non-matches are never cached."""
    matcher = OCIMatcher(cache_size=4)
    for n in range(100):
        assert matcher.match_manifest(f"/v2/{'x' * 60_000}{n}/manifests/v1") is None
        assert matcher.match_manifest(f"/v2/a/manifests/md5:{n:032x}") is None
    assert len(matcher.known) == 0
    for n in range(10):
        assert matcher.match_manifest(f"/v2/a/manifests/v{n}") is not None
    assert 0 < len(matcher.known) <= 4
    assert matcher.match_manifest("/v2/a/manifests/v9") == ManifestRequest("a", "v9", False)
