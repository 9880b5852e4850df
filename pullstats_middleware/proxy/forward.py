"""The reverse proxy behind `pullstats proxy`: pull statistics for a registry in any language.

    app = build_proxy("http://registry:5000", PullStatsConfig(enabled=True))

Every request goes to the upstream unchanged except for what a well-behaved
HTTP intermediary must change (hop-by-hop headers, Host, X-Forwarded-*, a
Location naming the upstream). Bodies stream in both directions in constant
memory, so multi-GB blob uploads and downloads pass as they would directly.

The upstream client is aiohttp's: measured against httpx2 (with its pool as
shipped before and sized to the load) it costs about a quarter of the CPU per
manifest request (benchmarks/proxy_clients.py).
"""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING
from urllib.parse import quote_from_bytes, urlsplit

import aiohttp
import anyio
import yarl

from pullstats_middleware.proxy.headers import (
    Public,
    check_upstream,
    origin,
    request_headers,
    response_headers,
)

if TYPE_CHECKING:
    from starlette.types import Receive, Scope, Send

    from pullstats_middleware.config import IPNetwork

log = logging.getLogger("pullstats_middleware")

_NO_CONTENT = frozenset((204, 304))
# Answers up to this size (manifests, errors, tag lists) are read whole and sent
# in one message: no watcher task, and an upstream failure is still a clean 502.
_WHOLE_BYTES = 256 * 1024
# What the upstream socket may buffer per response before reading pauses; with
# 1 MiB a blob crosses Python in fewer, larger pieces (benchmarks/bench_proxy.py).
_READ_BYTES = 1 << 20
_URL_SAFE = bytes(range(0x21, 0x7F)).decode().replace("#", "")
# aiohttp adds these when absent; a proxy sends only what its client sent.
_NOT_ADDED = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")


