"""The ASGI adapter: translate scope, receive and send, nothing else.

starlette_app.add_middleware(PullStatsASGIMiddleware, config=config)
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from pullstats_middleware import api
from pullstats_middleware.config import PullStatsConfig
from pullstats_middleware.core import Core
from pullstats_middleware.events import MANIFEST_ACCEPT, ManifestExchange
from pullstats_middleware.identity import client_address, client_identity
from pullstats_middleware.matchers import ManifestRequest, StatsRequest
from pullstats_middleware.metrics import PullMetrics

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("pullstats_middleware")

_DIGEST = b"docker-content-digest"
_PROBE_HEADERS = (b"authorization", b"cookie", b"host")


class PullStatsASGIMiddleware:
    """Wraps an ASGI registry app: counts manifest pulls, serves the statistics routes."""

    def __init__(
        self,
        app: ASGIApp,
        config: PullStatsConfig | None = None,
        *,
        metrics: PullMetrics | None = None,
    ) -> None:
        self.app = app
        self.core = Core(config, metrics)
        self.metrics = self.core.metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        core = self.core
        if not core.enabled:
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await self.app(scope, receive, self._lifespan_send(send))
            else:
                await self.app(scope, receive, send)
            return
        method = scope["method"]
        path = scope["path"]
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        try:
            target = core.dispatch(method, path)
        except Exception:
            log.exception("pull statistics: failed to look at a request; passing it through")
            target = None
        if target is None:
            await self.app(scope, receive, send)
        elif isinstance(target, ManifestRequest):
            await self._watch(target, method, scope, receive, send)
        elif isinstance(target, StatsRequest):
            await _send_response(await self._stats(target, scope), send)
        else:
            await _send_response(target, send)

    def _lifespan_send(self, send: Send) -> Send:
        """Flush before the server is told shutdown is complete."""
        metrics = self.metrics
        assert metrics is not None

        async def lifespan_send(message: Message) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                try:
                    await anyio.to_thread.run_sync(metrics.close)
                except Exception:
                    log.exception("pull statistics: shutdown flush failed")
            await send(message)

        return lifespan_send

    # -- manifest pulls --------------------------------------------------

    async def _watch(
        self, request: ManifestRequest, method: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        trusted = self.core.config.trusted_proxies

        def client() -> str:
            wanted = {b"x-forwarded-for": "", b"authorization": "", b"user-agent": ""}
            for name, value in scope.get("headers", ()):
                if name in wanted:  # ASGI header names are lower-case
                    wanted[name] = value.decode("latin-1")
            peer = scope.get("client")
            address = client_address(peer[0] if peer else "", wanted[b"x-forwarded-for"], trusted)
            return client_identity(address, wanted[b"authorization"], wanted[b"user-agent"])

        exchange = self.core.exchange(request, method, client)

        async def watching_send(message: Message) -> None:
            kind = message["type"]
            if kind == "http.response.body":
                if exchange.hashing:
                    _guard(exchange.body, exchange, message.get("body", b""))
                await send(message)
                if not message.get("more_body", False):
                    _guard(exchange.finish, exchange)
                return
            if kind == "http.response.start":
                digest = None
                for name, value in message.get("headers", ()):
                    if name.lower() == _DIGEST:
                        digest = value.decode("latin-1")
                _guard(exchange.start, exchange, message["status"], digest)
            await send(message)

        await self.app(scope, receive, watching_send)

    # -- statistics routes -----------------------------------------------

    async def _stats(self, request: StatsRequest, scope: Scope) -> api.ApiResponse:
        verdict = self.core.policy_verdict(request, _headers(scope))
        if verdict is None:
            verdict = await self._probe(request, scope)
        if verdict.denied is not None:
            return verdict.denied
        return await anyio.to_thread.run_sync(self.core.answer, request, verdict.current_digest)

    async def _probe(self, request: StatsRequest, scope: Scope) -> api.Authorization:
        """Ask the wrapped app, in-process, whether the caller may see this manifest."""
        root = scope.get("root_path", "")
        path = root + self.core.probe_path(request)
        headers = [(k, v) for k, v in scope.get("headers", ()) if k.lower() in _PROBE_HEADERS]
        headers.append((b"accept", MANIFEST_ACCEPT.encode()))
        probe = {
            **scope,
            "method": "HEAD",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "headers": headers,
        }
        answer: dict[str, Any] = {}

        delivered = False

        async def receive() -> Message:
            # One empty body, then wait as a server does until the disconnect
            # (an app listening for it would otherwise spin).
            nonlocal delivered
            if delivered:
                await anyio.sleep_forever()
            delivered = True
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Message) -> None:
            if message["type"] == "http.response.start":
                answer["status"] = message["status"]
                answer["headers"] = {
                    k.decode("latin-1").lower(): v.decode("latin-1")
                    for k, v in message.get("headers", ())
                }

        try:
            await self.app(probe, receive, send)
        except Exception:
            log.exception("pull statistics: the registry failed the authorization check")
        return api.judge_probe(answer.get("status"), answer.get("headers", {}))


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}


def _guard(step: Any, exchange: ManifestExchange, *args: Any) -> None:
    """The middleware's own failures are logged and never reach the pull."""
    try:
        step(*args)
    except Exception:
        log.exception("pull statistics: failed to watch a manifest response")
        exchange.status = 0


async def _send_response(response: api.ApiResponse, send: Send) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": response.status,
            "headers": [
                (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in response.headers
            ],
        }
    )
    await send({"type": "http.response.body", "body": response.body})
