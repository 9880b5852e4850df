"""The WSGI adapter: translate environ and start_response, nothing else.

flask_app.wsgi_app = PullStatsMiddleware(flask_app.wsgi_app, config)
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from pullstats_middleware import api
from pullstats_middleware.config import PullStatsConfig
from pullstats_middleware.core import Core
from pullstats_middleware.events import MANIFEST_ACCEPT, ManifestExchange
from pullstats_middleware.identity import client_address, client_identity
from pullstats_middleware.matchers import ManifestRequest, StatsRequest
from pullstats_middleware.metrics import PullMetrics

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

log = logging.getLogger("pullstats_middleware")


class PullStatsMiddleware:
    """Wraps a WSGI registry app: counts manifest pulls, serves the statistics routes."""

    def __init__(
        self,
        app: WSGIApplication,
        config: PullStatsConfig | None = None,
        *,
        metrics: PullMetrics | None = None,
    ) -> None:
        self.app = app
        self.core = Core(config, metrics)
        self.metrics = self.core.metrics

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        core = self.core
        if not core.enabled:
            return self.app(environ, start_response)
        method = environ.get("REQUEST_METHOD", "")
        try:
            target = core.dispatch(method, environ.get("PATH_INFO", ""))
        except Exception:
            log.exception("pull statistics: failed to look at a request; passing it through")
            target = None
        if target is None:
            return self.app(environ, start_response)
        if isinstance(target, ManifestRequest):
            return self._watch(target, method, environ, start_response)
        if isinstance(target, StatsRequest):
            return self._respond(self._stats(target, environ), environ, start_response)
        return self._respond(target, environ, start_response)

    # -- manifest pulls --------------------------------------------------

    def _watch(
        self,
        request: ManifestRequest,
        method: str,
        environ: WSGIEnvironment,
        start_response: StartResponse,
    ) -> Iterable[bytes]:
        trusted = self.core.config.trusted_proxies

        def client() -> str:
            address = client_address(
                environ.get("REMOTE_ADDR", ""), environ.get("HTTP_X_FORWARDED_FOR"), trusted
            )
            return client_identity(
                address, environ.get("HTTP_AUTHORIZATION"), environ.get("HTTP_USER_AGENT")
            )

        exchange = self.core.exchange(request, method, client)

        def watching_start_response(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Any:
            try:
                digest = None
                for name, value in headers:
                    if name.lower() == "docker-content-digest":
                        digest = value
                exchange.start(int(status[:3]), digest)
            except Exception:
                log.exception("pull statistics: failed to read a manifest response")
                exchange.status = 0
            return start_response(status, headers, exc_info)

        return _WatchedBody(self.app(environ, watching_start_response), exchange)

    # -- statistics routes -----------------------------------------------

    def _stats(self, request: StatsRequest, environ: WSGIEnvironment) -> api.ApiResponse:
        headers = {
            key[5:].replace("_", "-").lower(): value
            for key, value in environ.items()
            if key.startswith("HTTP_")
        }
        verdict = self.core.policy_verdict(request, headers)
        if verdict is None:
            verdict = self._probe(request, environ)
        if verdict.denied is not None:
            return verdict.denied
        return self.core.answer(request, verdict.current_digest)

    def _probe(self, request: StatsRequest, environ: WSGIEnvironment) -> api.Authorization:
        """Ask the wrapped app, in-process, whether the caller may see this manifest."""
        probe = {
            key: value
            for key, value in environ.items()
            if not key.startswith("HTTP_")
            or key in ("HTTP_AUTHORIZATION", "HTTP_COOKIE", "HTTP_HOST")
        }
        probe.update(
            REQUEST_METHOD="HEAD",
            PATH_INFO=self.core.probe_path(request),
            QUERY_STRING="",
            CONTENT_LENGTH="0",
            HTTP_ACCEPT=MANIFEST_ACCEPT,
        )
        probe["wsgi.input"] = io.BytesIO(b"")
        from werkzeug.test import run_wsgi_app  # only the statistics routes need werkzeug

        probe.pop("CONTENT_TYPE", None)
        try:
            app_iter, status, headers = run_wsgi_app(self.app, probe)
            if hasattr(app_iter, "close"):
                app_iter.close()
        except Exception:
            log.exception("pull statistics: the registry failed the authorization check")
            return api.judge_probe(None, {})
        return api.judge_probe(int(status[:3]), {k.lower(): v for k, v in headers.items()})

    @staticmethod
    def _respond(
        response: api.ApiResponse, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        from werkzeug.wrappers import Response

        return Response(response.body, response.status, response.headers)(environ, start_response)


class _WatchedBody:
    """The app's response body, passed through; the pull is recorded on close()
    only if the server took every chunk (a client that hung up never finishes)."""

    __slots__ = ("_body", "_complete", "_exchange")

    def __init__(self, body: Iterable[bytes], exchange: ManifestExchange) -> None:
        self._body = body
        self._exchange = exchange
        self._complete = False

    def __iter__(self) -> Iterator[bytes]:
        exchange = self._exchange
        for chunk in self._body:
            if exchange.hashing:
                try:
                    exchange.body(chunk)
                except Exception:
                    log.exception("pull statistics: failed to hash a manifest body")
                    exchange.status = 0
            yield chunk
        self._complete = True

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            if self._complete:
                try:
                    self._exchange.finish()
                except Exception:
                    log.exception("pull statistics: failed to record a pull")