class RegistryProxy:
    """A plain ASGI app that forwards every request to one upstream registry."""

    def __init__(
        self,
        upstream: str,
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        session: aiohttp.ClientSession | None = None,
        trusted_proxies: Sequence[IPNetwork] = (),
    ) -> None:
        if not connect_timeout > 0 or not read_timeout > 0:
            raise ValueError("connect_timeout and read_timeout must be positive numbers of seconds")
        self.upstream = check_upstream(upstream)
        # IDNA-encoded, with the port unless it is the scheme's default.
        self._host = (yarl.URL(self.upstream).host_port_subcomponent or "").encode()
        self._origin = origin(urlsplit(self.upstream))
        # Connecting is short; waiting for a pool slot or for the upstream's bytes gets the
        # read timeout. An upload is paced by its client: the read clock starts after it.
        self._timeout = aiohttp.ClientTimeout(
            total=None,
            connect=max(connect_timeout, read_timeout),
            sock_connect=connect_timeout,
            sock_read=read_timeout,
        )
        self._session = session
        self._owns_session = session is None
        # Peers whose X-Forwarded-Proto and X-Forwarded-Host say where the client
        # reached them (PULL_METRICS_TRUSTED_PROXIES): a balancer that ends TLS.
        self._trusted = tuple(trusted_proxies)

    @property
    def session(self) -> aiohttp.ClientSession:
        # Lazily, inside the event loop, for servers that skip lifespan; one pool for all.
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=1000,
                    keepalive_timeout=30.0,
                    # The system trust store (honours SSL_CERT_FILE/SSL_CERT_DIR), where
                    # operators put the CA of a private registry.
                    ssl=ssl.create_default_context(),
                ),
                timeout=self._timeout,
                auto_decompress=False,  # bytes pass as the upstream encoded them
                skip_auto_headers=_NOT_ADDED,
                # The shared session must never keep one user's Set-Cookie for another.
                cookie_jar=aiohttp.DummyCookieJar(),
                read_bufsize=_READ_BYTES,
                trust_env=False,  # no HTTP(S)_PROXY detour
            )
        return self._session

    async def aclose(self) -> None:
        if self._owns_session and self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._forward(scope, receive, send)
        elif scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    self.session  # noqa: B018 -- create the pool before the first request
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await self.aclose()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        elif scope["type"] == "websocket":  # the distribution API has none
            await receive()
            await send({"type": "websocket.close", "code": 1003})

    async def _forward(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers, has_body, public = request_headers(scope, self._host, self._trusted)
        target = scope.get("raw_path") or scope["path"].encode()
        if scope.get("query_string"):
            target += b"?" + scope["query_string"]
        # The exact bytes on the wire: a parsed URL would drop dot segments and re-encode.
        url = yarl.URL(self.upstream + quote_from_bytes(target, safe=_URL_SAFE), encoded=True)
        body = _Body(receive)
        try:
            response = await self.session.request(
                scope["method"],
                url,
                headers=[
                    (
                        name.decode("latin-1"),
                        value.decode("latin-1") if value.isascii() else _text(value),
                    )
                    for name, value in headers
                ],
                data=body if has_body else None,
                allow_redirects=False,
            )
        except TimeoutError as exc:  # aiohttp's timeouts are TimeoutErrors
            await _unavailable(send, 504, "the upstream registry did not answer in time", exc)
            return
        except aiohttp.ClientError as exc:
            if body.gone:
                return  # our client left mid-upload; nobody to answer
            unreachable = isinstance(exc, aiohttp.ClientConnectorError)
            why = "is unreachable" if unreachable else "broke off the exchange"
            await _unavailable(send, 502, f"the upstream registry {why}", exc)
            return
        try:
            # Watch for a disconnect only where no upload is still reading `receive`.
            watch = not has_body or body.done
            done = body.done if watch else None
            await self._answer(response, scope, public, receive, send, done)
        finally:
            response.release()  # closes the connection unless the body was read to its end

    async def _answer(
        self,
        response: aiohttp.ClientResponse,
        scope: Scope,
        public: Public,
        receive: Receive,
        send: Send,
        done: bool | None,
    ) -> None:
        status = response.status
        headers = response_headers(response.raw_headers, scope, self._origin, public)
        bodiless = status < 200 or status in _NO_CONTENT
        if bodiless:
            # No body, ever (RFC 9110 §6.4.1): a Content-Length here would make the
            # server wait for bytes that never come (uvicorn raises on a 304).
            headers = [(name, value) for name, value in headers if name != b"content-length"]
        if bodiless or scope["method"] == "HEAD":
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        length = response.content_length
        if length is not None and length <= _WHOLE_BYTES:
            try:
                whole = await response.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                await _unavailable(send, 502, "the upstream registry broke off the exchange", exc)
                return
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": whole, "more_body": False})
            return
        await send({"type": "http.response.start", "status": status, "headers": headers})
        if done is None:  # an upload still running: its end or its abort ends the stream
            await _stream(response, send)
            return
        failure: Exception | None = None
        async with anyio.create_task_group() as tasks:
            # Servers such as uvicorn silently drop sends to a closed connection;
            # only `receive` tells us, and then the upstream must stop too.
            tasks.start_soon(_cancel_on_disconnect, receive, tasks.cancel_scope, done)
            try:
                await _stream(response, send)
            except Exception as exc:  # re-raised below as itself, not as an ExceptionGroup
                failure = exc
            tasks.cancel_scope.cancel()
        if failure is not None:
            raise failure


async def _stream(response: aiohttp.ClientResponse, send: Send) -> None:
    try:
        async for chunk in response.content.iter_any():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    except (aiohttp.ClientError, TimeoutError) as exc:
        # Too late for a 502: leave the response incomplete so the server
        # closes the connection and the client sees a truncated body.
        log.warning("pullstats proxy: upstream response broke off (%r)", exc)
        return
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _unavailable(send: Send, status: int, message: str, exc: BaseException) -> None:
    log.warning("pullstats proxy: %s (%r)", message, exc)
    # The registry error shape clients already print; the address stays in our log.
    error = {"code": "UNAVAILABLE", "message": message, "detail": {"error": type(exc).__name__}}
    body = json.dumps({"errors": [error]}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _text(raw: bytes) -> str:
    # aiohttp writes header text as UTF-8: decoding it so gives back the same bytes.
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return raw.decode("latin-1")  # obs-text that is not UTF-8: the nearest we can send


class _Body:
    """The request body as `receive()` delivers it, one message at a time."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self.done = False
        self.gone = False  # the client disconnected before the body ended

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while not self.done:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self.gone = True
                raise ConnectionAbortedError("the client disconnected during its upload")
            self.done = not message.get("more_body", False)
            if message.get("body"):
                yield message["body"]


async def _cancel_on_disconnect(receive: Receive, scope: anyio.CancelScope, done: bool) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            scope.cancel()
            return
        if not message.get("more_body", False):
            if done:
                # A second end-of-body: an in-process caller whose receive never
                # blocks. Nothing to watch; do not spin.
                return
            done = True


def proxy_app(
    upstream: str,
    *,
    connect_timeout: float = 5.0,
    read_timeout: float = 60.0,
    session: aiohttp.ClientSession | None = None,
    trusted_proxies: Sequence[IPNetwork] = (),
) -> RegistryProxy:
    """An ASGI app forwarding every request to `upstream` (`http(s)://host[:port]`);
    `trusted_proxies`: peers whose X-Forwarded-Proto and -Host it passes on."""
    return RegistryProxy(
        upstream,
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        session=session,
        trusted_proxies=trusted_proxies,
    )
