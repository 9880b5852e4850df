"""The reverse proxy behind `pullstats proxy`: pull statistics for a registry in any language."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pullstats_middleware.asgi import PullStatsASGIMiddleware
from pullstats_middleware.config import PullStatsConfig
from pullstats_middleware.proxy.forward import RegistryProxy, proxy_app
from pullstats_middleware.proxy.headers import HOP_BY_HOP, check_upstream

if TYPE_CHECKING:
    from starlette.types import ASGIApp

    from pullstats_middleware.metrics import PullMetrics

__all__ = ["HOP_BY_HOP", "RegistryProxy", "build_proxy", "check_upstream", "proxy_app"]


def build_proxy(
    upstream: str,
    config: PullStatsConfig,
    *,
    metrics: PullMetrics | None = None,
    **timeouts: Any,
) -> ASGIApp:
    """The proxy wrapped by the statistics middleware: what `pullstats proxy` serves;
    with PULL_METRICS_PROMETHEUS, also `GET /metrics` at its root."""
    forward = proxy_app(upstream, trusted_proxies=config.trusted_proxies, **timeouts)
    app: ASGIApp = PullStatsASGIMiddleware(forward, config=config, metrics=metrics)
    if config.enabled and config.prometheus:
        from pullstats_middleware.proxy.metrics_root import MetricsAtRoot

        app = MetricsAtRoot(app)
    return app
