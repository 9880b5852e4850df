"""Configuration: one validated, immutable object, and the parsers of its values."""

from pullstats_middleware.config.exclusion import ExcludeRule
from pullstats_middleware.config.redis_settings import RedisSettings
from pullstats_middleware.config.settings import (
    KEYS,
    READING_KEYS,
    AuthPolicy,
    PullStatsConfig,
    env_values,
    key_of,
)
from pullstats_middleware.config.values import ConfigError, IPNetwork, read_file

__all__ = [
    "KEYS",
    "READING_KEYS",
    "AuthPolicy",
    "ConfigError",
    "ExcludeRule",
    "IPNetwork",
    "PullStatsConfig",
    "RedisSettings",
    "env_values",
    "key_of",
    "read_file",
]
