"""Image pull statistics for any container registry.

Wrap a WSGI or ASGI registry app (or any registry, through `pullstats proxy`),
count manifest pulls by tag and by digest into Redis off the request thread,
and serve `/api/v1/repository/{repo}/{tag|manifest}/{ref}/pull_statistics`.
"""

from pullstats_middleware.asgi import PullStatsASGIMiddleware
from pullstats_middleware.config import ConfigError, PullStatsConfig, RedisSettings
from pullstats_middleware.metrics import PullMetrics
from pullstats_middleware.wsgi import PullStatsMiddleware

__all__ = [
    "ConfigError",
    "PullMetrics",
    "PullStatsASGIMiddleware",
    "PullStatsConfig",
    "PullStatsMiddleware",
    "RedisSettings",
]

__version__ = "0.1.0"
