"""One manifest exchange, watched on its way out, and the pull it turns out to be.

Framework-neutral: the WSGI and ASGI adapters feed it the response status and
headers, the body chunks and the moment the body was sent to the end; it
tells the recorder what to count (docs/design.md, "What counts as a pull").
Its own failures never reach the pull: every step is guarded, and a step that
fails abandons the exchange (logged, nothing counted).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable
from typing import Any

from pullstats_middleware.config import ExcludeRule
from pullstats_middleware.identity import Client, excluded
from pullstats_middleware.matchers import ManifestRequest, is_digest
from pullstats_middleware.recorder import Recorder

log = logging.getLogger("pullstats_middleware")

GET = "GET"
PUT = "PUT"
_DIGEST_NAME, _TYPE_NAME = b"docker-content-digest", b"content-type"  # as ASGI sends them
_DIGEST_HEADERS = ("docker-content-digest", _DIGEST_NAME)
_TYPE_HEADERS = ("content-type", _TYPE_NAME)
INDEX_TYPES = frozenset(
    (
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    )
)
MAX_CHILDREN = 256  # far more platforms and attestations than any index carries


class Watch:
    """What every exchange of one adapter shares, built once: the recorder, the way to
    read the client's identity from a request, and the config's limits."""

    __slots__ = ("exclude", "identity", "max_bytes", "recorder")

    def __init__(
        self,
        recorder: Recorder,
        identity: Callable[[Any], str],
        max_bytes: int,
        exclude: tuple[ExcludeRule, ...] = (),
    ) -> None:
        self.recorder = recorder
        # `identity(context)`: the client's identity (puller.identity), read from the
        # request (ASGI scope, WSGI environ) only when it is recorded.
        self.identity = identity
        self.max_bytes = max_bytes
        self.exclude = exclude


class ManifestExchange:
    """Watches one GET or HEAD of a manifest, or a PUT by tag. Records only after `finish()`.

    Every manifest pull builds one and makes three calls on it, on the server's
    request path: it keeps what it learns in a few slots, decided at `start()`.
    """

    __slots__ = (
        "_context",
        "_digest",
        "_hasher",
        "_index_body",
        "_method",
        "_request",
        "_size",
        "_watch",
        "wants_body",
    )

    def __init__(self, watch: Watch, request: ManifestRequest, method: str, context: Any) -> None:
        self._watch = watch
        self._request = request
        self._method = method
        self._context = context  # the request as the server gave it: read for the identity
        # What start() learns. A pull to record has a digest, or a hasher that will
        # give it from the body; neither: nothing to record (yet, or any more).
        self._digest: str | None = None
        self._hasher: hashlib._Hash | None = None
        self._index_body: bytearray | None = None  # an index's body, to learn its children
        self._size = 0
        # True while the body must be seen: hashed to learn the digest, or an index read
        # (`_hasher` or `_index_body` is set). An attribute, not a property: the adapters
        # read it for every chunk of every manifest, where a property call costs more.
        self.wants_body = False

    def abandon(self, why: str | None = None) -> None:
        """Count nothing for this exchange; `why`: log the exception being handled."""
        if why is not None:
            log.exception("pull statistics: failed to %s; not counted", why)
        self._digest = self._hasher = self._index_body = None
        self.wants_body = False

    def start(self, status: int | str, headers: Iterable[tuple[Any, Any]]) -> None:
        """The response began: an ASGI status and byte headers, or WSGI's `"200 OK"` and str."""
        try:
            code = status if isinstance(status, int) else int(status[:3])
            # 200 to a GET or HEAD; 201 to a push (a PUT by tag: the adapter watches
            # no PUT or HEAD by digest).
            get = self._method == GET
            if code != (201 if self._method == PUT else 200):
                return
            digest = media_type = None
            for name, value in headers:
                # Most headers are skipped on their length alone. ASGI names come
                # lower-case (bytes), WSGI names in any case (str).
                size = len(name)
                if size == 21:
                    if name == _DIGEST_NAME or name.lower() in _DIGEST_HEADERS:
                        digest = value
                elif size == 12 and (name == _TYPE_NAME or name.lower() in _TYPE_HEADERS):
                    media_type = value
            if get and media_type is not None:
                index = _index_types.get(media_type)
                if index is None:
                    index = _read_index_type(media_type)
                if index:
                    self._index_body = bytearray()
                    self.wants_body = True
            request = self._request
            if request.by_digest:
                self._digest = request.reference
            elif digest is not None and (checked := _digests.get(digest) or _read_digest(digest)):
                self._digest = checked
            elif get:
                if digest is not None:
                    log.debug("ignoring malformed Docker-Content-Digest %r", digest)
                self._hasher = hashlib.sha256()
                self.wants_body = True
        except Exception:
            self.abandon("read a manifest response")

    def body(self, chunk: bytes) -> None:
        try:
            self._size += len(chunk)
            if self._size > self._watch.max_bytes:
                self._index_body = None  # an index that large lists nothing we keep
                self.wants_body = self._hasher is not None
                if self._hasher is not None:
                    log.debug(
                        "manifest %s:%s is larger than %d bytes, without a digest header; "
                        "not counted",
                        self._request.repository,
                        self._request.reference,
                        self._watch.max_bytes,
                    )
                    self.abandon()
                return
            if self._hasher is not None:
                self._hasher.update(chunk)
            if self._index_body is not None:
                self._index_body += chunk
        except Exception:
            self.abandon("read a manifest body")

    def finish(self) -> None:
        """The body went out to the end: record what this exchange was. Counts once."""
        digest, hasher = self._digest, self._hasher
        self._digest = self._hasher = None  # a second call counts nothing
        try:
            if hasher is not None:
                digest = "sha256:" + hasher.hexdigest()
            if digest is None:
                return
            watch, request = self._watch, self._request
            recorder = watch.recorder
            if watch.exclude and excluded(watch.exclude, Client.of(watch.identity(self._context))):
                if self._method == GET:  # a pull, but not a user's: no count, no date
                    recorder.add_excluded_pull()
                return
            if self._method == GET:
                client = watch.identity(self._context)  # a puller, for unique pullers per day
                if request.by_digest:
                    # A plain digest pull, unless this client just resolved a tag
                    # to this digest with a HEAD (containerd): the store pairs them.
                    recorder.add_digest_fetch(client, request.repository, digest)
                else:
                    recorder.add_tag_pull(request.repository, request.reference, digest, client)
                if self._index_body is not None:
                    children = _children(self._index_body)
                    if children:
                        recorder.add_index(request.repository, digest, children)
            elif request.by_digest:
                return  # a HEAD or PUT by digest names no tag (the adapters pass them by)
            elif self._method == PUT:
                recorder.add_push(request.repository, request.reference, digest)
            else:  # a HEAD by tag: a resolution, maybe half of a tag pull
                client = watch.identity(self._context)
                recorder.add_resolution(client, request.repository, request.reference, digest)
        except Exception:
            self.abandon("record a pull")


