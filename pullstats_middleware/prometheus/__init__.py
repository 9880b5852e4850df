"""Prometheus metrics of the recorder (the [prometheus] extra: prometheus-client).

    PULL_METRICS_PROMETHEUS=true          # the adapters mount /api/v1/pull_statistics/metrics

or, in an application's own registry:

    from prometheus_client import REGISTRY
    from pullstats_middleware.prometheus import PullStatsCollector

    REGISTRY.register(PullStatsCollector.of(middleware.metrics))
"""

from pullstats_middleware.prometheus.collector import OTHER, PullStatsCollector, RepositoryLabels
from pullstats_middleware.prometheus.endpoint import PATH, metrics_route, scrape
from pullstats_middleware.prometheus.workers import multiprocess_dir

__all__ = [
    "OTHER",
    "PATH",
    "PullStatsCollector",
    "RepositoryLabels",
    "metrics_route",
    "multiprocess_dir",
    "scrape",
]
