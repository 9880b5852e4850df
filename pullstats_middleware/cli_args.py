"""The `pullstats` command line: commands, flags, help. Each `--help` lists its keys from
the config fields' own help (`config.KEYS`); `build_parser(..., *more)` adds commands."""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Callable
from dataclasses import MISSING, fields
from typing import Any, NoReturn

from pullstats_middleware.config import KEYS, READING_KEYS, PullStatsConfig

Command = Callable[[argparse.Namespace], int]

EXAMPLES = """\
examples:
  pullstats demo
  pullstats proxy --upstream http://localhost:5000 --redis-url redis://localhost:6379/0
  pullstats stats library/hello:v1 --redis-url redis://localhost:6379/0 --json

Run 'pullstats COMMAND --help' for the flags and configuration keys of each command."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"pullstats: error: {message} (see '{self.prog} --help')\n")


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"invalid port {text!r} (0-65535)")
    return int(text)


def _count(text: str) -> int:
    if text.isdigit() and 1 <= int(text) <= 512:
        return int(text)
    raise argparse.ArgumentTypeError(f"invalid number of workers {text!r} (1-512)")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"invalid number of seconds {text!r}")
    return value


def keys_epilog(intro: str, *, reading_only: bool = False) -> str:
    defaults = {f.metadata["key"]: f.default for f in fields(PullStatsConfig)}
    lines = [wrap(intro), "", "configuration keys (in the --config YAML file or the environment):"]
    for key, help_text in KEYS.items():
        if reading_only and key not in READING_KEYS:
            continue
        default: Any = defaults.get(key, MISSING)
        shown = "" if default in (MISSING, None, "", (), False) else f" [{default}]"
        lines += [f"  {key}", wrap(help_text + shown, indent=6)]
    lines += ["", wrap("precedence: YAML file < environment < flags. exit status: 0 ok, 2 error.")]
    return "\n".join(lines)


def wrap(text: str, indent: int = 0) -> str:
    return textwrap.fill(text, 79, initial_indent=" " * indent, subsequent_indent=" " * indent)


def build_parser(
    version: str,
    proxy: Command,
    demo: Command,
    stats: Command,
    db: Command,
    flush: Command,
    tags: Command,
    *more: Callable[[Any], None],  # each adds a command to the subparsers it is given
) -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter  # the epilogs are laid out by hand
    parser = _Parser(
        prog="pullstats",
        description="Image pull statistics for any container registry.",
        epilog=EXAMPLES,
        formatter_class=raw,
    )
    parser.add_argument("--version", action="version", version=f"pullstats {version}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    command = commands.add_parser(
        "proxy",
        help="reverse proxy in front of any registry, counting pulls",
        description=wrap(
            "Forward every request to an upstream registry (CNCF distribution, Harbor, Zot, "
            "Quay, ...) unchanged, streaming bodies both ways, and count manifest pulls on the "
            "way. The statistics are served at "
            "/api/v1/repository/REPO/tag/TAG/pull_statistics and "
            "/api/v1/repository/REPO/manifest/DIGEST/pull_statistics, authorized by asking "
            "the registry (through the proxy) with the caller's credentials."
        ),
        epilog=keys_epilog(
            "The proxy speaks plain HTTP, or HTTPS with --tls-cert and --tls-key. It adds "
            "X-Forwarded-For "
            "(appending the peer), X-Forwarded-Proto and X-Forwarded-Host, and rewrites a "
            "Location naming the upstream to its own address. With several proxy processes "
            "or for `pullstats stats`, configure Redis: the memory store is per process. "
            "Start-up fails (exit 2) if the configured Redis does not answer PING."
        ),
        formatter_class=raw,
    )
    command.add_argument(
        "--upstream", required=True, metavar="URL", help="the registry, e.g. http://registry:5000"
    )
    _listen_flags(command, 8080)
    _store_flags(command)
    for flag, default, help_text in (
        ("--connect-timeout", 5, "seconds to connect to the upstream before answering 504"),
        ("--read-timeout", 60, "seconds of upstream silence before answering 504"),
    ):
        command.add_argument(
            flag, type=_seconds, default=float(default), metavar="S",
            help=f"{help_text} (default {default})",
        )  # fmt: skip
    command.add_argument(
        "--tls-cert", metavar="FILE.pem",
        help="serve HTTPS with this certificate (chain), PEM; needs --tls-key",
    )  # fmt: skip
    command.add_argument("--tls-key", metavar="FILE.pem", help="the private key of --tls-cert, PEM")
    command.add_argument(
        "--workers", type=_count, default=1, metavar="N",
        help="processes sharing the port, each its own recorder (default 1; more need Redis)",
    )  # fmt: skip
    command.add_argument(
        "--access-log", action="store_true",
        help="log one line per request (off by default: it costs about a sixth of the CPU)",
    )  # fmt: skip
    command.add_argument(
        "--no-upstream-check", dest="upstream_check", action="store_false",
        help="start even if the upstream does not answer yet (requests get 502 until it does); "
        "by default one GET /v2/ must get an HTTP answer first",
    )  # fmt: skip
    command.set_defaults(run=proxy)

    command = commands.add_parser(
        "demo",
        help="an in-memory registry with pull statistics, to try it out",
        description=wrap(
            "Serve a small in-memory registry (library/hello:v1 and a multi-arch "
            "library/multi:latest) with pull statistics on, counting in this process's memory "
            "(no Redis, no configuration read), and print curl commands that pull by tag, by "
            "digest and the containerd way, then read the statistics. Stop it with Ctrl-C."
        ),
        formatter_class=raw,
    )
    _listen_flags(command, 8080)
    command.add_argument(
        "--database",
        metavar="URL",
        help="SQLAlchemy URL to flush the counts into (default: a new SQLite file when "
        "the [sql] extra is installed; 'none' for memory only)",
    )
    command.add_argument(
        "--flush-interval", type=_seconds, default=0.5, metavar="S",
        help="seconds between writes of the counts (default 0.5)",
    )  # fmt: skip
    command.set_defaults(run=demo)

    command = commands.add_parser(
        "stats",
        help="print the pull statistics of a tag or a manifest, read from Redis",
        description=wrap(
            "Read the pull statistics of REPO:TAG (a bare REPO means REPO:latest) or "
            "REPO@DIGEST straight from Redis, without asking the registry. For a tag, the "
            "manifest shown is the one its last pull served."
        ),
        epilog=keys_epilog(
            "Only Redis can be read from here: the embedded memory store lives inside each "
            "serving process.",
            reading_only=True,
        ),
        formatter_class=raw,
    )
    command.add_argument(
        "reference",
        metavar="REPO:TAG|REPO@DIGEST",
        help="e.g. library/hello:v1 or library/hello@sha256:...",
    )
    _store_flags(command)
    command.add_argument("--json", action="store_true", help="print JSON, as the HTTP routes do")
    command.set_defaults(run=stats)

    command = commands.add_parser(
        "db",
        help="create or migrate the SQL schema (PULL_METRICS_DATABASE)",
        description=wrap(
            "Create the tables of the durable store, or migrate them to this version's "
            "schema; safe to run again. Run it before the first start with a database, and "
            "after each upgrade of the package."
        ),
        formatter_class=raw,
    )
    command.add_argument("action", choices=["upgrade"], help="upgrade: to the newest schema")
    _database_flag(command)
    _store_flags(command)
    command.set_defaults(run=db)

    command = commands.add_parser(
        "flush",
        help="move counts from Redis into the SQL database, exactly once",
        description=wrap(
            "The flush worker as a process of its own, for deployments that set "
            "PULL_METRICS_EMBEDDED_FLUSHER=false (one worker for all serving processes; "
            "several may run at once). Each cycle claims what Redis holds, writes it to SQL "
            "in one transaction with the claim id, and then releases it in Redis; a worker "
            "killed at any step loses and doubles nothing."
        ),
        epilog=keys_epilog("Both Redis and a database are needed."),
        formatter_class=raw,
    )
    command.add_argument("--once", action="store_true", help="one cycle, then exit")
    command.add_argument(
        "--interval",
        type=_seconds,
        metavar="S",
        help="seconds between cycles (default PULL_METRICS_DATABASE_FLUSH_INTERVAL, 10)",
    )
    _database_flag(command)
    _store_flags(command)
    command.set_defaults(run=flush)

    for name, help_text, description in (
        (
            "stale",
            "tags nobody pulled in the last --days days (never-pulled ones too)",
            "List the tags of REPOSITORY whose last pull is older than --days days, or that "
            "were never pulled, least recently pulled first, with their last push: what a "
            "retention job may delete. Tags are those the statistics know of (pulled or "
            "pushed through the middleware).",
        ),
        (
            "top",
            "the most pulled tags of a repository",
            "List the tags of REPOSITORY by pull count, most pulled first: in all, or in the "
            "last --days days (that needs the database's daily history).",
        ),
    ):
        command = commands.add_parser(
            name, help=help_text, description=wrap(description), formatter_class=raw
        )
        command.add_argument("repository", metavar="REPOSITORY", help="e.g. library/hello")
        command.add_argument(
            "--days", type=int, metavar="D", default=90 if name == "stale" else None,
            help="not pulled in D days (default 90)" if name == "stale"
            else "count only the pulls of the last D days",
        )  # fmt: skip
        command.add_argument("--limit", type=int, default=20 if name == "top" else None,
                             metavar="N", help="at most N tags")  # fmt: skip
        command.add_argument("--json", action="store_true", help="print JSON")
        _database_flag(command)
        _store_flags(command)
        command.set_defaults(run=tags, listing=name)
    for add in more:
        add(commands)
    return parser


def _database_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database",
        metavar="URL",
        help="SQLAlchemy URL (overrides PULL_METRICS_DATABASE), e.g. sqlite:///pullstats.db",
    )


def _listen_flags(parser: argparse.ArgumentParser, port: int) -> None:
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
    )
    parser.add_argument(
        "--port", type=_port, default=port, help=f"port to listen on (default {port})"
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
        help="server log level (default info)",
    )


def _store_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--redis-url",
        metavar="URL",
        help="Redis for the counts (overrides PULL_METRICS_REDIS), e.g. redis://localhost:6379/0",
    )
    parser.add_argument(
        "--config",
        metavar="FILE.yaml",
        help="YAML file with the configuration keys below (Quay's config.yaml works; "
        "other keys are ignored)",
    )
