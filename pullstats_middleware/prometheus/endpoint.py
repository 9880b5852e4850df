"""The scrape: what `GET /api/v1/pull_statistics/metrics` (and the proxy's `/metrics`)
answers, as one route of the statistics table.

The route asks the registry nothing: the metrics are no repository's, so
`PULL_METRICS_AUTH` does not apply. Like most `/metrics` endpoints they are
served to anyone who can reach them, unless `PULL_METRICS_PROMETHEUS_TOKEN` is
set: then a scrape must send `Authorization: Bearer <token>` (Prometheus:
`authorization: {credentials: ...}` in the scrape config).
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector

from pullstats_middleware.metrics import PullMetrics
from pullstats_middleware.prometheus.collector import PullStatsCollector
from pullstats_middleware.prometheus.workers import multiprocess_dir
from pullstats_middleware.routes import Response, Route, RouteContext, error

PATH = "/api/v1/pull_statistics/metrics"


def scrape(metrics: PullMetrics, headers: Mapping[str, str]) -> Response:
    """The exposition of `metrics` (OpenMetrics when the scraper asks for it); 401 without
    the configured token. `headers`: the request's, with lower-case names."""
    token = metrics.config.prometheus_token
    if token is not None and not _bearer(headers.get("authorization", ""), token):
        return error(
            401,
            "the metrics need Authorization: Bearer <PULL_METRICS_PROMETHEUS_TOKEN>",
            [("WWW-Authenticate", 'Bearer realm="pullstats metrics"')],
        )
    collector = PullStatsCollector.of(metrics)
    directory = multiprocess_dir()
    if directory is None:
        registry = collector.registry
    else:  # every worker's files, this one's brought up to date first
        collector.sync()
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    encode, content_type = choose_encoder(headers.get("accept", ""))
    body = encode(registry)
    headers_out = [("Content-Type", content_type), ("Content-Length", str(len(body)))]
    return Response(200, headers_out, body)


def _bearer(authorization: str, token: str) -> bool:
    scheme, _, credentials = authorization.partition(" ")
    # Compared in constant time: the time taken says nothing about the token.
    same = hmac.compare_digest(credentials.strip().encode(), token.encode())
    return scheme.lower() == "bearer" and same


def _handler(context: RouteContext) -> Response:
    return scrape(context.metrics, context.request.headers)


def metrics_route() -> Route:
    """The route the adapters mount when PULL_METRICS_PROMETHEUS is true."""
    return Route(
        "prometheus",
        PATH,
        _handler,
        summary="The recorder's health (and opt-in per-repository pulls) for Prometheus",
    )
