"""Several worker processes (gunicorn, uvicorn --workers): prometheus_client's
multiprocess mode.

With `PROMETHEUS_MULTIPROC_DIR` set before prometheus_client is imported, every
metric keeps its value in a file per process in that directory, and a scrape
answered by any worker reads them all (`MultiProcessCollector`). So each worker
must write its own values there whether or not it is ever scraped:
`WorkerSync` copies them on a daemon thread every flush interval, and starts
again in a child forked after it started (gunicorn --preload forks workers
from a process that built the app).
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable

from pullstats_middleware.config import ConfigError

log = logging.getLogger("pullstats_middleware")

ENVIRONMENT = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_dir() -> str | None:
    """The directory of multiprocess mode, or None: one process. A directory that does
    not exist is a ConfigError: every metric would fail to write."""
    path = os.environ.get(ENVIRONMENT) or os.environ.get(ENVIRONMENT.lower())
    if not path:
        return None
    if not os.path.isdir(path):
        raise ConfigError(
            f"{ENVIRONMENT}={path!r} is not a directory: create it, empty, before the "
            "workers start (and empty it again before each start)"
        )
    return path


class WorkerSync:
    """Calls `sync` every `interval` seconds on a daemon thread until it returns False."""

    def __init__(self, sync: Callable[[], bool], interval: float) -> None:
        self._sync = sync
        self._interval = interval
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self) -> None:
        _live.add(self)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pullstats-prometheus", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        _live.discard(self)

    def _run(self) -> None:
        while True:
            try:
                if not self._sync():
                    return
            except Exception:  # monitoring never takes the process down; try again
                log.exception("pull statistics: copying the Prometheus metrics failed")
            if self._stop.wait(self._interval):
                return

    def _after_fork_in_child(self) -> None:
        # Threads do not survive fork: the child copies its own values from now on.
        if self._thread is not None and not self._stop.is_set():
            self.start()


_live: weakref.WeakSet[WorkerSync] = weakref.WeakSet()


def _restart_all_after_fork() -> None:
    for sync in list(_live):
        sync._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_restart_all_after_fork)
