"""One page of a repository's tags from SQL, in the listing's order (store/order.py).

SQL sorts and cuts, so a page of a repository with 10,000 tags reads a page, not
10,000 rows. Dates compare as text with a null as '' (before every date), which
is the order's "null first ascending, last descending"; ties by tag name.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Connection, and_, func, literal_column, or_, select

from pullstats_middleware.durable.schema import tag_pulls
from pullstats_middleware.store.order import TagOrder
from pullstats_middleware.store.pending import Delta, RecordKey

_t = tag_pulls.c
# '' written into the SQL, not a parameter: the listing indexes (migration 0005)
# hold these very expressions, and a prepared statement's parameter matches none.
_EMPTY: ColumnElement[str] = literal_column("''")
_COLUMNS = {
    "tag_pull_count": _t.pull_count,
    "last_tag_pull_date": func.coalesce(_t.last_pull_date, _EMPTY),
    "last_push_date": func.coalesce(_t.last_push_date, _EMPTY),
    "tag_name": _t.tag,
}


def tag_page(connection: Connection, repository: str, order: TagOrder, size: int) -> list[Delta]:
    """The first `size` tag rows of `repository` in `order` (its filters and cursor too)."""
    value = _COLUMNS[order.field]
    query = select(
        _t.tag, _t.pull_count, _t.last_pull_date, _t.current_manifest_digest, _t.last_push_date
    ).where(_t.repository == repository)
    pulled = _COLUMNS["last_tag_pull_date"]
    if order.pulled_before is not None:
        query = query.where(pulled < order.pulled_before)
    if order.pulled_since is not None:
        query = query.where(pulled >= order.pulled_since)
    if order.after is not None:
        mark, name = order.after
        mark = "" if mark is None else mark
        beyond: Any = value < mark if order.descending else value > mark
        query = query.where(or_(beyond, and_(value == mark, _t.tag > name)))
    query = query.order_by(value.desc() if order.descending else value, _t.tag).limit(size)
    return [
        Delta(RecordKey("tag", repository, row[0]), row[1], row[2], row[3], {}, row[4])
        for row in connection.execute(query)
    ]


def known_tags(connection: Connection, repository: str, names: list[str]) -> set[str]:
    """Which of `names` SQL has a row of: asked by value when they are few, else
    every name of the repository is read (one query beats an IN list of thousands)."""
    if len(names) <= _IN_LIST_MAX:
        query = select(_t.tag).where(_t.repository == repository, _t.tag.in_(names))
        return set(connection.scalars(query))
    # Every name of the repository: on PostgreSQL as one array (10,000 rows, each made
    # a Python row, cost four times the query), elsewhere as rows.
    if connection.dialect.name == "postgresql":
        every = connection.scalar(select(func.array_agg(_t.tag)).where(_t.repository == repository))
        return set(every or ()) & set(names)
    return set(connection.scalars(select(_t.tag).where(_t.repository == repository))) & set(names)


_IN_LIST_MAX = 500
