"""The SQL side: migrations, the exactly-once write of a claim, and reads.

SQLAlchemy Core 2 on SQLite (the embedded default: one file, WAL) and on
PostgreSQL through psycopg 3. What a claim adds is in writes.py.
"""

from __future__ import annotations

import functools
import os
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import (
    CompoundSelect,
    Connection,
    Engine,
    Integer,
    Select,
    String,
    bindparam,
    create_engine,
    event,
    func,
    literal_column,
    null,
    select,
    union_all,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from pullstats_middleware.durable.schema import (
    flush_claims,
    manifest_daily,
    manifest_pulls,
    tag_daily,
    tag_pulls,
)
from pullstats_middleware.durable.writes import add
from pullstats_middleware.store.base import StoreUnavailable, iso_date
from pullstats_middleware.store.pending import Claim, Delta, RecordKey


class Database:
    def __init__(self, url: str, **engine_options: Any) -> None:
        self.url = url
        self.engine: Engine = create_engine(url, **engine_options)
        self.dialect = self.engine.dialect.name
        self._autocommit = self.engine.execution_options(isolation_level="AUTOCOMMIT")
        if self.dialect == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        _live.add(self)

    def upgrade(self) -> None:
        """Create or migrate the schema to the newest revision the package ships."""
        from alembic import command

        config = alembic_config()
        with self.engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    def revisions(self) -> tuple[str | None, str | None]:
        """(the schema revision of the database, the newest this package ships)."""
        from alembic.migration import MigrationContext
        from alembic.script import ScriptDirectory

        with self.engine.connect() as connection:
            current = MigrationContext.configure(connection).get_current_revision()
        return current, ScriptDirectory.from_config(alembic_config()).get_current_head()

    def close(self) -> None:
        self.engine.dispose()

    # -- the flush worker ----------------------------------------------------

    def write(self, claim: Claim, *, before_commit: Callable[[], None] | None = None) -> bool:
        """Add a claim's deltas, in one transaction with its id; False when that id was
        committed already (a worker killed after the commit, or another worker)."""
        try:
            with self.engine.begin() as connection:
                row = {"claim_id": claim.id, "committed_at": iso_date(time.time())}
                connection.execute(flush_claims.insert(), [row])
                self._add(connection, claim.deltas)
                if before_commit is not None:
                    before_commit()
        except IntegrityError:
            return False
        return True

    def _add(self, connection: Connection, deltas: Iterable[Delta]) -> None:
        add(connection, self.dialect, deltas)

    def prune(self, before: str) -> int:
        """Delete the daily rows of days before `before` (YYYY-MM-DD); rows deleted."""
        with self.engine.begin() as connection:
            return sum(
                connection.execute(table.delete().where(table.c.day < before)).rowcount
                for table in (tag_daily, manifest_daily)
            )

    # -- reads -----------------------------------------------------------------

    @contextmanager
    def snapshot(self, *, repeatable: bool = True) -> Iterator[Connection]:
        """One read transaction: totals and committed claim ids seen at one moment.
        `repeatable` False: each statement reads its own moment (one statement sees one
        anyway), in autocommit: no BEGIN and COMMIT round trips around it.
        A database that cannot be read raises StoreUnavailable (the routes answer 503)."""
        try:
            if not repeatable:
                with self._autocommit.connect() as connection:
                    yield connection
                return
            with self.engine.connect() as connection, connection.begin():
                if self.dialect == "postgresql":
                    connection.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                elif self.dialect == "sqlite":
                    # pysqlite begins no transaction for a SELECT: without one, each query
                    # would read its own moment. WAL keeps the first one's for all.
                    connection.exec_driver_sql("BEGIN")
                yield connection
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"the database: {type(exc).__name__}: {exc.args[0]}") from exc

    @staticmethod
    def committed(
        connection: Connection, claim_ids: Iterable[str], *, fix_snapshot: bool = False
    ) -> set[str]:
        """Which of `claim_ids` SQL has; `fix_snapshot`: ask even for none, so that the
        snapshot is taken (by a transaction's first statement) before this returns."""
        ids = list(claim_ids)
        if not ids and not fix_snapshot:
            return set()
        found = connection.execute(
            select(flush_claims.c.claim_id).where(flush_claims.c.claim_id.in_(ids))
        )
        return {row[0] for row in found}

    @staticmethod
    def tag_names(connection: Connection, repository: str) -> set[str]:
        query = select(tag_pulls.c.tag).where(tag_pulls.c.repository == repository)
        return {row[0] for row in connection.execute(query)}

    def totals(self, connection: Connection, keys: Iterable[RecordKey]) -> dict[RecordKey, Delta]:
        """The SQL rows of `keys`, in one statement (a UNION ALL of one query per kind
        and repository: a tag and its manifest cost one round trip). For a long list
        of names (a repository listing) the repository's rows, filtered here, rather
        than an IN list PostgreSQL would have to parse."""
        wanted: dict[tuple[str, str], set[str]] = {}
        for key in keys:
            wanted.setdefault((key.kind, key.repository), set()).add(key.name)
        if not wanted:
            return {}
        groups = list(wanted.items())
        parameters: dict[str, Any] = {}
        for n, ((_, repository), names) in enumerate(groups):
            parameters[f"r{n}"] = repository
            if len(names) <= _IN_LIST_MAX:
                parameters[f"n{n}"] = sorted(names)
        shape: tuple[Any, ...] = (
            *((kind, len(names) > _IN_LIST_MAX) for (kind, _), names in groups),
            self.dialect,
        )
        out: dict[RecordKey, Delta] = {}
        rows = connection.execute(_totals(shape), parameters)
        for n, name, count, pulled, digest, pushed in rows:
            (kind, repository), names = groups[n]
            if name in names:
                key = RecordKey(kind, repository, name)
                out[key] = Delta(key, count, pulled, digest, {}, pushed)
        return out


