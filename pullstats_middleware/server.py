"""uvicorn for the `pullstats` commands: one process or several on one listening
socket, logging, TLS, the access log.

With `workers > 1`, uvicorn's own supervisor (`uvicorn.supervisors.Multiprocess`)
spawns the processes, hands each the socket bound here, replaces one that dies,
restarts them one by one on SIGHUP and stops them on SIGTERM or SIGINT, each
finishing its requests and flushing its recorder (the lifespan shutdown)
before the supervisor exits. Spawned processes build their own app from a
`ProxyRecipe`: a recorder's thread, locks and connections are never inherited.
"""

from __future__ import annotations

import copy
import logging
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pullstats_middleware.config import PullStatsConfig

if TYPE_CHECKING:
    from starlette.types import ASGIApp


@dataclass(frozen=True)
class ProxyRecipe:
    """What each serving process builds its own proxy from; pickled to spawned workers."""

    upstream: str
    config: PullStatsConfig
    connect_timeout: float
    read_timeout: float

    def __call__(self) -> ASGIApp:
        from pullstats_middleware.proxy import build_proxy

        return build_proxy(
            self.upstream,
            self.config,
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
        )


class QuietProbes(logging.Filter):
    """Clients that try HTTPS first on a plain-HTTP registry make uvicorn warn once per
    command; not the operator's problem: shown at debug level only."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage() == "Invalid HTTP request received.":
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


def log_config(level: str) -> dict[str, Any]:
    """uvicorn's logging, plus ours on its stderr handler; applied by each process."""
    from uvicorn.config import LOGGING_CONFIG

    config: dict[str, Any] = copy.deepcopy(LOGGING_CONFIG)
    config["filters"] = {"quiet_probes": {"()": f"{__name__}.QuietProbes"}}
    config["loggers"]["uvicorn.error"]["filters"] = ["quiet_probes"]
    config["root"] = {"handlers": ["default"], "level": level.upper()}
    return config


def setup_logging(level: str) -> None:
    """Our lines as uvicorn's, until it starts; a program that set up logging keeps its own."""
    import logging.config

    if not logging.getLogger().handlers:  # as logging.basicConfig decides
        logging.config.dictConfig(log_config(level))


def serve(
    app: ASGIApp | ProxyRecipe,
    sock: socket.socket,
    log_level: str,
    *,
    proxy: bool,
    tls: tuple[str, str] | None = None,
    workers: int = 1,
    access_log: bool = False,
) -> None:
    """Serve until SIGTERM or SIGINT; a recipe is built in each serving process."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(
        app,
        factory=isinstance(app, ProxyRecipe),
        host=host,
        port=port,
        workers=workers,
        lifespan="on",
        log_config=log_config(log_level),
        log_level=log_level,
        # One line per request costs about a sixth of the proxy's CPU: off unless asked.
        access_log=access_log,
        # The client address is the peer's: X-Forwarded-For is believed only from
        # PULL_METRICS_TRUSTED_PROXIES, by the middleware (uvicorn's default would let
        # a client choose its identity). The proxy appends the peer to the header.
        # The upstream's Date and Server pass through the proxy.
        proxy_headers=False,
        server_header=not proxy,
        date_header=not proxy,
        ws="none",
        # A worker spawned on a busy machine may need more than uvicorn's 5 s to import
        # and start; on SIGHUP, a replacement not ready in time aborts the reload.
        timeout_worker_healthcheck=30,
        ssl_certfile=tls[0] if tls else None,
        ssl_keyfile=tls[1] if tls else None,
    )
    if workers == 1:
        uvicorn.Server(config).run(sockets=[sock])
        return
    sock.listen(config.backlog)  # connections queue while the workers start
    sock.set_inheritable(True)
    Multiprocess(config, sockets=[sock]).run()
