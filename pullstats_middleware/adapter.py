"""What the WSGI and ASGI adapters share: the parts built once from the config.

An adapter translates its server's request into a `Request` or a manifest
exchange and writes what it gets back; everything it decides with lives here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from pullstats_middleware.config import ConfigError, PullStatsConfig
from pullstats_middleware.exchange import ManifestExchange, Watch
from pullstats_middleware.matchers import ManifestRequest, OCIMatcher
from pullstats_middleware.metrics import PullMetrics
from pullstats_middleware.routes import ROUTES, Route, Router

log = logging.getLogger("pullstats_middleware")

_WATCHED = frozenset(("GET", "HEAD", "PUT"))  # pulls, resolutions, pushes


class Adapter:
    """Base of `PullStatsMiddleware` and `PullStatsASGIMiddleware`.

    `metrics`: share one `PullMetrics` between several wrapped apps; `routes`:
    the statistics route table. Off (`FEATURE_IMAGE_PULL_STATS` false) it is a
    pure pass-through: no store, no thread, no routes (`router` is None).
    """

    __slots__ = ("_known", "_matcher", "_watch", "app", "config", "metrics", "router")

    def __init__(
        self,
        app: Any,  # typed by each adapter
        config: PullStatsConfig | None = None,
        *,
        metrics: PullMetrics | None = None,
        routes: Sequence[Route] = ROUTES,
    ) -> None:
        self.app = app
        if config is None:
            config = metrics.config if metrics is not None else PullStatsConfig.from_env()
        self.config = config
        self.metrics: PullMetrics | None = None
        self.router: Router | None = None
        self._matcher = OCIMatcher(config.path_prefix)
        self._known = self._matcher.known
        if not config.enabled:
            log.warning(
                "pull statistics are off (FEATURE_IMAGE_PULL_STATS is not true): every "
                "request passes through uncounted; set FEATURE_IMAGE_PULL_STATS=true "
                "(or enabled=True) to count pulls"
            )
            return
        self.metrics = metrics = metrics or PullMetrics(config)
        self._watch = Watch(
            metrics.recorder, self._identity, config.max_manifest_bytes, config.exclude
        )
        if config.prometheus:
            routes = (*routes, _prometheus_route(metrics))
        self.router = Router(routes, config, metrics)
        if config.auth == "none":
            log.warning(
                "pull statistics: PULL_METRICS_AUTH is 'none': anyone who can reach the "
                "statistics routes can read every repository's counts; use this only on a "
                "trusted network"
            )

    def target(self, method: str, path: str) -> Router | ManifestRequest | None:
        """What a request is to the middleware: a statistics route (the router answers
        it), a manifest exchange to watch (a GET, a HEAD or a PUT by tag), or None: pass
        it through untouched (a HEAD or PUT by digest records nothing).

        Every request pays for this: two string tests for most. Never raises; a
        request the middleware fails to look at passes through uncounted.
        """
        router = self.router
        if router is None:
            return None
        try:
            if path.startswith(router.roots):
                return router
            if method in _WATCHED and "/manifests/" in path:
                # The matcher's cache read here: one call less for a path seen before.
                request = self._known.get(path) or self._matcher.match_manifest(path)
                if request is None or method == "GET" or not request.by_digest:
                    return request
        except Exception:
            log.exception("pull statistics: failed to look at a request; passing it through")
        return None

    def exchange(self, request: ManifestRequest, method: str, context: Any) -> ManifestExchange:
        """The watcher of one manifest response; `context`: the request as the server
        gave it (ASGI scope, WSGI environ), read for the client's identity if needed."""
        return ManifestExchange(self._watch, request, method, context)

    def _identity(self, context: Any) -> str:
        """The client's identity (puller.identity), read from `context`."""
        raise NotImplementedError


def _prometheus_route(metrics: PullMetrics) -> Route:
    """PULL_METRICS_PROMETHEUS: the metrics route; the collector counts from now on."""
    try:
        from pullstats_middleware.prometheus import PullStatsCollector, metrics_route
    except ImportError as exc:
        raise ConfigError(
            f"PULL_METRICS_PROMETHEUS needs prometheus-client ({exc}): "
            "pip install 'pullstats-middleware[prometheus]'"
        ) from None
    PullStatsCollector.of(metrics)
    return metrics_route()
