"""The ASGI adapter: translate scope, receive and send, nothing else.

starlette_app.add_middleware(PullStatsASGIMiddleware, config=config)
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from pullstats_middleware.adapter import Adapter
from pullstats_middleware.exchange import ManifestExchange
from pullstats_middleware.identity import client_address
from pullstats_middleware.routes import (
    Probe,
    ProbeAnswer,
    Request,
    Response,
    RouteCall,
    Router,
)

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("pullstats_middleware")

# What the probe keeps of the caller's request: who is asking, and which host.
_PROBE_HEADERS = (b"authorization", b"cookie", b"host")


class PullStatsASGIMiddleware(Adapter):
    """Wraps an ASGI registry app: counts manifest pulls, serves the statistics routes."""

    __slots__ = ()
    app: ASGIApp

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan" and self.metrics is not None:
                send = self._lifespan_send(send)
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        target = self.target(method, path)
        if target is None:
            await self.app(scope, receive, send)
            return
        if type(target) is Router:  # cheaper than isinstance(): Router is final
            await self._statistics(target, path, scope, receive, send)
            return
        # self.exchange(), inlined: one call less per pull
        exchange = ManifestExchange(self._watch, target, method, scope)

        async def watching_send(message: Message) -> None:
            kind = message["type"]
            if kind == "http.response.body":
                if exchange.wants_body:
                    exchange.body(message.get("body", b""))
                await send(message)
                if not message.get("more_body", False):
                    exchange.finish()  # only once the server took the body to its end
                return
            if kind == "http.response.start":
                exchange.start(message["status"], message.get("headers", ()))
            await send(message)

        await self.app(scope, receive, watching_send)

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

    def _identity(self, scope: Scope) -> str:
        """The client's identity (puller.identity): built straight from the scope, since
        every manifest pull asks for it."""
        authorization = user_agent = forwarded = b""
        for name, value in scope.get("headers", ()):
            # ASGI header names are lower-case; the last of repeated headers wins.
            if name == b"user-agent":
                user_agent = value
            elif name == b"authorization":
                authorization = value
            elif name == b"x-forwarded-for":
                forwarded = value
        peer = scope.get("client")
        address = peer[0] if peer else ""
        trusted = self.config.trusted_proxies
        if trusted and forwarded:
            address = client_address(address, forwarded.decode("latin-1"), trusted)
        # puller.identity(), inlined: one call less on every manifest pull.
        auth = authorization.decode("latin-1") if authorization else ""  # most pulls: none
        return f"{address}\n{auth}\n{user_agent.decode('latin-1')}"

    async def _statistics(
        self, router: Router, path: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        headers = {
            k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())
        }
        peer = scope.get("client")
        query = scope.get("query_string", b"").decode("latin-1")
        outcome = router.route(
            Request(scope["method"], path, query, headers, peer[0] if peer else "")
        )
        if outcome is None:
            await self.app(scope, receive, send)
            return
        if isinstance(outcome, RouteCall):
            answer = await self._probe(outcome.probe, scope) if outcome.probe else None
            outcome = await anyio.to_thread.run_sync(outcome.respond, answer)
        await _send_response(outcome, send)

    async def _probe(self, probe: Probe, scope: Scope) -> ProbeAnswer | None:
        """Run `probe` through the wrapped app in process; None if the app raised."""
        path = scope.get("root_path", "") + probe.path
        headers = [(k, v) for k, v in scope.get("headers", ()) if k.lower() in _PROBE_HEADERS]
        headers.append((b"accept", probe.accept.encode("latin-1")))
        request = {
            **scope,
            "method": probe.method,
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "headers": headers,
        }
        answer: dict[str, Any] = {"body": []}
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
            elif message["type"] == "http.response.body":
                answer["body"].append(message.get("body", b""))

        try:
            await self.app(request, receive, send)
        except Exception:
            log.exception("pull statistics: the registry failed the authorization check")
            return None
        if "status" not in answer:
            return None
        return ProbeAnswer(answer["status"], answer["headers"], b"".join(answer["body"]))


async def _send_response(response: Response, send: Send) -> None:
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
