"""Build deterministic OCI image layouts on disk (stdlib only).

The layouts produced here can be used as ``oci:DIR:TAG`` sources for skopeo and
pushed to a real registry.  Everything is deterministic (fixed mtimes, fixed
ownership, gzip without timestamp or file name), so digests are stable on a
given machine.  Compressed digests depend on the zlib build, so tests should
compare against the values returned here rather than hard-coding them.

Layout written into ``dest``::

    dest/oci-layout
    dest/index.json                 # one descriptor per tag (ref.name annotation)
    dest/blobs/sha256/<hex>         # content-addressed blobs

Several images can share one layout directory; each ``build_*`` call adds its
descriptor to ``index.json`` under its tag (replacing a previous one with the
same tag).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OCI_LAYOUT_VERSION = "1.0.0"

MEDIA_TYPE_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_TYPE_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_TYPE_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_TYPE_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA_TYPE_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"

ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"

#: Fixed timestamp used for tar entries and the image config (2020-01-01T00:00:00Z).
FIXED_MTIME = 1577836800
FIXED_CREATED = "2020-01-01T00:00:00Z"

_CHUNK = 1 << 20  # 1 MiB


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor (the subset we need)."""

    media_type: str
    digest: str
    size: int
    platform: dict[str, str] | None = None
    annotations: dict[str, str] | None = None

    @property
    def hex(self) -> str:
        """The hex part of the digest (the blob's file name)."""
        return self.digest.split(":", 1)[1]

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.platform:
            d["platform"] = dict(self.platform)
        if self.annotations:
            d["annotations"] = dict(self.annotations)
        return d


@dataclass(frozen=True)
class ImageInfo:
    """One single-platform image stored in a layout."""

    layout: Path
    tag: str
    manifest: Descriptor
    config: Descriptor
    layers: tuple[Descriptor, ...]
    #: sha256 of each layer's uncompressed tar (``rootfs.diff_ids`` in the config).
    diff_ids: tuple[str, ...]
    platform: dict[str, str] = field(default_factory=dict)

    @property
    def manifest_digest(self) -> str:
        return self.manifest.digest

    @property
    def layer(self) -> Descriptor:
        """The first (for the images built here: only) layer."""
        return self.layers[0]

    @property
    def layer_digest(self) -> str:
        return self.layers[0].digest

    @property
    def layer_size(self) -> int:
        return self.layers[0].size

    @property
    def oci_ref(self) -> str:
        """``oci:DIR:TAG`` reference usable with skopeo."""
        return f"oci:{self.layout}:{self.tag}"

    def blob_path(self, digest: str) -> Path:
        return blob_path(self.layout, digest)


@dataclass(frozen=True)
class MultiArchInfo:
    """A multi-platform OCI image index and its per-platform images."""

    layout: Path
    tag: str
    index: Descriptor
    #: Per-platform images, keyed by ``"os/arch"`` (``linux/amd64``, ``linux/arm64``).
    images: dict[str, ImageInfo]

    @property
    def index_digest(self) -> str:
        return self.index.digest

    @property
    def manifest_digests(self) -> dict[str, str]:
        return {p: img.manifest.digest for p, img in self.images.items()}

    @property
    def oci_ref(self) -> str:
        return f"oci:{self.layout}:{self.tag}"


