"""What the WSGI and ASGI adapters share: one decision per request.

`Core.dispatch` is the whole hot path for requests the middleware does not
care about: two string tests, then back to the wrapped app.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from pullstats_middleware import api
from pullstats_middleware.config import PullStatsConfig
from pullstats_middleware.events import ManifestExchange
from pullstats_middleware.matchers import ManifestRequest, Matcher, OCIMatcher, StatsRequest
from pullstats_middleware.matchers.stats import STATS_ROOT
from pullstats_middleware.metrics import PullMetrics

log = logging.getLogger("pullstats_middleware")

_WATCHED = frozenset(("GET", "HEAD"))


class Core:
    def __init__(self, config: PullStatsConfig | None, metrics: PullMetrics | None) -> None:
        if config is None:
            config = metrics.config if metrics is not None else PullStatsConfig.from_env()
        self.config = config
        self.enabled = config.enabled
        # Off means a pure pass-through: no store, no thread, no routes.
        self.metrics = (metrics or PullMetrics(config)) if self.enabled else None
        self.matcher: Matcher = OCIMatcher(config.path_prefix)
        self.stats_root = config.path_prefix + STATS_ROOT
        if config.auth == "none" and self.enabled:
            log.warning(
                "pull statistics: PULL_METRICS_AUTH is 'none': anyone who can reach the "
                "statistics routes can read every repository's counts; use this only on a "
                "trusted network"
            )

    def dispatch(
        self, method: str, path: str
    ) -> ManifestRequest | StatsRequest | api.ApiResponse | None:
        """None: pass the request through untouched."""
        if "/manifests/" in path:
            if method in _WATCHED:
                return self.matcher.match_manifest(path)
            return None
        if path.startswith(self.stats_root):
            return api.route(method, path[len(self.config.path_prefix) :])
        return None

    def exchange(
        self, request: ManifestRequest, method: str, client: Callable[[], str]
    ) -> ManifestExchange:
        assert self.metrics is not None
        return ManifestExchange(
            self.metrics.recorder, request, method, client, self.config.max_manifest_bytes
        )

    def probe_path(self, request: StatsRequest) -> str:
        return self.config.path_prefix + api.probe_path(request)

    def policy_verdict(
        self, request: StatsRequest, headers: Mapping[str, str]
    ) -> api.Authorization | None:
        """The verdict of the `none` or callable policy; None means: ask the registry."""
        auth = self.config.auth
        if auth == "registry":
            return None
        if auth == "none":
            return api.Authorization(None)
        assert callable(auth)
        return api.judge_policy(auth, request, headers)

    def answer(self, request: StatsRequest, current_digest: str | None) -> api.ApiResponse:
        assert self.metrics is not None
        return api.answer(self.metrics, request, current_digest)