@functools.lru_cache(maxsize=64)
def _totals(shape: tuple[Any, ...]) -> Select[Any] | CompoundSelect[Any]:
    """The totals statement of one shape: (kind, every row of its repository?) per
    part, then the dialect. Built once: building a statement costs more than
    PostgreSQL running it."""
    *groups, dialect = shape
    parts = [_totals_query(n, kind, every, dialect) for n, (kind, every) in enumerate(groups)]
    return parts[0] if len(parts) == 1 else union_all(*parts)


def _totals_query(n: int, kind: str, every: bool, dialect: str) -> Select[Any]:
    """Part `n` of the totals: `kind` rows of repository `r{n}` named in `n{n}` (or
    `every` row of it), as (n, name, count, last pull, digest, last push)."""
    table = tag_pulls if kind == "tag" else manifest_pulls
    c = table.c
    name = c.tag if kind == "tag" else c.digest
    tagged = (c.current_manifest_digest, c.last_push_date) if kind == "tag" else (null(), null())
    query = select(literal_column(str(n), Integer), name, c.pull_count, c.last_pull_date, *tagged)
    query = query.where(c.repository == bindparam(f"r{n}"))
    if every:
        return query
    if dialect != "postgresql":  # SQLite probes the primary key once per listed name
        return query.where(name.in_(bindparam(f"n{n}", expanding=True)))
    # PostgreSQL: one array parameter, joined name by name to the primary key. (An IN
    # list of parameters, once the statement is prepared, is compared with every row
    # of the repository: 100 names among 10,000 tags took 38 ms.)
    names = func.unnest(bindparam(f"n{n}", type_=ARRAY(String)))
    asked = names.table_valued("asked").render_derived(name=f"asked{n}")
    return query.select_from(asked.join(table, name == asked.c.asked))


_IN_LIST_MAX = 500  # names asked by value; beyond, the repository's rows are read whole


_live: weakref.WeakSet[Database] = weakref.WeakSet()


def _forget_connections_after_fork() -> None:
    # A forked child (gunicorn --preload) must not use its parent's connections:
    # it opens its own, and leaves the parent's to the parent.
    for database in list(_live):
        database.engine.dispose(close=False)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_connections_after_fork)


def alembic_config() -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", "pullstats_middleware.durable:migrations")
    return config


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    # WAL: readers never wait for the flush worker's write; a busy timeout instead
    # of "database is locked" when two writers meet.
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