# --------------------------------------------------------------------------- #
# Low-level layout helpers
# --------------------------------------------------------------------------- #


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(obj: Any) -> bytes:
    """Deterministic JSON encoding used for manifests, configs and indexes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def blob_path(layout: Path | str, digest: str) -> Path:
    algo, hex_ = digest.split(":", 1)
    return Path(layout) / "blobs" / algo / hex_


def init_layout(dest: Path | str) -> Path:
    """Create ``oci-layout``, ``blobs/sha256`` and an empty ``index.json`` if missing."""
    dest = Path(dest)
    (dest / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    layout_file = dest / "oci-layout"
    if not layout_file.exists():
        layout_file.write_bytes(canonical_json({"imageLayoutVersion": OCI_LAYOUT_VERSION}))
    index_file = dest / "index.json"
    if not index_file.exists():
        index_file.write_bytes(
            canonical_json({"schemaVersion": 2, "mediaType": MEDIA_TYPE_INDEX, "manifests": []})
        )
    return dest


def write_blob(dest: Path | str, data: bytes, media_type: str) -> Descriptor:
    """Store ``data`` as a content-addressed blob and return its descriptor."""
    dest = init_layout(dest)
    digest = sha256_digest(data)
    path = blob_path(dest, digest)
    if not path.exists():
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return Descriptor(media_type=media_type, digest=digest, size=len(data))


def write_blob_stream(dest: Path | str, chunks: Iterator[bytes], media_type: str) -> Descriptor:
    """Store a blob produced chunk by chunk (constant memory) and return its descriptor."""
    dest = init_layout(dest)
    h = hashlib.sha256()
    size = 0
    tmp = Path(dest) / "blobs" / "sha256" / ".incoming.tmp"
    with open(tmp, "wb") as f:
        for chunk in chunks:
            h.update(chunk)
            size += len(chunk)
            f.write(chunk)
    digest = "sha256:" + h.hexdigest()
    os.replace(tmp, blob_path(dest, digest))
    return Descriptor(media_type=media_type, digest=digest, size=size)


def tag_in_index(dest: Path | str, desc: Descriptor, tag: str) -> None:
    """Add ``desc`` to the layout's ``index.json`` under ``tag`` (replacing that tag)."""
    dest = init_layout(dest)
    index_file = Path(dest) / "index.json"
    index = json.loads(index_file.read_text())
    manifests = [
        m
        for m in index.get("manifests", [])
        if m.get("annotations", {}).get(ANNOTATION_REF_NAME) != tag
    ]
    annotations = dict(desc.annotations or {})
    annotations[ANNOTATION_REF_NAME] = tag
    entry = Descriptor(desc.media_type, desc.digest, desc.size, desc.platform, annotations)
    manifests.append(entry.to_json())
    index["manifests"] = manifests
    index_file.write_bytes(canonical_json(index))


def _tar_header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = FIXED_MTIME
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def make_tar(files: dict[str, bytes]) -> bytes:
    """A deterministic uncompressed tar archive of regular files (sorted by name)."""
    buf = io.BytesIO()
    for name in sorted(files):
        data = files[name]
        buf.write(_tar_header(name, len(data)))
        buf.write(data)
        buf.write(b"\0" * (-len(data) % tarfile.BLOCKSIZE))
    buf.write(b"\0" * (2 * tarfile.BLOCKSIZE))  # end-of-archive marker
    return buf.getvalue()


