"""One manifest exchange, watched on its way out, and the pull it turns out to be.

Framework-neutral: the WSGI and ASGI adapters feed it the response status and
headers, the body chunks and the moment the body was sent to the end; it
tells the recorder what to count (docs/design.md, "What counts as a pull").
Its own failures never reach the pull: every step is guarded, and a step that
fails abandons the exchange (logged, nothing counted).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from pullstats_middleware.config import ExcludeRule
from pullstats_middleware.identity import Client, excluded
from pullstats_middleware.matchers import ManifestRequest, is_digest
from pullstats_middleware.recorder import Recorder
from pullstats_middleware.store.base import DigestFetch, Resolution

log = logging.getLogger("pullstats_middleware")

GET = "GET"
_DIGEST_HEADERS = ("docker-content-digest", b"docker-content-digest")


class ManifestExchange:
    """Watches one GET or HEAD of a manifest. Records only after `finish()`."""

    __slots__ = (
        "_client",
        "_digest",
        "_exclude",
        "_hasher",
        "_max_bytes",
        "_method",
        "_recorder",
        "_request",
        "_size",
        "_status",
    )

    def __init__(
        self,
        recorder: Recorder,
        request: ManifestRequest,
        method: str,
        client: Callable[[], Client],
        max_bytes: int,
        exclude: tuple[ExcludeRule, ...] = (),
    ) -> None:
        self._recorder = recorder
        self._request = request
        self._method = method
        self._client = client  # called only when attribution or exclusion needs it
        self._exclude = exclude
        self._max_bytes = max_bytes
        self._status = 0
        self._digest: str | None = None
        self._hasher: hashlib._Hash | None = None
        self._size = 0

    @property
    def hashing(self) -> bool:
        """True while the body must be hashed to learn the digest."""
        return self._hasher is not None

    def abandon(self, why: str | None = None) -> None:
        """Count nothing for this exchange; `why`: log the exception being handled."""
        if why is not None:
            log.exception("pull statistics: failed to %s; not counted", why)
        self._status = 0
        self._hasher = None

    def start(self, status: int | str, headers: Iterable[tuple[Any, Any]]) -> None:
        """The response began: an ASGI status and byte headers, or WSGI's `"200 OK"` and str."""
        try:
            self._status = status if isinstance(status, int) else int(status[:3])
            if self._status != 200:
                return
            request = self._request
            if request.by_digest:
                self._digest = request.reference
                return
            digest = None
            for name, value in headers:
                # The length test first: most headers are skipped without lower().
                if len(name) == 21 and name.lower() in _DIGEST_HEADERS:
                    digest = (
                        value.decode("latin-1") if isinstance(value, bytes) else value
                    ).strip()
            if digest is not None and is_digest(digest):
                self._digest = digest
            elif self._method == GET:
                if digest is not None:
                    log.debug("ignoring malformed Docker-Content-Digest %r", digest)
                self._hasher = hashlib.sha256()
        except Exception:
            self.abandon("read a manifest response")

    def body(self, chunk: bytes) -> None:
        hasher = self._hasher
        if hasher is None:
            return
        try:
            self._size += len(chunk)
            if self._size > self._max_bytes:
                log.debug(
                    "manifest %s:%s is larger than %d bytes and has no digest header; not counted",
                    self._request.repository,
                    self._request.reference,
                    self._max_bytes,
                )
                self.abandon()
                return
            hasher.update(chunk)
        except Exception:
            self.abandon("hash a manifest body")

    def finish(self) -> None:
        """The body went out to the end: record what this exchange was. Counts once."""
        if self._status != 200:
            return
        self._status = 0  # a second call counts nothing
        try:
            if self._hasher is not None:
                self._digest = "sha256:" + self._hasher.hexdigest()
            digest, request = self._digest, self._request
            if digest is None:
                return
            if self._exclude and excluded(self._exclude, self._client()):
                if self._method == GET:  # a pull, but not a user's: no count, no date
                    self._recorder.add_excluded_pull()
                return
            if self._method != GET:  # a HEAD by tag: a resolution, maybe half of a tag pull
                if not request.by_digest:
                    self._recorder.add_attribution_event(
                        Resolution(
                            self._client().identity,
                            request.repository,
                            request.reference,
                            digest,
                            time.time(),
                        )
                    )
            elif request.by_digest:
                # A plain digest pull, unless this client just resolved a tag
                # to this digest with a HEAD (containerd): the store pairs them.
                event = DigestFetch(
                    self._client().identity, request.repository, digest, time.time()
                )
                self._recorder.add_attribution_event(event)
            else:
                self._recorder.add_tag_pull(request.repository, request.reference, digest)
        except Exception:
            self.abandon("record a pull")
