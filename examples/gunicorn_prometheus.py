"""gunicorn settings for several workers serving PULL_METRICS_PROMETHEUS.

Each worker writes its metrics to files in PROMETHEUS_MULTIPROC_DIR, and a
scrape answered by any worker sums them. Empty the directory before each start
(values of a previous run would add up), set it for gunicorn, and use this file:

    rm -rf /run/pullstats-metrics && mkdir /run/pullstats-metrics
    PROMETHEUS_MULTIPROC_DIR=/run/pullstats-metrics FEATURE_IMAGE_PULL_STATS=true \\
    PULL_METRICS_PROMETHEUS=true PULL_METRICS_REDIS=redis://localhost:6379/0 \\
        gunicorn --config examples/gunicorn_prometheus.py --workers 4 myregistry:app

Workers share counts through Redis; configure one, or each worker counts alone.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import multiprocess


def child_exit(server: Any, worker: Any) -> None:
    """A worker is gone: its gauges (buffered keys, pending batches, ...) no longer
    count; its counters still do, as prometheus-client's multiprocess mode says."""
    multiprocess.mark_process_dead(worker.pid)
