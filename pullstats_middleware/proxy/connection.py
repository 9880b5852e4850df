"""One keep-alive HTTP/1.1 connection to the upstream registry, one exchange at a time.

The bytes are parsed by httptools (llhttp, the parser uvicorn serves with); this
class only keeps the state of the exchange in progress and hands its answer to
the one task waiting for it. Measured in front of the same registry, a manifest
request costs the proxy about 60 % of the CPU it cost through aiohttp's client
(1.1 against 1.8 s per 10,000, benchmarks/proxy_clients.py), because nothing here
is general: no cookies, no redirects, no header objects, one future per wait.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import httptools

Headers = list[tuple[bytes, bytes]]

# Body bytes held for a slow client before the upstream socket stops being read, and
# how few let it be read again: far apart, so reading is not switched per chunk.
_PAUSE_BYTES = 1 << 20
_RESUME_BYTES = 1 << 18


class UpstreamError(Exception):
    """The upstream registry could not be reached or broke off the exchange."""


class Unreachable(UpstreamError):
    """No connection could be made."""


class BrokeOff(UpstreamError):
    """The connection was lost, or the upstream sent what is not HTTP/1.1."""


class UpstreamTimeout(UpstreamError, TimeoutError):
    """Connecting, a pool slot or the upstream's next bytes took too long."""


class Connection(asyncio.Protocol):
    """A connection and the response of its current exchange: `status`, `headers`,
    `content_length`, then `read()` or `chunks()`."""

    def __init__(self, loop: asyncio.AbstractEventLoop, read_timeout: float) -> None:
        self._loop = loop
        self._read_timeout = read_timeout
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._drain: asyncio.Future[None] | None = None
        self._new_exchange(False)

    def _new_exchange(self, head_only: bool) -> None:
        # A parser per exchange: after a HEAD llhttp would wait for the body its
        # Content-Length names, and httptools cannot tell it not to.
        self._parser = httptools.HttpResponseParser(self)
        self._head_only = head_only
        self.status = 0
        self.headers: Headers = []
        self.content_length: int | None = None
        self.answered = False  # the status and headers are in
        self.complete = False  # ... and the body to its end
        self.reusable = False  # set once complete, if the upstream keeps the connection
        self.got_bytes = False
        self._spoiled = False  # the request's body was not sent to its end
        self._until_close = False
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self._error: UpstreamError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last = 0.0

    def begin(self, head: bytes, head_only: bool) -> None:
        """Send the request's head; its body, if any, follows through `write`."""
        self._new_exchange(head_only)
        assert self.transport is not None
        self.transport.write(head)

    # -- the request body --------------------------------------------------------------

    async def write(self, data: bytes) -> None:
        if self.closed:
            raise BrokeOff("the upstream closed the connection during the upload")
        assert self.transport is not None
        self.transport.write(data)
        if self._drain is not None:
            await self._drain

    def pause_writing(self) -> None:
        self._drain = self._loop.create_future()

    def resume_writing(self) -> None:
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)

    # -- the response ------------------------------------------------------------------

    async def answered_or_done(self, upload: asyncio.Future[None]) -> None:
        """Wait until the upstream answers or `upload` ends; no read clock runs while
        an upload, paced by its client, is under way."""
        if self.answered or upload.done() or self._error is not None:
            return
        self._waiter = waiter = self._loop.create_future()
        upload.add_done_callback(lambda _: self._wake())
        try:
            await waiter
        finally:
            self._waiter = None

    async def response(self) -> None:
        """Wait for the status and headers (the read clock starts here)."""
        while not self.answered:
            await self._wait()

    async def read(self) -> bytes:
        while not self.complete:
            await self._wait()
        return b"".join(self._chunks)

    async def chunks(self) -> AsyncIterator[bytes]:
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self._paused and self._buffered <= _RESUME_BYTES and not self.closed:
                    self._paused = False
                    assert self.transport is not None
                    self.transport.resume_reading()
                yield chunk
            elif self.complete:
                return
            else:
                await self._wait()

    async def _wait(self) -> None:
        if self._error is not None:
            raise self._error
        self._waiter = self._loop.create_future()
        self._last = self._loop.time()
        if self._timer is None:
            self._timer = self._loop.call_later(self._read_timeout, self._check_timeout)
        try:
            await self._waiter
        finally:
            self._waiter = None
        if self._error is not None:
            raise self._error

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _fail(self, error: UpstreamError) -> None:
        if self._error is None and not self.complete:
            self._error = error
        self._wake()

    def _check_timeout(self) -> None:
        """One timer per exchange, re-armed for the rest of the quiet time: the clock
        runs only while someone waits for the upstream's bytes."""
        self._timer = None
        if self.complete or self._error is not None or self.closed:
            return
        quiet = self._loop.time() - self._last
        if self._waiter is not None and quiet >= self._read_timeout:
            self._fail(UpstreamTimeout(f"no bytes from the upstream for {self._read_timeout:g} s"))
            self.close()
            return
        left = self._read_timeout - quiet if self._waiter is not None else self._read_timeout
        self._timer = self._loop.call_later(left, self._check_timeout)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        self._last = self._loop.time()
        if self.complete:  # bytes nobody asked for: the connection cannot be trusted
            self.reusable = False
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(BrokeOff(f"the upstream sent a malformed response ({exc})"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        if self.answered and self._until_close and not self.complete:
            self._finish()  # a body delimited by the end of the connection
        else:
            self._fail(BrokeOff("the upstream closed the connection"))
        self._stop_timer()
        self.resume_writing()

    def spoil(self) -> None:
        """Never reuse this connection: the upstream answered before the request's body
        was sent to its end, so it may still read the rest as a next request."""
        self._spoiled = True
        self.reusable = False

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None and not self.closed:
            self.transport.close()

    # -- httptools callbacks -------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:  # 100 Continue and friends: the real answer follows
            self.headers = []
            return
        self.status = status
        self.answered = True
        framed = status in (204, 304) or self._head_only
        chunked = False
        for name, value in self.headers:
            name = name.lower()
            if name == b"content-length" and value.isdigit():
                self.content_length = int(value)
            elif name == b"transfer-encoding":
                chunked = True
        self._until_close = not framed and not chunked and self.content_length is None
        if framed:
            self._finish()
        else:
            self._wake()

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered >= _PAUSE_BYTES and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.answered and not self.complete:
            self._finish()

    def _finish(self) -> None:
        self.complete = True
        self.reusable = (
            not (self.closed or self._spoiled or self._until_close) and self._keep_alive()
        )
        self._stop_timer()
        self._wake()

    def _keep_alive(self) -> bool:
        try:
            return bool(self._parser.should_keep_alive())
        except httptools.HttpParserError:
            return False
