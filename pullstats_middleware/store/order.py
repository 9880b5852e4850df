"""The order of a repository's tag listing, one definition for Python and for SQL.

Rows sort by one field, ties by tag name (ascending in both directions). A null
date sorts first ascending (never pulled is the least recently pulled) and last
descending. A cursor is the (value, name) of the last row a page showed: the
next page starts strictly after it, so paging on while counts change never
repeats a row whose sort key did not move.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# The listing's sort names -> the row field they sort by.
SORTS = {
    "pull_count": "tag_pull_count",
    "last_pull_date": "last_tag_pull_date",
    "last_push_date": "last_push_date",
    "tag_name": "tag_name",
}


@dataclass(frozen=True, slots=True)
class TagOrder:
    field: str = "last_tag_pull_date"  # a value of SORTS
    descending: bool = False
    after: tuple[Any, str] | None = None  # the cursor: the last row seen
    pulled_before: str | None = None  # YYYY-MM-DD: last pulled before it, or never
    pulled_since: str | None = None  # YYYY-MM-DD: last pulled on it or later

    def key(self, row: dict[str, Any]) -> tuple[Any, ...]:
        return self._key(row[self.field], row["tag_name"])

    def _key(self, value: Any, name: str) -> tuple[Any, ...]:
        present = value is not None
        return (present, value if present else "", _Reverse(name) if self.descending else name)

    def keeps(self, row: dict[str, Any]) -> bool:
        """The filters and the cursor; SQL applies the same (durable/listing.py)."""
        pulled = row["last_tag_pull_date"] or ""
        if self.pulled_before is not None and not pulled < self.pulled_before:
            return False
        if self.pulled_since is not None and not pulled >= self.pulled_since:
            return False
        if self.after is None:
            return True
        mark, key = self._key(*self.after), self.key(row)
        return key < mark if self.descending else key > mark

    def sort(self, rows: list[dict[str, Any]]) -> None:
        rows.sort(key=self.key, reverse=self.descending)


class _Reverse:
    """Sorts a tie-breaking name ascending inside a descending sort."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __lt__(self, other: _Reverse) -> bool:
        return self.name > other.name

    def __gt__(self, other: _Reverse) -> bool:
        return self.name < other.name

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Reverse) and self.name == other.name
