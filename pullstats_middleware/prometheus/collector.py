"""The recorder's health as Prometheus metrics (docs/design.md, "Prometheus").

Nothing here runs on the request thread. The recorder keeps plain counters on
its flush thread (`PullMetrics.health()`); a scrape copies them into the
metrics below: counters by what they grew since the last copy, gauges set. The
flush latency and the per-repository counters are observed on the flush
thread, once per applied batch (`Recorder.on_applied`).

With several worker processes (`PROMETHEUS_MULTIPROC_DIR` set) each process
also copies its counters every flush interval into prometheus_client's
per-process files, so a scrape answered by any worker sums them all.
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import Iterable
from typing import Any

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from pullstats_middleware.metrics import PullMetrics
from pullstats_middleware.prometheus.workers import WorkerSync, multiprocess_dir
from pullstats_middleware.store.base import Batch

OTHER = "other"  # the repository label of every repository past the bound
# Seconds one batch takes to apply: a Lua script on a local Redis takes ~1 ms.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# health() key -> counter name and help; each counter grows by what the key grew.
_COUNTERS = {
    "dropped_pulls": (
        "pullstats_pulls_dropped",
        "Pulls refused because the buffer was full (PULL_METRICS_BUFFER_MAX_KEYS).",
    ),
    "excluded_pulls": (
        "pullstats_pulls_excluded",
        "Pulls by clients PULL_METRICS_EXCLUDE names: counted nowhere else.",
    ),
    "dropped_attribution_events": (
        "pullstats_attribution_events_dropped",
        "HEAD/GET pairing events refused at the buffer cap (not pulls).",
    ),
    "attribution_pairs": (
        "pullstats_attribution_pairs",
        "HEAD by tag + GET by digest pairs (containerd) the store made into tag pulls.",
    ),
    "batches_applied": ("pullstats_batches_applied", "Batches written to the store."),
    "batch_retries": (
        "pullstats_batch_retries",
        "Failed attempts to write a batch to the store; each is tried again.",
    ),
    "skipped_keys": (
        "pullstats_skipped_keys",
        "Keys the store did not update because they hold data that is not ours.",
    ),
}


class RepositoryLabels:
    """The `repository` label of a repository's pulls: its name within the bound, else
    "other". `allowed`: the names (PULL_METRICS_PROMETHEUS_REPOSITORIES as a list), or
    how many names, the first pulled (an integer); 0 or empty: no per-repository metric.
    Used on the flush thread only."""

    def __init__(self, allowed: tuple[str, ...] | int) -> None:
        self._names = frozenset(allowed) if isinstance(allowed, tuple) else None
        self.limit = len(allowed) if isinstance(allowed, tuple) else allowed
        self._seen: set[str] = set()

    def __call__(self, repository: str) -> str:
        if self._names is not None:
            return repository if repository in self._names else OTHER
        if repository in self._seen:
            return repository
        if len(self._seen) < self.limit:
            self._seen.add(repository)
            return repository
        return OTHER


class PullStatsCollector(Collector):
    """The metrics of one `PullMetrics`; get it with `PullStatsCollector.of(metrics)`
    and register it in any registry (`REGISTRY.register(...)`)."""

    def __init__(self, metrics: PullMetrics) -> None:
        # Weakly: a collector (kept by `of`, a registry or a thread) never keeps its
        # PullMetrics, and so its store and connections, alive.
        self._metrics = weakref.ref(metrics)
        # Every write to the metrics below holds it: a scrape, the worker sync and the
        # flush thread may write at once, and a fork must not copy it held (workers.py).
        self._lock = threading.RLock()
        self._copied: dict[tuple[str, ...], float] = {}
        self._repositories = RepositoryLabels(metrics.config.prometheus_repositories)
        self._counters = {
            key: Counter(name, text, registry=None) for key, (name, text) in _COUNTERS.items()
        }
        self.pulls = Counter(
            "pullstats_pulls_recorded",
            "Pulls written to the store, by kind: tag (GET by tag) or manifest (every "
            "manifest pulled, by tag or digest). HEAD/GET pairs are in "
            "pullstats_attribution_pairs_total.",
            ["kind"],
            registry=None,
        )
        self.redis_errors = Counter(
            "pullstats_redis_errors",
            "Failed writes to the store (Redis), by exception class.",
            ["kind"],
            registry=None,
        )
        self.buffered = Gauge(
            "pullstats_buffered_keys",
            "Distinct keys held in memory, waiting to be cut into batches.",
            registry=None,
            multiprocess_mode="livesum",
        )
        self.pending = Gauge(
            "pullstats_pending_batches",
            "Batches waiting for the store (retried while it is away).",
            registry=None,
            multiprocess_mode="livesum",
        )
        self.since_flush = Gauge(
            "pullstats_seconds_since_last_flush",
            "Seconds since the store last had every pull this process recorded (0 while "
            "nothing waits); the worst process with several.",
            registry=None,
            multiprocess_mode="livemax",
        )
        self.flush_seconds = Histogram(
            "pullstats_flush_duration_seconds",
            "Seconds one batch took to apply to the store.",
            buckets=BUCKETS,
            registry=None,
        )
        self._all: list[Any] = [
            self.pulls,
            *self._counters.values(),
            self.redis_errors,
            self.buffered,
            self.pending,
            self.since_flush,
            self.flush_seconds,
        ]
        self.sql_lag: Gauge | None = None
        if metrics.flusher is not None:
            self.sql_lag = Gauge(
                "pullstats_sql_flush_lag_seconds",
                "Seconds since this process's flush worker last moved everything from "
                "Redis to SQL; with several, the most recent of them.",
                registry=None,
                multiprocess_mode="livemin",
            )
            self._all.append(self.sql_lag)
        self.repository_pulls: Counter | None = None
        if self._repositories.limit:
            self.repository_pulls = Counter(
                "pullstats_repository_pulls",
                "Pulls written to the store per repository (PULL_METRICS_PROMETHEUS_"
                'REPOSITORIES; the rest as repository="other"), by kind as '
                "pullstats_pulls_recorded_total.",
                ["repository", "kind"],
                registry=None,
            )
            self._all.append(self.repository_pulls)
        metrics.recorder.on_applied = self._applied
        self._worker_sync = WorkerSync(self.sync, metrics.config.flush_interval, self._lock)
        self._multiprocess = multiprocess_dir() is not None
        if self._multiprocess:
            self._worker_sync.start()

    @classmethod
    def of(cls, metrics: PullMetrics) -> PullStatsCollector:
        """The one collector of `metrics` (made on the first call)."""
        with _made_lock:
            collector = _made.get(metrics)
            if collector is None:
                collector = _made[metrics] = cls(metrics)
            return collector

    @functools.cached_property
    def registry(self) -> CollectorRegistry:
        """This collector and the process's own metrics (CPU, memory, open files, GC):
        what the endpoint serves from one process."""
        registry = CollectorRegistry()
        for collector in (self, PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            registry.register(collector)
        return registry

    def sync(self) -> bool:
        """Copy the recorder's counters into the metrics (no I/O); False once the
        PullMetrics is gone."""
        metrics = self._metrics()
        if metrics is None:
            return False
        health = metrics.health()
        errors = metrics.recorder.store_errors.copy()
        with self._lock:
            for key, counter in self._counters.items():
                self._grow(counter, (key,), health[key])
            self._grow(self.pulls.labels("tag"), ("tag",), health["tag_pulls_written"])
            manifests = health["manifest_pulls_written"]
            self._grow(self.pulls.labels("manifest"), ("manifest",), manifests)
            for kind, count in errors.items():
                self._grow(self.redis_errors.labels(kind), ("error", kind), count)
            self.buffered.set(health["buffered_keys"])
            self.pending.set(health["pending_batches"])
            self.since_flush.set(health["seconds_since_flush"])
            if self.sql_lag is not None and metrics.flusher is not None:
                self.sql_lag.set(metrics.flusher.lag())
        return True

    def _grow(self, counter: Counter, key: tuple[str, ...], total: float) -> None:
        grown = total - self._copied.get(key, 0)
        if grown > 0:
            counter.inc(grown)
            self._copied[key] = total

    def _applied(self, batch: Batch, seconds: float) -> None:
        """On the flush thread, after each batch the store applied."""
        with self._lock:
            self.flush_seconds.observe(seconds)
            if self.repository_pulls is not None:
                self._count_repositories(self.repository_pulls, batch)
            if self._multiprocess:  # into this process's file now, not at the next copy
                self.sync()

    def _count_repositories(self, repository_pulls: Counter, batch: Batch) -> None:
        counts: dict[tuple[str, str], int] = {}
        label = self._repositories
        for tag in batch.tags:
            key = (label(tag.repository), "tag")
            counts[key] = counts.get(key, 0) + tag.pulls
        for manifest in batch.manifests:
            key = (label(manifest.repository), "manifest")
            counts[key] = counts.get(key, 0) + manifest.pulls
        for (repository, kind), count in counts.items():
            repository_pulls.labels(repository, kind).inc(count)

    def describe(self) -> Iterable[Metric]:
        for metric in self._all:
            yield from metric.describe()

    def collect(self) -> Iterable[Metric]:
        self.sync()
        for metric in self._all:
            for family in metric.collect():
                # No `_created` series: in the text format each is a series of its own,
                # doubling what the repository labels cost Prometheus to store.
                family.samples = [s for s in family.samples if not s.name.endswith("_created")]
                yield family


_made: weakref.WeakKeyDictionary[PullMetrics, PullStatsCollector] = weakref.WeakKeyDictionary()
_made_lock = threading.Lock()
