"""`PullMetrics`: the store, the background recorder and the public calls on them."""

from __future__ import annotations

import atexit
import datetime as dt
import logging
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, cast

from pullstats_middleware import tag_rows
from pullstats_middleware.config import ConfigError, PullStatsConfig
from pullstats_middleware.matchers import validate_digest, validate_repository, validate_tag
from pullstats_middleware.recorder import Recorder
from pullstats_middleware.store import (
    MemoryStore,
    RedisClusterStore,
    RedisStore,
    Store,
    redis_store,
)
from pullstats_middleware.store.order import TagOrder
from pullstats_middleware.store.pending import ClaimStore, Merged, RecordKey

if TYPE_CHECKING:  # the durable store needs the [sql] extra: imported only when configured
    from pullstats_middleware.durable import Database, FlusherThread, History, RepositoryHistory

log = logging.getLogger("pullstats_middleware")

_VALID_CACHE = 10_000


class PullMetrics:
    """Owns one store and one recorder. Share one instance per process.

    `track_*` return at once (no I/O); `flush` waits until what was tracked is
    in the store; `get_*_statistics` read the store (I/O) and return the
    seed's JSON shapes as dicts.
    """

    def __init__(self, config: PullStatsConfig | None = None, *, store: Store | None = None):
        self.config = config = config or PullStatsConfig()
        durable = config.database is not None
        if store is None:
            if config.redis is not None:
                store = redis_store(config.redis, prefix=config.key_prefix, durable=durable)
            else:
                log.warning(
                    "pull statistics: no PULL_METRICS_REDIS or USER_EVENTS_REDIS configured; "
                    "counting in process memory (lost on exit, not shared between processes)"
                )
                store = MemoryStore(durable=durable)
        elif durable and isinstance(store, (RedisStore, RedisClusterStore, MemoryStore)):
            store.durable = True  # Redis then holds only what is not yet flushed
        self.store = store
        self.database: Database | None = None
        self.flusher: FlusherThread | None = None
        if config.database is not None:
            try:
                from pullstats_middleware.durable import Database, Flusher, FlusherThread
            except ImportError as exc:
                raise ConfigError(
                    f"PULL_METRICS_DATABASE needs SQLAlchemy ({exc}): "
                    "pip install 'pullstats-middleware[sql]'"
                ) from None

            self.database = Database(config.database)
            if config.embedded_flusher:
                history = config.history_days
                flusher = Flusher(cast(ClaimStore, store), self.database, history_days=history)
                self.flusher = FlusherThread(flusher, config.database_flush_interval).start()
        self.recorder = Recorder(
            store,
            flush_interval=config.flush_interval,
            max_keys=config.buffer_max_keys,
            batch_max_keys=config.batch_max_keys,
            window=config.resolution_window,
            clock_skew=config.clock_skew,
        )
        self._closed = False
        self._valid: set[tuple[str, str, str]] = set()
        ref = weakref.ref(self)
        atexit.register(_close_at_exit, ref)

    # -- recording (request thread, no I/O) --------------------------------

    def track_tag_pull(
        self, repository: str, tag: str, digest: str, client: str | None = None
    ) -> None:
        """Count a pull of `repository:tag`, which served manifest `digest`; `client`, a
        string naming who pulled (see `puller.identity`), counts them as a puller.

        Raises ValueError naming the malformed name; nothing is counted then.
        """
        if (repository, tag, digest) not in self._valid:
            _check(validate_repository(repository) or validate_tag(tag) or validate_digest(digest))
            self._remember((repository, tag, digest))
        self.recorder.add_tag_pull(repository, tag, digest, client)

    def track_manifest_pull(self, repository: str, digest: str, client: str | None = None) -> None:
        """Count a pull of `repository@digest` (by `client`, when given)."""
        if (repository, "", digest) not in self._valid:
            _check(validate_repository(repository) or validate_digest(digest))
            self._remember((repository, "", digest))
        self.recorder.add_manifest_pull(repository, digest, client=client)

    def _remember(self, names: tuple[str, str, str]) -> None:
        # Names repeat (a hot image is pulled again and again): validate each
        # combination once. Bounded, and a plain set: the GIL makes add safe.
        if len(self._valid) >= _VALID_CACHE:
            self._valid.clear()
        self._valid.add(names)

    # -- reading (I/O) -------------------------------------------------------

    def get_tag_statistics(
        self, repository: str, tag: str, current_digest: str | None = None
    ) -> dict[str, Any]:
        """The tag's counts; `current_digest` (what the tag points to now, when the
        registry told us) overrides the digest of the tag's last pull."""
        _check(validate_repository(repository) or validate_tag(tag))
        tag_key = RecordKey("tag", repository, tag)
        digest: str | None
        manifest: Merged | None
        if current_digest and self.database is not None:  # both in one read
            manifest_key = RecordKey("manifest", repository, current_digest)
            both = self._read_many([tag_key, manifest_key])
            record, manifest, digest = both[tag_key], both[manifest_key], current_digest
        else:
            record = self._read(tag_key)
            digest = current_digest or record.current_manifest_digest
            manifest = self._read(RecordKey("manifest", repository, digest)) if digest else None
        return {
            "tag_name": tag,
            "tag_pull_count": record.pull_count,
            "last_tag_pull_date": record.last_pull_date,
            "current_manifest_digest": digest,
            "manifest_pull_count": manifest.pull_count if manifest else 0,
            "last_manifest_pull_date": manifest.last_pull_date if manifest else None,
        }

    def get_manifest_statistics(self, repository: str, digest: str) -> dict[str, Any]:
        _check(validate_repository(repository) or validate_digest(digest))
        record = self._read(RecordKey("manifest", repository, digest))
        return {
            "manifest_digest": digest,
            "manifest_pull_count": record.pull_count,
            "last_manifest_pull_date": record.last_pull_date,
        }

    def get_history(
        self, kind: str, repository: str, name: str, start: dt.date, end: dt.date
    ) -> History:
        """Pulls and unique pullers per UTC day of a tag (`kind` "tag") or a manifest,
        `start` to `end` inclusive, zero-filled, and unique pullers over the range.
        Needs a database (HistoryUnavailable without one)."""
        if self.database is None:
            raise HistoryUnavailable("pull history needs a database: set PULL_METRICS_DATABASE")
        from pullstats_middleware.durable import daily

        key = RecordKey(kind, repository, name)
        return daily(cast(ClaimStore, self.store), self.database, key, start, end)

    def get_repository_history(
        self, repository: str, start: dt.date, end: dt.date
    ) -> RepositoryHistory:
        """Pulls (manifest GETs), pulls by tag and unique pullers per UTC day of a whole
        repository, as `get_history`. Needs a database (HistoryUnavailable without one)."""
        _check(validate_repository(repository))
        if self.database is None:
            raise HistoryUnavailable("pull history needs a database: set PULL_METRICS_DATABASE")
        from pullstats_middleware.durable import repository_daily

        return repository_daily(cast(ClaimStore, self.store), self.database, repository, start, end)

    def get_tags(self, repository: str, also: Iterable[str] = ()) -> list[dict[str, Any]]:
        """Every tag of `repository` the store or the database knows, and those in `also`
        (the registry's own list: never-pulled tags get zero counts and null dates),
        each with the seed's six tag fields and `last_push_date`."""
        _check(validate_repository(repository))
        return tag_rows.all_rows(cast(ClaimStore, self.store), self.database, repository, also)

    def get_tag_page(
        self, repository: str, registry: list[str], order: TagOrder, limit: int
    ) -> tuple[list[dict[str, Any]], bool]:
        """The first `limit` tag rows (as `get_tags`) in `order`, after its cursor and
        filters, and whether more follow. With a database, SQL sorts and cuts."""
        _check(validate_repository(repository))
        store = cast(ClaimStore, self.store)
        return tag_rows.page(store, self.database, repository, registry, order, limit)

    def _read_many(self, keys: list[RecordKey]) -> dict[RecordKey, Merged]:
        return tag_rows.read_many(cast(ClaimStore, self.store), self.database, keys, None)

    def _read(self, key: RecordKey) -> Merged:
        """Without a database, the store's record; with one, SQL plus what the store holds."""
        if self.database is None:
            if key.kind == "tag":
                return Merged(*self.store.read_tag(key.repository, key.name))
            return Merged(*self.store.read_manifest(key.repository, key.name), None)
        return self._read_many([key])[key]

    def health(self) -> dict[str, float]:
        """Counters to export to monitoring: pulls dropped at the buffer cap, HEAD/GET
        pairing events dropped there (not pulls), keys the store refused (foreign
        data), keys buffered, batches waiting for the store; pulls written to the
        store by kind, HEAD/GET pairs it made into tag pulls, batches applied, failed
        attempts (retried), and seconds since the store last had everything (0 while
        nothing waits). No I/O: cheap enough for every scrape."""
        recorder = self.recorder
        return {
            "dropped_pulls": recorder.dropped,
            "dropped_attribution_events": recorder.dropped_events,
            "excluded_pulls": recorder.excluded,
            "skipped_keys": recorder.skipped_keys,
            "buffered_keys": len(recorder),
            "pending_batches": recorder.pending_batches,
            "tag_pulls_written": recorder.pulls_written["tag"],
            "manifest_pulls_written": recorder.pulls_written["manifest"],
            "attribution_pairs": getattr(self.store, "pairs_made", 0),
            "batches_applied": recorder.batches_applied,
            "batch_retries": recorder.batch_retries,
            "seconds_since_flush": recorder.seconds_since_flush(),
        }

    # -- lifecycle -----------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Block until every pull tracked so far is in the store; False on timeout."""
        return self.recorder.flush(timeout)

    def close(self, timeout: float | None = None) -> bool:
        """Flush (within `timeout`, default PULL_METRICS_SHUTDOWN_TIMEOUT) and stop."""
        if self._closed:
            return True
        self._closed = True
        flushed = self.recorder.close(self.config.shutdown_timeout if timeout is None else timeout)
        if self.flusher is not None:
            self.flusher.stop()
        if self.database is not None:
            self.database.close()
        self.store.close()
        return flushed


class HistoryUnavailable(RuntimeError):
    """Daily history is kept in SQL: without a database there is none."""


def _check(problem: str | None) -> None:
    if problem:
        raise ValueError(problem)


def _close_at_exit(ref: weakref.ref[PullMetrics]) -> None:
    metrics = ref()
    if metrics is not None:
        metrics.close()
