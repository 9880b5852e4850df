"""The `pullstats` command: run the reverse proxy, try the demo, read the statistics.

This module reads the arguments, calls the one function that does each job
(config loading in `config`, start-up checks and serving in `serving`), and
prints. Every failure an operator can cause (a bad flag, URL, YAML file or
config value, a Redis that does not answer, a port in use) is one line on
stderr, `pullstats: error: ...`, and exit status 2; never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, cast

from pullstats_middleware import cli_text
from pullstats_middleware.cli_args import build_parser
from pullstats_middleware.cli_export import add_export_command, run_export
from pullstats_middleware.config import ConfigError, PullStatsConfig, RedisSettings
from pullstats_middleware.matchers import validate_digest, validate_repository, validate_tag
from pullstats_middleware.serving import StartupError, one_line
from pullstats_middleware.store import StoreUnavailable

FEATURE = "FEATURE_IMAGE_PULL_STATS"
log = logging.getLogger("pullstats_middleware")


class CLIError(Exception):
    """A request the command cannot carry out; one line on stderr, exit status 2."""


def main(argv: Sequence[str] | None = None) -> int:
    from pullstats_middleware import __version__

    parser = build_parser(
        __version__,
        _run_proxy,
        _run_demo,
        _run_stats,
        _run_db,
        _run_flush,
        _run_tags,
        lambda commands: add_export_command(commands, _run_export),
    )
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed
        return exc.code if isinstance(exc.code, int) else 0
    try:
        return int(args.run(args))
    except (CLIError, StartupError, ConfigError) as exc:
        print(f"pullstats: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def load_config(
    path: str | None = None,
    *,
    redis_url: str | None = None,
    database: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> PullStatsConfig:
    """YAML file < environment < flags. FEATURE_IMAGE_PULL_STATS defaults to on:
    the commands exist to count pulls."""
    overrides: dict[str, Any] = {}
    if redis_url is not None:
        overrides["redis"] = RedisSettings.parse("--redis-url", redis_url)
    if database is not None:
        overrides["database"] = database
    env = os.environ if environ is None else environ
    return PullStatsConfig.from_file(path, environ=env, defaults={FEATURE: True}, **overrides)


# -- pullstats proxy ----------------------------------------------------------------


def _run_proxy(args: argparse.Namespace) -> int:
    from pullstats_middleware import server, serving
    from pullstats_middleware.proxy import check_upstream

    try:
        upstream = check_upstream(args.upstream)
    except ValueError as exc:
        raise StartupError(str(exc)) from None
    tls = serving.tls_files(args.tls_cert, args.tls_key)
    config = load_config(args.config, redis_url=args.redis_url)
    if args.workers > 1 and config.enabled and config.redis is None:
        raise StartupError(
            f"--workers {args.workers} needs Redis (--redis-url or PULL_METRICS_REDIS): "
            "the memory store is per process, each worker would count apart"
        )
    if config.enabled and config.redis is not None:
        serving.ping_redis(config.redis)
    if config.enabled and config.database is not None:
        serving.check_database(config.database)
    sock = serving.listen(args.host, args.port)
    try:
        if args.upstream_check:
            serving.reach_upstream(upstream, args.connect_timeout)
    except StartupError:
        sock.close()
        raise
    server.setup_logging(args.log_level)
    recipe = server.ProxyRecipe(upstream, config, args.connect_timeout, args.read_timeout)
    store = "off" if not config.enabled else (config.redis.describe() if config.redis else "memory")
    host, port = sock.getsockname()[:2]
    where = f"{'https' if tls else 'http'}://{f'[{host}]' if ':' in host else host}:{port}"
    log.info(
        "pullstats proxy: listening on %s, upstream %s, pull statistics: %s, %d worker%s",
        where, upstream, store, args.workers, "s" if args.workers > 1 else "",
    )  # fmt: skip
    server.serve(
        recipe,
        sock,
        args.log_level,
        proxy=True,
        tls=tls,
        workers=args.workers,
        access_log=args.access_log,
    )
    return 0


# -- pullstats demo -------------------------------------------------------------------


def _run_demo(args: argparse.Namespace) -> int:
    from pullstats_middleware import server, serving

    database = args.database
    if database is None and _have_sqlalchemy():  # the embedded default: an SQLite file
        database = f"sqlite:///{tempfile.mkdtemp(prefix='pullstats-demo-')}/pullstats.db"
    elif database == "none":
        database = None
    app, images = serving.demo_app(args.flush_interval, database)
    sock = serving.listen(args.host, args.port)
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(args.host, args.host)
    base = f"http://{f'[{host}]' if ':' in host else host}:{sock.getsockname()[1]}"
    where = serving.describe_database(database) if database else None
    print(cli_text.demo_text(base, args.flush_interval, *images, database=where), flush=True)
    server.setup_logging(args.log_level)
    server.serve(app, sock, args.log_level, proxy=False, access_log=True)
    return 0


def _have_sqlalchemy() -> bool:
    import importlib.util

    return importlib.util.find_spec("sqlalchemy") is not None


# -- pullstats stats ------------------------------------------------------------------


def parse_reference(text: str) -> tuple[str, str | None, str | None]:
    """`repo:tag` or `repo@digest` (a bare `repo` means `repo:latest`): (repo, tag, digest)."""
    repository, at, digest = text.partition("@")
    tag: str | None = None
    if not at:
        slash, colon = text.rfind("/"), text.rfind(":")
        repository, tag = (text[:colon], text[colon + 1 :]) if colon > slash else (text, "latest")
    elif ":" in repository[repository.rfind("/") + 1 :]:
        raise CLIError(f"give a tag or a digest, not both: {text!r}")
    problem = validate_repository(repository)
    if problem and ":" in repository:
        problem += " (name the repository without the registry host)"
    problem = problem or (validate_tag(tag) if tag is not None else validate_digest(digest))
    if problem:
        raise CLIError(problem)
    return repository, tag, (digest if at else None)


def _run_stats(args: argparse.Namespace) -> int:
    from pullstats_middleware.metrics import PullMetrics
    from pullstats_middleware.store import StoreDataError, StoreUnavailable

    repository, tag, digest = parse_reference(args.reference)
    # A reader: it never runs a flush worker of its own.
    config = replace(load_config(args.config, redis_url=args.redis_url), embedded_flusher=False)
    if config.redis is None:
        raise CLIError(
            "no Redis configured (--redis-url, PULL_METRICS_REDIS or USER_EVENTS_REDIS); "
            "without one, counts live in each serving process's own memory and there is "
            "nothing to read from here"
        )
    metrics = PullMetrics(config)
    try:
        if tag is not None:
            payload = metrics.get_tag_statistics(repository, tag)
        else:
            payload = metrics.get_manifest_statistics(repository, cast(str, digest))
    except StoreDataError as exc:
        raise CLIError(f"malformed statistics in Redis: {exc}") from None
    except StoreUnavailable as exc:
        where = config.redis.describe()
        raise CLIError(f"cannot read Redis at {where}: {one_line(exc)}") from None
    finally:
        metrics.close(timeout=1)
    print(json.dumps(payload, indent=2) if args.json else cli_text.stats_table(repository, payload))
    return 0


# -- pullstats db, pullstats flush -------------------------------------------------------


def _durable(args: argparse.Namespace) -> PullStatsConfig:
    config = load_config(args.config, redis_url=args.redis_url, database=args.database)
    if config.database is None:
        raise CLIError("no database configured (--database or PULL_METRICS_DATABASE)")
    return config


def _run_db(args: argparse.Namespace) -> int:
    from pullstats_middleware import serving

    config = _durable(args)
    assert config.database is not None
    serving.upgrade_database(config.database)
    print(f"pullstats: the database at {serving.describe_database(config.database)} is up to date")
    return 0


def _run_flush(args: argparse.Namespace) -> int:
    from pullstats_middleware import server, serving

    config = _durable(args)
    if config.redis is None:
        raise CLIError(
            "no Redis configured (--redis-url, PULL_METRICS_REDIS or USER_EVENTS_REDIS): a "
            "flush worker of its own moves counts out of Redis"
        )
    server.setup_logging("info")
    interval = args.interval or config.database_flush_interval
    moved = serving.run_flusher(config, once=args.once, interval=interval)
    if args.once:
        print(f"pullstats: moved {moved} record(s) to the database")
    return 0


def _run_export(args: argparse.Namespace) -> int:
    return run_export(args, _durable(args))


# -- pullstats stale, pullstats top -----------------------------------------------------


def _run_tags(args: argparse.Namespace) -> int:
    import datetime as dt

    from pullstats_middleware.metrics import PullMetrics

    problem = validate_repository(args.repository)
    if problem:
        raise CLIError(problem)
    if (args.days is not None and args.days < 1) or (args.limit is not None and args.limit < 1):
        raise CLIError("--days and --limit must be at least 1")
    config = load_config(args.config, redis_url=args.redis_url, database=args.database)
    if config.redis is None and config.database is None:
        raise CLIError("no Redis or database configured to read the statistics from")
    metrics = PullMetrics(replace(config, embedded_flusher=False))
    try:
        rows = metrics.get_tags(args.repository)
        today = dt.datetime.now(dt.timezone.utc).date()
        if args.listing == "stale":
            cutoff = (today - dt.timedelta(days=args.days)).isoformat()
            rows = [r for r in rows if (r["last_tag_pull_date"] or "") < cutoff]
            rows.sort(key=lambda r: (r["last_tag_pull_date"] or "", r["tag_name"]))
        else:
            if args.days is not None:
                if metrics.database is None:
                    raise CLIError("--days needs the daily history: configure a database")
                start = today - dt.timedelta(days=args.days - 1)
                for row in rows:
                    history = metrics.get_history(
                        "tag", args.repository, row["tag_name"], start, today
                    )
                    row["tag_pull_count"] = sum(day.pull_count for day in history.days)
            rows.sort(key=lambda r: (-r["tag_pull_count"], r["tag_name"]))
    except StoreUnavailable as exc:
        raise CLIError(f"cannot read the statistics: {one_line(exc)}") from None
    finally:
        metrics.close(timeout=1)
    rows = rows[: args.limit] if args.limit else rows
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(cli_text.tag_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
