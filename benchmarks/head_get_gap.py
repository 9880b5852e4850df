"""How long real clients take between resolving a tag (HEAD, 200) and fetching the
digest it named (GET): what PULL_METRICS_RESOLUTION_WINDOW must cover.

    python benchmarks/head_get_gap.py [--pulls 10]   (as root: it starts containerd, dockerd)

Each client pulls through `pullstats proxy` (in process, behind a tap that times
every manifest request) from a CNCF distribution registry, three ways: anonymous;
behind basic auth (HEAD 401, then again with credentials); and behind a bearer-token
gate as Kubernetes nodes meet it (HEAD 401, GET the token from the realm, HEAD
again, then GET). The gap is from the end of the answered HEAD to the start of
the GET. Prints one table; asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx2
from figures import print_table  # type: ignore[import-not-found]

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pullstats_middleware import PullStatsConfig
from pullstats_middleware.proxy import build_proxy
from tests.e2e.clients import Dockerd
from tests.e2e.oci_image import build_tiny_image
from tests.e2e.services import Containerd, DockerRegistry, skopeo_push, temp_dir
from tests.test_proxy import Served

USER, PASSWORD = "alice", "s3cret-pw"
TOKEN = "token-for-the-gap-benchmark"


class Tap:
    """ASGI middleware: when each manifest HEAD answered 200 ended, when the GET answered
    200 after it began (after its own 401 and token round trip, where there is one)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.heads: list[float] = []
        self.gaps: list[float] = []
        self.refused = 0  # manifest requests answered 401: the auth flows really ran

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or "/manifests/" not in scope["path"]:
            await self.app(scope, receive, send)
            return
        began, status = time.monotonic(), {}

        async def timed(message: Any) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        await self.app(scope, receive, timed)
        self.refused += status.get("code") == 401
        if scope["method"] == "GET" and status.get("code") == 200 and self.heads:
            self.gaps.append(began - self.heads.pop())  # to the GET that was answered
        if scope["method"] == "HEAD" and status.get("code") == 200:
            self.heads[:] = [time.monotonic()]


def token_gate(upstream: str) -> Callable[..., Any]:
    """A registry front that wants a bearer token, handed out by its own /token realm."""
    client = httpx2.AsyncClient(base_url=upstream, trust_env=False)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        headers = dict(scope["headers"])
        if scope["path"] == "/token":
            body = b'{"token": "%s", "access_token": "%s"}' % (TOKEN.encode(), TOKEN.encode())
            reply = [(b"content-type", b"application/json")]
            await send({"type": "http.response.start", "status": 200, "headers": reply})
            await send({"type": "http.response.body", "body": body})
            return
        if headers.get(b"authorization") != f"Bearer {TOKEN}".encode():
            host = headers.get(b"host", b"").decode()
            realm = f'Bearer realm="http://{host}/token",service="registry"'
            reply = [(b"www-authenticate", realm.encode()), (b"content-length", b"0")]
            await send({"type": "http.response.start", "status": 401, "headers": reply})
            await send({"type": "http.response.body", "body": b""})
            return
        passed = {k.decode(): v.decode() for k, v in scope["headers"] if k != b"authorization"}
        passed.pop("host", None)
        response = await client.request(scope["method"], scope["path"], headers=passed)
        out = [(k, v) for k, v in response.headers.raw if k.lower() != b"transfer-encoding"]
        await send({"type": "http.response.start", "status": response.status_code, "headers": out})
        await send({"type": "http.response.body", "body": response.content})

    return app


@contextmanager
def through_proxy(upstream: str) -> Iterator[tuple[Tap, str]]:
    tap = Tap(build_proxy(upstream, PullStatsConfig(enabled=True)))
    with Served(tap) as served:
        yield tap, f"127.0.0.1:{served.port}"


def row(name: str, tap: Tap) -> tuple[str, str, str, str, str]:
    ms = sorted(g * 1000 for g in tap.gaps)
    if not ms:
        return name, "0", str(tap.refused), "-", "-"
    return (
        name,
        str(len(ms)),
        str(tap.refused),
        f"{statistics.median(ms):.1f} ms",
        f"{ms[-1]:.1f} ms",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pulls", type=int, default=10)
    args = parser.parse_args()
    rows = []
    with (
        temp_dir() as tmp,
        DockerRegistry() as plain,
        DockerRegistry(auth=(USER, PASSWORD)) as basic,
    ):
        image = build_tiny_image(tmp / "img", "v1")
        for registry, creds in ((plain, None), (basic, f"{USER}:{PASSWORD}")):
            skopeo_push(image.oci_ref, registry, "gap/app", "v1", creds=creds)
        with Served(token_gate(plain.url)) as gate, Containerd() as ctrd:
            flows = [
                ("ctr, anonymous", plain.url, None),
                ("ctr, basic auth (401, retry)", basic.url, f"{USER}:{PASSWORD}"),
                ("ctr, bearer token (401, token, retry)", gate.url, None),
            ]
            for name, upstream, user in flows:
                with through_proxy(upstream) as (tap, host):
                    for _ in range(args.pulls):
                        ctrd.clear()
                        ctrd.fetch(f"{host}/gap/app:v1", user=user)
                rows.append(row(name, tap))
        with through_proxy(plain.url) as (tap, host), Dockerd((host,)) as dockerd:
            for _ in range(args.pulls):
                dockerd.remove_all_images()
                dockerd.docker("pull", f"{host}/gap/app:v1")
            rows.append(row("docker 20.10, anonymous", tap))
    header = ("client and flow", "pairs", "401s", "median HEAD→GET", "slowest")
    print_table(header, rows)


if __name__ == "__main__":
    main()
