"""Start-up checks and serving for the `pullstats` commands.

Every way start-up can fail (a port in use, a Redis or an upstream that does
not answer) raises `StartupError` with one line saying what and where; the
command line turns it into `pullstats: error: ...` and exit status 2.
"""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING

from pullstats_middleware.config import PullStatsConfig, RedisSettings

if TYPE_CHECKING:
    from starlette.types import ASGIApp


class StartupError(Exception):
    """Reported as one line on stderr, exit status 2."""


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def ping_redis(settings: RedisSettings) -> None:
    """Fail now, not at the first pull."""
    import redis

    try:
        client = settings.client()
        try:
            client.ping()
        finally:
            client.close()
    except (redis.RedisError, redis.exceptions.RedisClusterException, OSError, ValueError) as exc:
        raise StartupError(
            f"cannot reach Redis at {settings.describe()}: {one_line(exc)}"
        ) from None


def reach_upstream(upstream: str, timeout: float) -> None:
    """One request to the upstream's `/v2/`: any HTTP answer (401 too) means it is there."""
    import http.client
    import ssl
    from urllib.parse import urlsplit

    # http.client: no redirects followed, no HTTP(S)_PROXY detour, the system trust store.
    parts = urlsplit(upstream)
    conn = (
        http.client.HTTPSConnection(
            parts.netloc, timeout=timeout, context=ssl.create_default_context()
        )
        if parts.scheme == "https"
        else http.client.HTTPConnection(parts.netloc, timeout=timeout)
    )
    try:
        conn.request("GET", "/v2/")
        conn.getresponse().close()
    except (OSError, http.client.HTTPException) as exc:
        raise StartupError(
            f"cannot reach the upstream registry at {upstream}: {one_line(exc)} "
            "(--no-upstream-check starts anyway)"
        ) from None
    finally:
        conn.close()


def describe_database(url: str) -> str:
    """The database URL without its password."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def upgrade_database(url: str) -> None:
    from sqlalchemy.exc import SQLAlchemyError

    from pullstats_middleware.durable import Database

    database = Database(url)
    try:
        database.upgrade()
    except SQLAlchemyError as exc:
        where = describe_database(url)
        raise StartupError(f"cannot upgrade the database at {where}: {one_line(exc)}") from None
    finally:
        database.close()


def check_database(url: str) -> None:
    """The database answers and its schema is this version's: fail now, not at the first flush."""
    from sqlalchemy.exc import SQLAlchemyError

    from pullstats_middleware.durable import Database

    database = Database(url)
    try:
        current, head = database.revisions()
    except SQLAlchemyError as exc:
        why = one_line(getattr(exc, "orig", None) or exc)
        raise StartupError(
            f"cannot reach the database at {describe_database(url)}: {why}"
        ) from None
    finally:
        database.close()
    if current != head:
        raise StartupError(
            f"the database at {describe_database(url)} is at schema {current or 'none'}, "
            f"this version needs {head}: run `pullstats db upgrade`"
        )


def run_flusher(config: PullStatsConfig, *, once: bool, interval: float) -> int:
    """`pullstats flush`: one cycle, or cycles until interrupted; records moved."""
    import time

    from pullstats_middleware.durable import Database, Flusher
    from pullstats_middleware.durable.flusher import freeze_startup_heap
    from pullstats_middleware.store import redis_store

    assert config.redis is not None and config.database is not None
    ping_redis(config.redis)
    check_database(config.database)
    store = redis_store(config.redis, prefix=config.key_prefix, durable=True)
    flusher = Flusher(store, Database(config.database), history_days=config.history_days)
    freeze_startup_heap()
    if once:
        try:
            return flusher.flush()
        except Exception as exc:  # Redis or the database went away mid-cycle
            raise StartupError(f"the flush failed: {one_line(exc)}") from None
    moved = 0
    while True:
        try:
            moved += flusher.flush()
        except Exception as exc:  # Redis or the database away: the next cycle settles
            logging.getLogger("pullstats_middleware").warning(
                "pull statistics: flush failed (%s: %s)", type(exc).__name__, exc
            )
        time.sleep(interval)


def demo_app(
    flush_interval: float, database: str | None = None
) -> tuple[ASGIApp, tuple[str, str, str]]:
    """The demo registry, wrapped, counting in memory (and into `database`, when given:
    created if new); and the digests of what it holds: library/hello:v1, the
    library/multi:latest index and its linux/amd64 image."""
    from pullstats_middleware.asgi import PullStatsASGIMiddleware
    from pullstats_middleware.demo_registry import MemoryRegistry, starlette_app
    from pullstats_middleware.metrics import PullMetrics
    from pullstats_middleware.store import MemoryStore

    registry = MemoryRegistry()
    digest = registry.push_image("library/hello", "v1")
    index, (amd64, _) = registry.push_index(
        "library/multi", "latest", ["linux/amd64", "linux/arm64"]
    )
    # The embedded stores on purpose: the demo needs nothing else running.
    if database is not None:
        upgrade_database(database)
    config = PullStatsConfig(
        enabled=True,
        flush_interval=flush_interval,
        database=database,
        database_flush_interval=max(2.0, flush_interval),
    )
    metrics = PullMetrics(config, store=MemoryStore())
    return PullStatsASGIMiddleware(starlette_app(registry), metrics=metrics), (digest, index, amd64)


def listen(host: str, port: int) -> socket.socket:
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
        raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def tls_files(cert: str | None, key: str | None) -> tuple[str, str] | None:
    """The certificate and key to serve HTTPS with, both readable PEM; None: plain HTTP."""
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise StartupError("--tls-cert and --tls-key go together")
    import ssl

    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        why = one_line(exc)
        raise StartupError(f"cannot use TLS certificate {cert} with key {key}: {why}") from None
    return cert, key
