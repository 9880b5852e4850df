"""`pullstats export`: its flags, and the run that streams the durable store to a file.

Every way it can fail that an operator can cause (a bad flag, no database, a schema
not migrated, a Redis that does not answer, a file that cannot be written) is one
line on stderr and exit status 2, and leaves the target file as it was.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from typing import Any

from pullstats_middleware import export_output
from pullstats_middleware.cli_args import _database_flag, _store_flags, keys_epilog, wrap
from pullstats_middleware.config import PullStatsConfig
from pullstats_middleware.matchers import validate_repository
from pullstats_middleware.serving import StartupError, one_line

# The kinds durable/export.py reads (not imported from there: `--help` needs no SQLAlchemy).
KINDS = ("tags", "manifests", "history")


class ExportError(StartupError):
    """One line on stderr, exit status 2."""


class Terminated(Exception):
    """SIGTERM, raised where the export is, so the temporary file is removed."""


def add_export_command(commands: Any, run: Callable[[argparse.Namespace], int]) -> None:
    command = commands.add_parser(
        "export",
        help="write every tag, manifest or day of the SQL database to CSV, JSON or NDJSON",
        description=wrap(
            "Stream the durable store's rows (--kind tags: one row a tag; manifests: one a "
            "manifest; history: one a tag or manifest and UTC day with pulls) to a file or "
            "to standard output, in constant memory. With Redis configured, each row also "
            "counts what Redis holds that was not flushed yet, as the statistics routes do."
        ),
        epilog=keys_epilog(
            "The file appears under its name only once complete: an export that fails or "
            "is interrupted (Ctrl-C, SIGTERM) leaves it as it was. A progress bar is drawn "
            "on stderr when it is a terminal (not with --quiet). The database must be "
            "migrated (`pullstats db upgrade`).",
            reading_only=True,
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    which = command.add_mutually_exclusive_group(required=True)
    which.add_argument("--repository", metavar="REPO", help="one repository, e.g. library/hello")
    which.add_argument("--all", action="store_true", help="every repository")
    command.add_argument(
        "--kind", choices=KINDS, default="tags", help="a row's kind (default tags)"
    )
    for flag, what in (("--since", "on or after"), ("--until", "on or before")):
        command.add_argument(
            flag, type=_day, metavar="YYYY-MM-DD",
            help=f"UTC days {what} this one: history's days; tags' and manifests' last pull",
        )  # fmt: skip
    command.add_argument(
        "--format",
        choices=export_output.FORMATS,
        required=True,
        help="csv (a header row), json (one array) or ndjson (an object a line)",
    )
    command.add_argument("--output", metavar="FILE", default=export_output.STDOUT,
                         help="the file to write ('-', the default: standard output)")  # fmt: skip
    command.add_argument("--quiet", action="store_true", help="no progress bar")
    command.add_argument(
        "--sql-only",
        action="store_true",
        help="the database's rows alone, not merged with what Redis holds unflushed",
    )
    _database_flag(command)
    _store_flags(command)
    command.set_defaults(run=run)


def _day(text: str) -> dt.date:
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            return dt.date.fromisoformat(text)
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"invalid date {text!r} (YYYY-MM-DD, a UTC day)")


def run_export(args: argparse.Namespace, config: PullStatsConfig) -> int:
    """`pullstats export`, with the configuration loaded (a database is configured)."""
    from pullstats_middleware import serving

    if args.since and args.until and args.since > args.until:
        raise ExportError(f"--since {args.since} is after --until {args.until}")
    problem = args.repository is not None and validate_repository(args.repository)
    if problem:
        raise ExportError(f"--repository: {problem}")
    assert config.database is not None
    _sqlite_file_exists(config.database)
    serving.check_database(config.database)  # reachable, and at this version's schema
    if config.redis is not None and not args.sql_only:
        try:
            serving.ping_redis(config.redis)
        except StartupError as exc:
            raise ExportError(f"{exc} (--sql-only exports the database alone)") from None
    from pullstats_middleware.durable import Database
    from pullstats_middleware.durable.export import COLUMNS, Selection, count, rows
    from pullstats_middleware.store import StoreDataError, StoreUnavailable, redis_store

    selection = Selection(args.kind, args.repository, args.since, args.until)
    database = Database(config.database)
    store = None
    if config.redis is not None and not args.sql_only:
        if config.redis.cluster and args.repository is None:
            raise ExportError(
                "--all with a Redis Cluster cannot merge what Redis holds (a repository at a "
                "time can: --repository R); or run 'pullstats flush --once', then --sql-only"
            )
        store = redis_store(config.redis, prefix=config.key_prefix, durable=True)
    target, show = args.output, export_output.show_progress(args.quiet, args.output)
    try:
        with (
            _sigterm_raises(),
            export_output.output(target) as out,
            export_output.progress(show, lambda: count(database, selection)) as advance,
            # Redis first, then SQL, as the routes read them (durable/reads.py).
            closing(rows(database, selection, store)) as stream,
        ):
            export_output.write_rows(out, args.format, COLUMNS[args.kind], stream, advance)
    except StoreUnavailable as exc:
        raise ExportError(f"cannot read the statistics: {one_line(exc)}{_kept(target)}") from None
    except StoreDataError as exc:
        raise ExportError(
            f"malformed statistics in Redis: {one_line(exc)}{_kept(target)}"
        ) from None
    except BrokenPipeError:  # `pullstats export … | head`: the reader has seen enough
        _silence_stdout()
        return 141
    except OSError as exc:  # the temporary file, if any, is removed already
        raise ExportError(f"cannot write {target}: {exc.strerror or exc}") from None
    except Terminated:
        print(f"pullstats: export stopped by SIGTERM{_kept(target)}", file=sys.stderr)
        return 143
    finally:
        database.close()
        if store is not None:
            store.close()
    return 0


def _kept(target: str) -> str:
    return "" if target == export_output.STDOUT else f"; nothing written to {target}"


def _sqlite_file_exists(url: str) -> None:
    """A reader must not leave an empty SQLite file behind a mistyped path."""
    import os

    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    path = parsed.database or ""
    in_file = path not in ("", ":memory:") and not path.startswith("file:")
    if parsed.get_backend_name() == "sqlite" and in_file and not os.path.exists(path):
        raise ExportError(f"no SQLite database at {path} (PULL_METRICS_DATABASE, --database)")


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """SIGTERM as an exception while exporting: the `finally` blocks remove the
    temporary file (by default SIGTERM ends the process where it stands)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_terminated(_signum: int, _frame: object) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _silence_stdout() -> None:
    import os

    # The interpreter flushes stdout at exit: into /dev/null, not into the closed pipe.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