def _text(value: str | bytes) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value


# A registry answers with the same few digests and media types again and again:
# reading one from its header (decode, strip, a regex) costs about a microsecond, a
# dict hit a few dozen nanoseconds. As in the matcher's cache, a full cache is
# cleared, and only short values are kept: together they hold at most ~2 MB.
_CACHE_SIZE = 4096
_CACHED_LENGTH = 256
_digests: dict[str | bytes, str] = {}  # Docker-Content-Digest value -> a valid digest
_index_types: dict[str | bytes, bool] = {}  # Content-Type value -> names an image index


def _read_digest(value: str | bytes) -> str | None:
    """The digest a `Docker-Content-Digest` value names; None when it names none."""
    digest = _text(value).strip()
    if not is_digest(digest):
        return None
    _remember(_digests, value, digest)
    return digest


def _read_index_type(value: str | bytes) -> bool:
    """True when a `Content-Type` value names an image index (a manifest list)."""
    index = _text(value).partition(";")[0].strip().lower() in INDEX_TYPES
    _remember(_index_types, value, index)
    return index


def _remember(cache: dict[str | bytes, Any], value: str | bytes, meaning: Any) -> None:
    if len(value) <= _CACHED_LENGTH:
        if len(cache) >= _CACHE_SIZE:
            cache.clear()  # safe under concurrent readers, unlike evicting one
        cache[value] = meaning


def _children(body: bytes | bytearray) -> tuple[str, ...]:
    """The digests an image index lists; () for a body that is not one."""
    try:
        listed = json.loads(body).get("manifests")
        digests = [entry.get("digest") for entry in listed[:MAX_CHILDREN]]
    except (ValueError, AttributeError, TypeError):
        log.debug("an image index body that is not JSON with a manifests list; ignored")
        return ()
    return tuple(d for d in digests if isinstance(d, str) and is_digest(d))
