"""Several worker processes (gunicorn, uvicorn --workers): prometheus_client's
multiprocess mode.

With `PROMETHEUS_MULTIPROC_DIR` set before prometheus_client is imported, every
metric keeps its value in a file per process in that directory, and a scrape
answered by any worker reads them all (`MultiProcessCollector`). So each worker
must write its own values there whether or not it is ever scraped:
`WorkerSync` copies them on a daemon thread every flush interval, and starts
again in a child forked after it started (gunicorn --preload forks workers
from a process that built the app). It holds the collector's lock across a
fork, so no child starts with it (or prometheus_client's own lock, taken only
under it) held by a thread the child does not have.
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
    """Calls `sync` every `interval` seconds on a daemon thread until it returns False.
    `lock`: what every write to the metrics holds, held across fork."""

    def __init__(self, sync: Callable[[], bool], interval: float, lock: threading.RLock) -> None:
        self._sync = sync
        self._interval = interval
        self.lock = lock
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self) -> None:
        _live.add(self)  # from now on held across fork
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
        self.lock.release()
        # Threads do not survive fork: the child copies its own values from now on.
        if self._thread is not None and not self._stop.is_set():
            self.start()


_live: weakref.WeakSet[WorkerSync] = weakref.WeakSet()
_forking: list[WorkerSync] = []  # the ones locked for the fork under way


def _lock_all_before_fork() -> None:
    _forking[:] = list(_live)
    for sync in _forking:
        sync.lock.acquire()


def _unlock_all_in_parent() -> None:
    for sync in _forking:
        sync.lock.release()
    _forking.clear()


def _restart_all_in_child() -> None:
    for sync in _forking:
        sync._after_fork_in_child()
    _forking.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_lock_all_before_fork,
        after_in_parent=_unlock_all_in_parent,
        after_in_child=_restart_all_in_child,
    )
