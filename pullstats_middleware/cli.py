"""The `pullstats` command: run the reverse proxy, try the demo, read the statistics.

Every failure an operator can cause (a bad flag, URL, YAML file or config
value, a Redis that does not answer, a port in use) is one line on stderr,
`pullstats: error: ...`, and exit status 2; never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import socket
import sys
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, fields
from typing import TYPE_CHECKING, Any, NoReturn, cast

from pullstats_middleware.config import ConfigError, PullStatsConfig, RedisSettings
from pullstats_middleware.matchers import validate_digest, validate_repository, validate_tag

if TYPE_CHECKING:
    from starlette.types import ASGIApp

FEATURE = "FEATURE_IMAGE_PULL_STATS"
_ENV_KEYS = [str(f.metadata["key"]) for f in fields(PullStatsConfig)] + ["USER_EVENTS_REDIS"]
_MEANING = {
    "enabled": "master switch; on for `pullstats proxy` unless the file or environment says false",
    "redis": "where counts live: a redis://, rediss:// or unix:// URL, or JSON "
    "{host, port, password, ssl, db, username}",
    "key_prefix": "prefix of every Redis key",
    "path_prefix": "path the registry is mounted under",
    "auth": "who may read statistics: registry (ask the registry), none, or module:callable",
    "flush_interval": "seconds between writes to the store",
    "buffer_max_keys": "keys buffered in memory before new ones are dropped",
    "batch_max_keys": "keys per write to the store",
    "max_manifest_bytes": "largest manifest hashed when the digest header is missing",
    "shutdown_timeout": "seconds to flush at shutdown",
    "resolution_window": "seconds a HEAD by tag waits for its GET by digest (containerd)",
    "trusted_proxies": "comma-separated networks whose X-Forwarded-For is believed",
}
_ACCEPT = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json"
log = logging.getLogger("pullstats_middleware")


class CLIError(Exception):
    """Reported as one line on stderr, exit status 2."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed
        return exc.code if isinstance(exc.code, int) else 0
    try:
        return int(args.run(args))
    except (CLIError, ConfigError) as exc:
        print(f"pullstats: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


# -- configuration ---------------------------------------------------------------


def load_config(
    path: str | None = None,
    *,
    redis_url: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> PullStatsConfig:
    """YAML file < environment < flags. FEATURE_IMAGE_PULL_STATS defaults to on:
    the proxy exists to count pulls."""
    mapping: dict[str, Any] = _read_yaml(path) if path else {}
    env = os.environ if environ is None else environ
    mapping.update({key: env[key] for key in _ENV_KEYS if env.get(key)})
    if mapping.get(FEATURE) is None:
        mapping[FEATURE] = True
    overrides: dict[str, Any] = {}
    if redis_url is not None:
        overrides["redis"] = RedisSettings.parse("--redis-url", redis_url)
    try:
        return PullStatsConfig.from_mapping(mapping, **overrides)
    except (TypeError, ValueError) as exc:  # ConfigError, or a value of a shape it never expected
        raise ConfigError(_one_line(exc)) from None


def _read_yaml(path: str) -> dict[str, Any]:
    try:
        import yaml
    except ImportError:
        raise CLIError("--config needs PyYAML: pip install 'pullstats-middleware[proxy]'") from None
    try:
        with open(path, encoding="utf-8") as stream:
            data = yaml.safe_load(stream)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {_one_line(exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys, not {type(data).__name__}")
    return data


def _ping(settings: RedisSettings) -> None:
    import redis

    try:
        client = settings.client()
        try:
            client.ping()
        finally:
            client.close()
    except (redis.RedisError, OSError, ValueError) as exc:
        raise CLIError(f"cannot reach Redis at {settings.describe()}: {_one_line(exc)}") from None


# -- pullstats proxy ----------------------------------------------------------------


def _run_proxy(args: argparse.Namespace) -> int:
    from pullstats_middleware.proxy import build_proxy, check_upstream

    try:
        upstream = check_upstream(args.upstream)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    config = load_config(args.config, redis_url=args.redis_url)
    if config.enabled and config.redis is not None:
        _ping(config.redis)  # fail now, not at the first pull
    sock = _listen(args.host, args.port)
    if args.upstream_check:
        _reach(upstream, args.connect_timeout, sock)
    _logging(args.log_level)
    app = build_proxy(
        upstream, config, connect_timeout=args.connect_timeout, read_timeout=args.read_timeout
    )
    store = "off" if not config.enabled else (config.redis.describe() if config.redis else "memory")
    log.info("pullstats proxy: forwarding to %s; pull statistics: %s", upstream, store)
    _serve(app, sock, args, proxy=True)
    return 0


def _reach(upstream: str, timeout: float, sock: socket.socket) -> None:
    """One request to the upstream's `/v2/`: any HTTP answer (401 too) means it is there."""
    import ssl

    import httpx2

    try:
        httpx2.get(
            upstream + "/v2/", timeout=timeout, trust_env=False, verify=ssl.create_default_context()
        )
    except httpx2.HTTPError as exc:
        sock.close()
        why = _one_line(exc) or type(exc).__name__
        raise CLIError(
            f"cannot reach the upstream registry at {upstream}: {why} "
            "(--no-upstream-check starts anyway)"
        ) from None


# -- pullstats demo -------------------------------------------------------------------


def _run_demo(args: argparse.Namespace) -> int:
    from pullstats_middleware.asgi import PullStatsASGIMiddleware
    from pullstats_middleware.demo_registry import MemoryRegistry, starlette_app
    from pullstats_middleware.metrics import PullMetrics
    from pullstats_middleware.store import MemoryStore

    registry = MemoryRegistry()
    digest = registry.push_image("library/hello", "v1")
    index, (amd64, _) = registry.push_index(
        "library/multi", "latest", ["linux/amd64", "linux/arm64"]
    )
    # The embedded store on purpose: the demo needs nothing else running.
    config = PullStatsConfig(enabled=True, flush_interval=args.flush_interval)
    metrics = PullMetrics(config, store=MemoryStore())
    app = PullStatsASGIMiddleware(starlette_app(registry), metrics=metrics)
    sock = _listen(args.host, args.port)
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(args.host, args.host)
    base = f"http://{f'[{host}]' if ':' in host else host}:{sock.getsockname()[1]}"
    print(_demo_text(base, args.flush_interval, digest, index, amd64), flush=True)
    _logging(args.log_level)
    _serve(app, sock, args, proxy=False)
    return 0


def _demo_text(base: str, flush: float, digest: str, index: str, amd64: str) -> str:
    def get(path: str, *, head: bool = False, accept: bool = True) -> str:
        words = ["curl", "-sI" if head else "-s"]
        words += ["-H", f"Accept: {_ACCEPT}"] if accept else []
        return shlex.join([*words, base + path])

    hello, multi, stats = "/v2/library/hello/manifests", "/v2/library/multi/manifests", "/api/v1"
    return "\n".join(
        [
            f"pullstats demo: an in-memory registry with pull statistics at {base}",
            f"  library/hello:v1     {digest}",
            f"  library/multi:latest {index} (linux/amd64, linux/arm64)",
            f"  Counts live in this process's memory, written every {flush:g} s.",
            "",
            "# 1. pull by tag (docker, podman, skopeo, crane): +1 tag pull, +1 manifest pull",
            get(f"{hello}/v1"),
            "# 2. pull by digest: +1 manifest pull, the tag is not counted",
            get(f"{hello}/{digest}"),
            "# 3. containerd, Kubernetes: HEAD the tag, then GET the digest: +1 tag, +1 manifest",
            get(f"{hello}/v1", head=True),
            get(f"{hello}/{digest}"),
            "# 4. multi-arch: the index by tag, then the linux/amd64 image by digest",
            get(f"{multi}/latest"),
            get(f"{multi}/{amd64}"),
            "# 5. the statistics (library/hello:v1 now: 2 tag pulls, 3 manifest pulls)",
            get(f"{stats}/repository/library/hello/tag/v1/pull_statistics", accept=False),
            get(
                f"{stats}/repository/library/hello/manifest/{digest}/pull_statistics", accept=False
            ),
            get(f"{stats}/repository/library/multi/tag/latest/pull_statistics", accept=False),
            "",
        ]
    )


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
    import redis

    from pullstats_middleware.metrics import PullMetrics
    from pullstats_middleware.store import StoreDataError

    repository, tag, digest = parse_reference(args.reference)
    config = load_config(args.config, redis_url=args.redis_url)
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
    except (redis.RedisError, OSError) as exc:
        where = config.redis.describe()
        raise CLIError(f"cannot read Redis at {where}: {_one_line(exc)}") from None
    finally:
        metrics.close(timeout=1)
    print(json.dumps(payload, indent=2) if args.json else _table(repository, payload))
    return 0


def _table(repository: str, payload: Mapping[str, Any]) -> str:
    labels = {
        "tag_name": "tag",
        "tag_pull_count": "tag pulls",
        "last_tag_pull_date": "last tag pull",
        "current_manifest_digest": "current manifest",
        "manifest_digest": "manifest",
        "manifest_pull_count": "manifest pulls",
        "last_manifest_pull_date": "last manifest pull",
    }
    rows = [("repository", repository)]
    for key, value in payload.items():
        shown = value if value is not None else ("never" if "date" in key else "-")
        rows.append((labels.get(key, key), str(shown)))
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)


# -- serving ------------------------------------------------------------------------------


def _listen(host: str, port: int) -> socket.socket:
    """Bind here, so a port in use is our one-line error rather than uvicorn's exit."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto
    # says TCP, and without it every keep-alive response waits ~40 ms (Nagle).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise CLIError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def _logging(level: str) -> None:
    from uvicorn.logging import DefaultFormatter

    handler = logging.StreamHandler()
    handler.setFormatter(DefaultFormatter("%(levelprefix)s %(message)s"))  # as uvicorn's lines
    logging.basicConfig(level=level.upper(), handlers=[handler])
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # uvicorn's access log says it all


def _serve(app: ASGIApp, sock: socket.socket, args: argparse.Namespace, *, proxy: bool) -> None:
    import uvicorn

    config = uvicorn.Config(
        app,
        host=args.host,
        port=sock.getsockname()[1],
        lifespan="on",
        log_level=args.log_level,
        # The upstream's Date and Server pass through; X-Forwarded-For is appended
        # with the real peer rather than consumed by uvicorn.
        proxy_headers=not proxy,
        server_header=not proxy,
        date_header=not proxy,
        ws="none",
    )
    uvicorn.Server(config).run(sockets=[sock])


# -- arguments ------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"pullstats: error: {message} (see '{self.prog} --help')\n")


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"invalid port {text!r} (0-65535)")
    return int(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"invalid number of seconds {text!r}")
    return value


def _keys_epilog(intro: str) -> str:
    lines = [_wrap(intro), "", "configuration keys (in the --config YAML file or the environment):"]
    for f in fields(PullStatsConfig):
        default = "" if f.default in (MISSING, None, "", (), False) else f" [{f.default}]"
        lines.append(f"  {f.metadata['key']}")
        lines.append(_wrap(_MEANING[f.name] + default, indent=6))
        if f.name == "redis":
            lines += ["  USER_EVENTS_REDIS", _wrap("used when PULL_METRICS_REDIS is not set", 6)]
    lines += ["", _wrap("precedence: YAML file < environment < flags. exit status: 0 ok, 2 error.")]
    return "\n".join(lines)


def _wrap(text: str, indent: int = 0) -> str:
    return textwrap.fill(text, 79, initial_indent=" " * indent, subsequent_indent=" " * indent)


def _parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter  # the epilogs are laid out by hand
    parser = _Parser(
        prog="pullstats",
        description="Image pull statistics for any container registry.",
        epilog=_EXAMPLES,
        formatter_class=raw,
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    proxy = commands.add_parser(
        "proxy",
        help="reverse proxy in front of any registry, counting pulls",
        description=_wrap(
            "Forward every request to an upstream registry (CNCF distribution, Harbor, Zot, "
            "Quay, ...) unchanged, streaming bodies both ways, and count manifest pulls on the "
            "way. The statistics are served at "
            "/api/v1/repository/REPO/tag/TAG/pull_statistics and "
            "/api/v1/repository/REPO/manifest/DIGEST/pull_statistics, authorized by asking "
            "the registry (through the proxy) with the caller's credentials."
        ),
        epilog=_keys_epilog(
            "The proxy speaks plain HTTP; put TLS in front of it. It adds X-Forwarded-For "
            "(appending the peer), X-Forwarded-Proto and X-Forwarded-Host, and rewrites a "
            "Location naming the upstream to its own address. With several proxy processes "
            "or for `pullstats stats`, configure Redis: the memory store is per process. "
            "Start-up fails (exit 2) if the configured Redis does not answer PING."
        ),
        formatter_class=raw,
    )
    proxy.add_argument(
        "--upstream", required=True, metavar="URL", help="the registry, e.g. http://registry:5000"
    )
    _listen_flags(proxy, 8080)
    _store_flags(proxy)
    proxy.add_argument(
        "--connect-timeout",
        type=_seconds,
        default=5.0,
        metavar="S",
        help="seconds to connect to the upstream before answering 504 (default 5)",
    )
    proxy.add_argument(
        "--read-timeout",
        type=_seconds,
        default=60.0,
        metavar="S",
        help="seconds of upstream silence before answering 504 (default 60)",
    )
    proxy.add_argument(
        "--no-upstream-check",
        dest="upstream_check",
        action="store_false",
        help="start even if the upstream does not answer yet (requests get 502 until it does); "
        "by default one GET /v2/ must get an HTTP answer first",
    )
    proxy.set_defaults(run=_run_proxy)

    demo = commands.add_parser(
        "demo",
        help="an in-memory registry with pull statistics, to try it out",
        description=_wrap(
            "Serve a small in-memory registry (library/hello:v1 and a multi-arch "
            "library/multi:latest) with pull statistics on, counting in this process's memory "
            "(no Redis, no configuration read), and print curl commands that pull by tag, by "
            "digest and the containerd way, then read the statistics. Stop it with Ctrl-C."
        ),
        formatter_class=raw,
    )
    _listen_flags(demo, 8080)
    demo.add_argument(
        "--flush-interval",
        type=_seconds,
        default=0.5,
        metavar="S",
        help="seconds between writes of the counts (default 0.5)",
    )
    demo.set_defaults(run=_run_demo)

    stats = commands.add_parser(
        "stats",
        help="print the pull statistics of a tag or a manifest, read from Redis",
        description=_wrap(
            "Read the pull statistics of REPO:TAG (a bare REPO means REPO:latest) or "
            "REPO@DIGEST straight from Redis, without asking the registry. For a tag, the "
            "manifest shown is the one its last pull served."
        ),
        epilog=_keys_epilog(
            "Only Redis can be read from here: the embedded memory store lives inside each "
            "serving process."
        ),
        formatter_class=raw,
    )
    stats.add_argument(
        "reference",
        metavar="REPO:TAG|REPO@DIGEST",
        help="e.g. library/hello:v1 or library/hello@sha256:...",
    )
    _store_flags(stats)
    stats.add_argument("--json", action="store_true", help="print JSON, as the HTTP routes do")
    stats.set_defaults(run=_run_stats)
    return parser


_EXAMPLES = """\
examples:
  pullstats demo
  pullstats proxy --upstream http://localhost:5000 --redis-url redis://localhost:6379/0
  pullstats stats library/hello:v1 --redis-url redis://localhost:6379/0 --json

Run 'pullstats COMMAND --help' for the flags and configuration keys of each command."""


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


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


if __name__ == "__main__":
    raise SystemExit(main())
