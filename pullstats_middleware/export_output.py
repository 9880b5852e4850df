"""Where and how `pullstats export` writes its rows: the three formats, a file that
appears under its name only once complete, and the progress bar.

Nothing here holds more than one chunk of rows: JSON is written as an array one
element at a time, never built in memory.
"""

from __future__ import annotations

import csv
import json
import os
import secrets
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from itertools import islice
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import Any, TextIO

FORMATS = ("csv", "json", "ndjson")
STDOUT = "-"

Advance = Callable[[int], object]


def write_rows(
    out: TextIO,
    fmt: str,
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    advance: Advance | None = None,
    *,
    chunk: int = 1000,
) -> int:
    """Write `rows` as `fmt` (csv: a header row, then one line a row, RFC 4180; json: one
    array of objects; ndjson: one object a line); nulls are empty CSV fields. `advance`
    is told how many rows each chunk held. Returns how many rows were written."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}")
    written = 0
    encode = _object_encoder(columns)
    writer = csv.writer(out)
    if fmt == "csv":
        writer.writerow(columns)
    elif fmt == "json":
        out.write("[")
    source = iter(rows)
    while batch := list(islice(source, chunk)):
        if fmt == "csv":
            writer.writerows(batch)
        else:
            lines = [encode(row) for row in batch]
            if fmt == "json":
                out.write(("," if written else "") + "\n" + ",\n".join(lines))
            else:
                out.write("\n".join(lines) + "\n")
        written += len(batch)
        if advance is not None:
            advance(len(batch))
    if fmt == "json":
        out.write("\n]\n" if written else "]\n")
    return written


def _object_encoder(columns: Sequence[str]) -> Callable[[Sequence[Any]], str]:
    """A row as a JSON object with `columns` as keys: a template filled with each value
    encoded by the json module's own escaping (3x faster than encoding a dict a row)."""
    keys = [encode_basestring_ascii(column).replace("%", "%%") + ":%s" for column in columns]
    template = "{" + ",".join(keys) + "}"

    def encode(row: Sequence[Any]) -> str:
        if len(row) != len(keys):
            raise ValueError(f"{len(row)} values for {len(keys)} columns")
        return template % tuple(map(_json_value, row))

    return encode


def _json_value(value: Any) -> str:
    if value.__class__ is str:
        return encode_basestring_ascii(value)
    if value is None:
        return "null"
    if value.__class__ is int:
        return int.__repr__(value)
    return json.dumps(value)  # anything else (a bool is not an int here)


@contextmanager
def output(target: str) -> Iterator[TextIO]:
    """A text stream for `target` ("-": standard output). A file is written under a
    temporary name in its directory, fsynced, and renamed over `target` only when the
    block ends normally: an export that fails or is interrupted leaves `target` as it
    was (absent, or the previous export) and removes its temporary file. Only a
    SIGKILL or a power cut can leave that temporary file (`.NAME.*.part`) behind."""
    if target == STDOUT:
        sys.stdout.flush()
        # Its own buffer on file descriptor 1, encoded as UTF-8 whatever the locale says.
        stream = open(sys.stdout.fileno(), "w", encoding="utf-8", newline="", closefd=False)  # noqa: SIM115
        try:
            yield stream
        except BaseException:
            with suppress(OSError):  # a closed pipe: nothing more can be told to it
                stream.close()
            raise
        stream.close()
        return
    path = Path(target)
    if path.is_dir():
        raise IsADirectoryError(21, "Is a directory", target)
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
    # 0o666 less the umask: the file gets the permissions a shell redirect would give.
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with open(fd, "w", encoding="utf-8", newline="") as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    # The rename itself survives a power cut only once the directory is synced.
    with suppress(OSError):  # not every file system lets a directory be opened
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def show_progress(quiet: bool, target: str) -> bool:
    """A bar only for a person watching: stderr a terminal, and the rows not going to
    that terminal too."""
    if quiet or not sys.stderr.isatty():
        return False
    return not (target == STDOUT and sys.stdout.isatty())


@contextmanager
def progress(show: bool, total: Callable[[], int | None]) -> Iterator[Advance | None]:
    """A tqdm bar on stderr (rows done, rows/s, and the ETA when `total` is known), or
    nothing at all: `total` is asked only when the bar is shown."""
    if not show:
        yield None
        return
    from tqdm import tqdm

    with tqdm(
        total=total(),
        desc="pullstats export",
        unit=" rows",
        unit_scale=True,
        mininterval=0.25,
        dynamic_ncols=True,
        file=sys.stderr,
    ) as bar:
        yield bar.update
        # Records only Redis held come on top of SQL's count: end the bar at 100 %.
        if bar.total is not None and bar.n != bar.total:
            bar.total = bar.n
            bar.refresh()
