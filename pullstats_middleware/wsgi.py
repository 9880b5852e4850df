"""The WSGI adapter: translate environ and start_response, nothing else.

flask_app.wsgi_app = PullStatsMiddleware(flask_app.wsgi_app, config)
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from pullstats_middleware.adapter import Adapter
from pullstats_middleware.exchange import ManifestExchange
from pullstats_middleware.identity import client_address
from pullstats_middleware.puller import identity
from pullstats_middleware.routes import (
    Probe,
    ProbeAnswer,
    Request,
    RouteCall,
    Router,
)

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

log = logging.getLogger("pullstats_middleware")

# What the probe keeps of the caller's request: who is asking, and which host.
_PROBE_HEADERS = ("HTTP_AUTHORIZATION", "HTTP_COOKIE", "HTTP_HOST")


class PullStatsMiddleware(Adapter):
    """Wraps a WSGI registry app: counts manifest pulls, serves the statistics routes."""

    __slots__ = ()
    app: WSGIApplication

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        method, path = environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", "")
        target = self.target(method, path)
        if target is None:
            return self.app(environ, start_response)
        if type(target) is Router:  # cheaper than isinstance(): Router is final
            return self._statistics(target, path, environ, start_response)
        exchange = self.exchange(target, method, environ)

        def watching_start_response(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Any:
            exchange.start(status, headers)
            return start_response(status, headers, exc_info)

        return _WatchedBody(self.app(environ, watching_start_response), exchange)

    def _identity(self, environ: WSGIEnvironment) -> str:
        """The client's identity (puller.identity)."""
        peer, forwarded = environ.get("REMOTE_ADDR", ""), environ.get("HTTP_X_FORWARDED_FOR")
        address = client_address(peer, forwarded, self.config.trusted_proxies)
        return identity(
            address, environ.get("HTTP_AUTHORIZATION", ""), environ.get("HTTP_USER_AGENT", "")
        )

    def _statistics(
        self, router: Router, path: str, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        headers = {
            key[5:].replace("_", "-").lower(): value
            for key, value in environ.items()
            if key.startswith("HTTP_")
        }
        method = environ.get("REQUEST_METHOD", "")
        query = environ.get("QUERY_STRING", "")
        request = Request(method, path, query, headers, environ.get("REMOTE_ADDR", ""))
        outcome = router.route(request)
        if outcome is None:
            return self.app(environ, start_response)
        if isinstance(outcome, RouteCall):
            answer = self._probe(outcome.probe, environ) if outcome.probe else None
            outcome = outcome.respond(answer)
        start_response(outcome.status_line, outcome.headers)
        return [outcome.body]

    def _probe(self, probe: Probe, environ: WSGIEnvironment) -> ProbeAnswer | None:
        """Run `probe` through the wrapped app in process; None if the app raised."""
        kept = {
            k: v for k, v in environ.items() if not k.startswith("HTTP_") or k in _PROBE_HEADERS
        }
        kept.pop("CONTENT_TYPE", None)
        kept.update(
            REQUEST_METHOD=probe.method,
            PATH_INFO=probe.path,
            QUERY_STRING="",
            CONTENT_LENGTH="0",
            HTTP_ACCEPT=probe.accept,
        )
        kept["wsgi.input"] = io.BytesIO(b"")
        started: list[Any] = []

        def start_response(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Any:
            started[:] = [status, headers]
            return lambda data: None

        try:
            body = self.app(kept, start_response)
            try:
                content = b"".join(body)  # start_response may come with the first chunk
            finally:
                close = getattr(body, "close", None)
                if close is not None:
                    close()
            status, headers = started
            return ProbeAnswer(int(status[:3]), {k.lower(): v for k, v in headers}, content)
        except Exception:
            log.exception("pull statistics: the registry failed the authorization check")
            return None


class _WatchedBody:
    """The app's response body, passed through. The pull is recorded when the server
    asks for more after the last chunk: every chunk was taken. A client that hung up
    stops the iteration first, so it is never counted; close() never counts."""

    __slots__ = ("_body", "_exchange")

    def __init__(self, body: Iterable[bytes], exchange: ManifestExchange) -> None:
        self._body = body
        self._exchange = exchange

    def __iter__(self) -> Iterator[bytes]:
        exchange = self._exchange
        for chunk in self._body:
            if exchange.wants_body:
                exchange.body(chunk)
            yield chunk
        exchange.finish()

    def close(self) -> None:
        close = getattr(self._body, "close", None)
        if close is not None:
            close()
