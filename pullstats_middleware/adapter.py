"""What the WSGI and ASGI adapters share: the parts built once from the config.

An adapter translates its server's request into a `Request` or a manifest
exchange and writes what it gets back; everything it decides with lives here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from pullstats_middleware.config import PullStatsConfig
from pullstats_middleware.exchange import ManifestExchange
from pullstats_middleware.matchers import OCIMatcher
from pullstats_middleware.metrics import PullMetrics
from pullstats_middleware.routes import ROUTES, Route, Router

log = logging.getLogger("pullstats_middleware")

_WATCHED = frozenset(("GET", "HEAD"))


class Adapter:
    """Base of `PullStatsMiddleware` and `PullStatsASGIMiddleware`.

    Off (`FEATURE_IMAGE_PULL_STATS` false) it is a pure pass-through: no store,
    no thread, no routes (`router` is None).
    """

    def __init__(
        self,
        config: PullStatsConfig | None,
        metrics: PullMetrics | None,
        routes: Sequence[Route] = ROUTES,
    ) -> None:
        if config is None:
            config = metrics.config if metrics is not None else PullStatsConfig.from_env()
        self.config = config
        self.metrics: PullMetrics | None = None
        self.router: Router | None = None
        self._matcher = OCIMatcher(config.path_prefix)
        if not config.enabled:
            return
        self.metrics = metrics = metrics or PullMetrics(config)
        self.router = Router(routes, config, metrics)
        if config.auth == "none":
            log.warning(
                "pull statistics: PULL_METRICS_AUTH is 'none': anyone who can reach the "
                "statistics routes can read every repository's counts; use this only on a "
                "trusted network"
            )

    def manifest_exchange(
        self, method: str, path: str, client: Callable[[], str]
    ) -> ManifestExchange | None:
        """The exchange to watch when this request is a manifest GET or HEAD. Never raises:
        a request the middleware fails to look at passes through uncounted."""
        if method not in _WATCHED or "/manifests/" not in path:
            return None
        try:
            request = self._matcher.match_manifest(path)
            if request is None:
                return None
            assert self.metrics is not None
            return ManifestExchange(
                self.metrics.recorder, request, method, client, self.config.max_manifest_bytes
            )
        except Exception:
            log.exception("pull statistics: failed to look at a request; passing it through")
            return None