def gzip_bytes(data: bytes) -> bytes:
    """Deterministic gzip (no file name, mtime 0)."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
        gz.write(data)
    return buf.getvalue()


def _image_config(arch: str, os_name: str, diff_ids: list[str], label: str) -> dict[str, Any]:
    return {
        "architecture": arch,
        "os": os_name,
        "created": FIXED_CREATED,
        "config": {
            "Cmd": ["/hello.txt"],
            "Labels": {"org.example.pullstats.test": label},
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": FIXED_CREATED, "created_by": "tests/e2e/oci_image.py"}],
    }


def _write_image(
    dest: Path,
    tag: str | None,
    layers: list[Descriptor],
    diff_ids: list[str],
    arch: str,
    os_name: str,
    label: str,
) -> ImageInfo:
    config = write_blob(
        dest, canonical_json(_image_config(arch, os_name, diff_ids, label)), MEDIA_TYPE_CONFIG
    )
    manifest_obj = {
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_MANIFEST,
        "config": config.to_json(),
        "layers": [layer.to_json() for layer in layers],
    }
    manifest = write_blob(dest, canonical_json(manifest_obj), MEDIA_TYPE_MANIFEST)
    platform = {"architecture": arch, "os": os_name}
    if tag is not None:
        tag_in_index(dest, manifest, tag)
    return ImageInfo(
        layout=dest,
        tag=tag or "",
        manifest=manifest,
        config=config,
        layers=tuple(layers),
        diff_ids=tuple(diff_ids),
        platform=platform,
    )


# --------------------------------------------------------------------------- #
# Public builders
# --------------------------------------------------------------------------- #


def build_tiny_image(
    dest: Path | str,
    tag: str = "latest",
    *,
    content: bytes = b"hello from pullstats e2e\n",
    arch: str = "amd64",
    os_name: str = "linux",
) -> ImageInfo:
    """A single-platform image: one gzip'd layer holding ``hello.txt``.

    Different ``content`` gives different layer/config/manifest digests.
    """
    dest = init_layout(dest)
    tar = make_tar({"hello.txt": content})
    layer = write_blob(dest, gzip_bytes(tar), MEDIA_TYPE_LAYER_GZIP)
    return _write_image(
        dest, tag, [layer], [sha256_digest(tar)], arch, os_name, label=f"tiny-{arch}"
    )


def build_multiarch_image(
    dest: Path | str,
    tag: str = "multi",
    *,
    platforms: tuple[str, ...] = ("linux/amd64", "linux/arm64"),
) -> MultiArchInfo:
    """An OCI image index referencing one tiny image per platform.

    Only the index is tagged in ``index.json``; the platform manifests are
    reachable through it.  Each platform has its own layer, config and manifest.
    """
    dest = init_layout(dest)
    images: dict[str, ImageInfo] = {}
    entries: list[dict[str, Any]] = []
    for plat in platforms:
        os_name, arch = plat.split("/", 1)
        tar = make_tar({"hello.txt": f"hello from {plat}\n".encode()})
        layer = write_blob(dest, gzip_bytes(tar), MEDIA_TYPE_LAYER_GZIP)
        img = _write_image(
            dest, None, [layer], [sha256_digest(tar)], arch, os_name, label=f"multi-{arch}"
        )
        images[plat] = img
        entries.append(
            Descriptor(
                MEDIA_TYPE_MANIFEST,
                img.manifest.digest,
                img.manifest.size,
                platform={"architecture": arch, "os": os_name},
            ).to_json()
        )
    index_obj = {"schemaVersion": 2, "mediaType": MEDIA_TYPE_INDEX, "manifests": entries}
    index = write_blob(dest, canonical_json(index_obj), MEDIA_TYPE_INDEX)
    tag_in_index(dest, index, tag)
    return MultiArchInfo(layout=dest, tag=tag, index=index, images=images)


def deterministic_bytes(size: int, seed: bytes = b"pullstats") -> Iterator[bytes]:
    """Yield ``size`` incompressible but deterministic bytes in 1 MiB chunks."""
    counter = 0
    remaining = size
    while remaining > 0:
        n = min(_CHUNK, remaining)
        yield hashlib.shake_256(seed + counter.to_bytes(8, "big")).digest(n)
        counter += 1
        remaining -= n


def _large_tar_stream(size: int, seed: bytes) -> Iterator[bytes]:
    # header (512) + data (size - 1536, block aligned) + end marker (1024) == size
    data_size = size - 3 * tarfile.BLOCKSIZE
    yield _tar_header("big.bin", data_size)
    yield from deterministic_bytes(data_size, seed)
    yield b"\0" * (2 * tarfile.BLOCKSIZE)


def build_large_image(
    dest: Path | str,
    size: int = 200_000_000,
    tag: str = "big",
    *,
    seed: bytes = b"pullstats",
) -> ImageInfo:
    """An image whose single layer is an uncompressed tar of exactly ``size`` bytes.

    The layer (``application/vnd.oci.image.layer.v1.tar``) holds one file of
    deterministic pseudo-random bytes; it is written streaming, 1 MiB at a time.
    ``size`` must be a multiple of 512 and at least 2048.
    """
    if size % tarfile.BLOCKSIZE or size < 4 * tarfile.BLOCKSIZE:
        raise ValueError("size must be a multiple of 512 and >= 2048")
    dest = init_layout(dest)
    layer = write_blob_stream(dest, _large_tar_stream(size, seed), MEDIA_TYPE_LAYER)
    assert layer.size == size
    return _write_image(dest, tag, [layer], [layer.digest], "amd64", "linux", label="large")


def read_json_blob(layout: Path | str, digest: str) -> Any:
    """Parse a JSON blob (manifest, index, config) from a layout."""
    return json.loads(blob_path(layout, digest).read_bytes())


def index_entries(layout: Path | str) -> dict[str, Descriptor]:
    """The tagged descriptors in a layout's ``index.json``, keyed by tag."""
    index = json.loads((Path(layout) / "index.json").read_text())
    out: dict[str, Descriptor] = {}
    for m in index.get("manifests", []):
        tag = m.get("annotations", {}).get(ANNOTATION_REF_NAME, "")
        out[tag] = Descriptor(m["mediaType"], m["digest"], m["size"], m.get("platform"))
    return out
