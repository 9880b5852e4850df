"""The proxy's pool of keep-alive connections to its one upstream registry.

    upstream = UpstreamPool("http://registry:5000", connect_timeout=5, read_timeout=60)
    connection = await upstream.request(b"GET", b"/v2/", headers, body=None)
    try:
        ... connection.status, connection.headers, await connection.read()
    finally:
        upstream.release(connection)

The request head is written as the client sent it (method, target and header
bytes untouched but for what `headers.request_headers` changed); a body streams
with backpressure, chunked if the client sent no Content-Length.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import AsyncIterable
from urllib.parse import urlsplit

from pullstats_middleware.proxy.connection import (
    BrokeOff,
    Connection,
    Headers,
    Unreachable,
    UpstreamTimeout,
)

# RFC 9110 §9.2.2: a proxy may send these again on a fresh connection when a reused
# one turns out to have been closed by the upstream before it answered.
_IDEMPOTENT = frozenset((b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"))


class UpstreamPool:
    """Keep-alive connections to one `http(s)://host[:port]`, most recently used first."""

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float,
        read_timeout: float,
        limit: int = 1000,
        keepalive: float = 30.0,
    ) -> None:
        parts = urlsplit(url)
        self._address = (
            parts.hostname or "",
            parts.port or (443 if parts.scheme == "https" else 80),
        )
        # The system trust store (honours SSL_CERT_FILE/SSL_CERT_DIR), where operators
        # put the CA of a private registry.
        self._ssl = ssl.create_default_context() if parts.scheme == "https" else None
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._keepalive = keepalive
        self._idle: deque[Connection] = deque()
        self._slots = asyncio.Semaphore(limit)
        self._closed = False

    async def request(
        self, method: bytes, target: bytes, headers: Headers, body: AsyncIterable[bytes] | None
    ) -> Connection:
        """Send a request; return once the upstream's status and headers are in.
        Raises Unreachable, BrokeOff or UpstreamTimeout (all UpstreamError)."""
        if body is not None and not any(name == b"content-length" for name, _ in headers):
            headers = [*headers, (b"transfer-encoding", b"chunked")]
            body = _chunked(body)
        head = b"%s %s HTTP/1.1\r\n%s\r\n" % (
            method,
            target,
            b"".join([b"%s: %s\r\n" % header for header in headers]),
        )
        await self._slot()
        connection = None
        try:
            connection = self._reused()
            if connection is not None:
                try:
                    await self._exchange(connection, head, method == b"HEAD", body)
                    return connection
                except BrokeOff:
                    # Closed by the upstream while idle, the close not yet seen here.
                    if body is not None or connection.got_bytes or method not in _IDEMPOTENT:
                        raise
                    connection.close()
            connection = await self._connect()
            await self._exchange(connection, head, method == b"HEAD", body)
            return connection
        except BaseException:
            if connection is not None:
                connection.close()
            self._slots.release()
            raise

    async def _exchange(
        self,
        connection: Connection,
        head: bytes,
        head_only: bool,
        body: AsyncIterable[bytes] | None,
    ) -> None:
        connection.begin(head, head_only)
        if body is not None:
            # The upstream may answer before the body ends (a 401, a 413), while our
            # client waits for that answer before it sends more: upload alongside.
            upload = asyncio.ensure_future(_send(connection, body))
            try:
                await connection.answered_or_done(upload)
            finally:
                if not upload.done():  # answered early: stop sending, never reuse
                    connection.spoil()
                    upload.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await upload
            failure = None if upload.cancelled() else upload.exception()
            if failure is not None and not connection.answered:
                raise failure
        await connection.response()

    def release(self, connection: Connection) -> None:
        """Hand a connection back: kept if its response was read to the end and the
        upstream keeps it alive, closed otherwise."""
        self._slots.release()
        if not connection.reusable or self._closed:
            connection.close()
            return
        now = asyncio.get_running_loop().time()
        connection.idle_since = now
        self._idle.append(connection)
        # Connections not used for `keepalive` seconds are the oldest, at the left.
        while self._idle and now - self._idle[0].idle_since > self._keepalive:
            self._idle.popleft().close()

    def _reused(self) -> Connection | None:
        now = asyncio.get_running_loop().time()
        while self._idle:
            connection = self._idle.pop()
            if now - connection.idle_since > self._keepalive:
                connection.close()  # and every one left of it is older still
                self.close_idle()
            elif not connection.closed:
                return connection
        return None

    def close_idle(self) -> None:
        while self._idle:
            self._idle.pop().close()

    async def _slot(self) -> None:
        if not self._slots.locked():
            await self._slots.acquire()  # returns at once: no task switch
            return
        try:
            await asyncio.wait_for(self._slots.acquire(), self._read_timeout)
        except TimeoutError:
            raise UpstreamTimeout("every connection to the upstream stayed busy") from None

    async def _connect(self) -> Connection:
        loop = asyncio.get_running_loop()
        host, port = self._address
        try:
            _, connection = await asyncio.wait_for(
                loop.create_connection(
                    lambda: Connection(loop, self._read_timeout),
                    host,
                    port,
                    ssl=self._ssl,
                    server_hostname=host if self._ssl else None,
                ),
                self._connect_timeout,
            )
        except TimeoutError:
            raise UpstreamTimeout(
                f"no connection to the upstream within {self._connect_timeout:g} s"
            ) from None
        except OSError as exc:  # refused, unresolvable, a certificate not trusted
            raise Unreachable(f"cannot connect to the upstream ({exc})") from exc
        return connection

    async def aclose(self) -> None:
        self._closed = True
        self.close_idle()


async def _send(connection: Connection, body: AsyncIterable[bytes]) -> None:
    async for chunk in body:
        await connection.write(chunk)


async def _chunked(body: AsyncIterable[bytes]) -> AsyncIterable[bytes]:
    async for chunk in body:
        if chunk:
            yield b"%x\r\n%s\r\n" % (len(chunk), chunk)
    yield b"0\r\n\r\n"
