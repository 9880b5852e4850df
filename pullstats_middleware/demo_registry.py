"""A small in-memory OCI registry: what the examples, the tests and `pullstats demo` wrap.

Read side of the distribution API only (`/v2/`, manifests, blobs, tags,
catalog), enough for real clients to pull; images are seeded from Python.
Repositories may require their own basic-auth credentials, so the statistics
routes' authorization can be shown to follow the registry's decisions.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pullstats_middleware.matchers import OCIMatcher

if TYPE_CHECKING:
    from starlette.types import ASGIApp

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"

Answer = tuple[int, list[tuple[str, str]], bytes]


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Repository:
    manifests: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # digest -> type, body
    tags: dict[str, str] = field(default_factory=dict)  # tag -> digest
    credentials: tuple[str, str] | None = None


class MemoryRegistry:
    def __init__(self) -> None:
        self.repositories: dict[str, Repository] = {}
        self.blobs: dict[str, bytes] = {}
        self._matcher = OCIMatcher()

    # -- seeding ---------------------------------------------------------

    def protect(self, repository: str, user: str, password: str) -> None:
        """Require these basic-auth credentials for every request to `repository`."""
        self.repositories.setdefault(repository, Repository()).credentials = (user, password)

    def add_blob(self, data: bytes) -> str:
        digest = sha256(data)
        self.blobs[digest] = data
        return digest

    def add_manifest(
        self, repository: str, body: bytes, media_type: str, tag: str | None = None
    ) -> str:
        repo = self.repositories.setdefault(repository, Repository())
        digest = sha256(body)
        repo.manifests[digest] = (media_type, body)
        if tag is not None:
            repo.tags[tag] = digest
        return digest

    def push_image(
        self,
        repository: str,
        tag: str | None,
        content: bytes = b"hello",
        platform: str = "linux/amd64",
    ) -> str:
        """A one-layer image; returns its manifest digest."""
        os_, _, arch = platform.partition("/")
        config = json.dumps(
            {"architecture": arch, "os": os_, "rootfs": {"type": "layers"}}
        ).encode()
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": _descriptor(OCI_CONFIG, config, self.add_blob(config)),
            "layers": [_descriptor(OCI_LAYER, content, self.add_blob(content))],
        }
        return self.add_manifest(repository, _canonical(manifest), OCI_MANIFEST, tag)

    def push_index(self, repository: str, tag: str, platforms: list[str]) -> tuple[str, list[str]]:
        """A multi-arch index, one image per platform: (index digest, platform digests)."""
        children = [self.push_image(repository, None, p.encode(), p) for p in platforms]
        index = {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    **_descriptor(OCI_MANIFEST, self.repositories[repository].manifests[d][1], d),
                    "platform": {"os": p.partition("/")[0], "architecture": p.partition("/")[2]},
                }
                for p, d in zip(platforms, children, strict=True)
            ],
        }
        return self.add_manifest(repository, _canonical(index), OCI_INDEX, tag), children

    # -- serving -----------------------------------------------------------

    def handle(self, method: str, path: str, headers: Mapping[str, str]) -> Answer:
        """Answer one request; `headers` with lower-case names."""
        if method not in ("GET", "HEAD"):
            return _error(405, "UNSUPPORTED", "this registry is read-only")
        if path in ("/v2/", "/v2"):
            return 200, [("Content-Type", "application/json")], b"{}"
        if path == "/v2/_catalog":
            return _json({"repositories": sorted(self.repositories)})
        manifest = self._matcher.match_manifest(path)
        if manifest is not None:
            repo = self.repositories.get(manifest.repository)
            if repo is None:
                return _error(404, "NAME_UNKNOWN", "repository name not known to registry")
            denied = _authenticate(repo, headers)
            if denied:
                return denied
            digest = manifest.reference if manifest.by_digest else repo.tags.get(manifest.reference)
            if digest is None or digest not in repo.manifests:
                return _error(404, "MANIFEST_UNKNOWN", "manifest unknown")
            media_type, body = repo.manifests[digest]
            return 200, _content(media_type, body, digest), body
        name, sep, tail = path[len("/v2/") :].rpartition("/blobs/")
        if sep and path.startswith("/v2/") and name in self.repositories:
            denied = _authenticate(self.repositories[name], headers)
            if denied:
                return denied
            if tail not in self.blobs:
                return _error(404, "BLOB_UNKNOWN", "blob unknown to registry")
            return (
                200,
                _content("application/octet-stream", self.blobs[tail], tail),
                self.blobs[tail],
            )
        name, sep, tail = path[len("/v2/") :].rpartition("/tags/list")
        if sep and not tail and name in self.repositories:
            denied = _authenticate(self.repositories[name], headers)
            if denied:
                return denied
            return _json({"name": name, "tags": sorted(self.repositories[name].tags)})
        return _error(404, "NOT_FOUND", "no such route")


def _authenticate(repo: Repository, headers: Mapping[str, str]) -> Answer | None:
    if repo.credentials is None:
        return None
    given = headers.get("authorization", "")
    if given.startswith("Basic "):
        try:
            user, _, password = base64.b64decode(given[6:]).decode().partition(":")
        except ValueError:
            user = password = ""
        if (user, password) == repo.credentials:
            return None
        return _error(403, "DENIED", "requested access to the resource is denied")
    status, headers_, body = _error(401, "UNAUTHORIZED", "authentication required")
    return status, [*headers_, ("WWW-Authenticate", 'Basic realm="registry"')], body


def _descriptor(media_type: str, data: bytes, digest: str) -> dict[str, object]:
    return {"mediaType": media_type, "digest": digest, "size": len(data)}


def _canonical(document: object) -> bytes:
    return json.dumps(document, separators=(",", ":"), sort_keys=True).encode()


def _content(media_type: str, body: bytes, digest: str) -> list[tuple[str, str]]:
    return [
        ("Content-Type", media_type),
        ("Content-Length", str(len(body))),
        ("Docker-Content-Digest", digest),
    ]


def _json(payload: object) -> Answer:
    body = json.dumps(payload).encode()
    return 200, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))], body


def _error(status: int, code: str, message: str) -> Answer:
    body = json.dumps({"errors": [{"code": code, "message": message}]}).encode()
    return status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))], body


def starlette_app(registry: MemoryRegistry) -> ASGIApp:
    """The registry as a Starlette app (one catch-all route)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def serve(request: Request) -> Response:
        status, headers, body = registry.handle(
            request.method, request.url.path, {k.lower(): v for k, v in request.headers.items()}
        )
        response = Response(body if request.method != "HEAD" else b"", status)
        for name, value in headers:
            response.headers[name] = value
        return response

    return Starlette(
        routes=[
            Route("/{path:path}", serve, methods=["GET", "HEAD", "PUT", "POST", "PATCH", "DELETE"])
        ]
    )
