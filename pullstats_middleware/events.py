"""One manifest exchange, watched on its way out, and the pull it turns out to be.

Framework-neutral: the WSGI and ASGI adapters feed it the response status,
the `Docker-Content-Digest` header, the body chunks and the moment the body
was sent to the end; it tells the recorder what to count (DESIGN §2).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable

from pullstats_middleware.matchers import ManifestRequest, is_digest
from pullstats_middleware.recorder import Recorder
from pullstats_middleware.store.base import DigestFetch, Resolution

log = logging.getLogger("pullstats_middleware")

GET = "GET"

# What the statistics routes' authorization probe accepts, so the registry
# answers with the digest a client would pull (an index stays an index).
MANIFEST_ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
    ]
)


class ManifestExchange:
    """Watches one GET or HEAD of a manifest. Records only after `finish()`."""

    __slots__ = (
        "_client",
        "_hasher",
        "_max_bytes",
        "_recorder",
        "_size",
        "digest",
        "method",
        "request",
        "status",
    )

    def __init__(
        self,
        recorder: Recorder,
        request: ManifestRequest,
        method: str,
        client: Callable[[], str],
        max_bytes: int,
    ) -> None:
        self._recorder = recorder
        self.request = request
        self.method = method
        self._client = client  # called only when attribution needs it
        self._max_bytes = max_bytes
        self.status = 0
        self.digest: str | None = None
        self._hasher: hashlib._Hash | None = None
        self._size = 0

    @property
    def hashing(self) -> bool:
        """True while the body must be hashed to learn the digest."""
        return self._hasher is not None

    def start(self, status: int, digest_header: str | None) -> None:
        self.status = status
        if status != 200:
            return
        request = self.request
        if request.by_digest:
            self.digest = request.reference
        elif digest_header is not None and is_digest(digest_header.strip()):
            self.digest = digest_header.strip()
        elif self.method == GET:
            if digest_header is not None:
                log.debug("ignoring malformed Docker-Content-Digest %r", digest_header)
            self._hasher = hashlib.sha256()

    def body(self, chunk: bytes) -> None:
        hasher = self._hasher
        if hasher is None:
            return
        self._size += len(chunk)
        if self._size > self._max_bytes:
            log.debug(
                "manifest %s:%s is larger than %d bytes and has no digest header; not counted",
                self.request.repository,
                self.request.reference,
                self._max_bytes,
            )
            self._hasher = None
            self.status = 0
            return
        hasher.update(chunk)

    def finish(self) -> None:
        """The body went out to the end: record what this exchange was."""
        if self.status != 200:
            return
        if self._hasher is not None:
            self.digest = "sha256:" + self._hasher.hexdigest()
        digest = self.digest
        if digest is None:
            return
        request = self.request
        if self.method == GET:
            if request.by_digest:
                # A plain digest pull, unless this client just resolved a tag
                # to this digest with a HEAD (containerd): the store pairs them.
                self._recorder.add_event(
                    DigestFetch(self._client(), request.repository, digest, time.time())
                )
            else:
                self._recorder.add_tag_pull(request.repository, request.reference, digest)
        elif not request.by_digest:
            self._recorder.add_event(
                Resolution(
                    self._client(), request.repository, request.reference, digest, time.time()
                )
            )
