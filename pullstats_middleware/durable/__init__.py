"""The durable store: counts and daily history in SQL (SQLite or PostgreSQL), fed by
a flush worker that moves them out of Redis exactly once, and read merged with
what Redis still holds, so answers never lag behind a pull."""

from pullstats_middleware.durable.database import Database
from pullstats_middleware.durable.flusher import Flusher, FlusherThread
from pullstats_middleware.durable.history import (
    Day,
    History,
    RepositoryDay,
    RepositoryHistory,
    daily,
    repository_daily,
)
from pullstats_middleware.durable.reads import merged

__all__ = [
    "Database",
    "Day",
    "Flusher",
    "FlusherThread",
    "History",
    "RepositoryDay",
    "RepositoryHistory",
    "daily",
    "merged",
    "repository_daily",
]
