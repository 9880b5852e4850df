"""Real nginx running the shipped split recipe (`examples/nginx/pullstats.conf`).

The recipe is rendered exactly as a user renders it with envsubst: its three
`${PULLSTATS_…}` placeholders replaced, nothing else touched. A minimal main
configuration around it adds only what a packaged nginx.conf would hold
(workers, events, temp paths under the service's own directory, so that no
root-owned default path is needed) and an access log in the recipe's own
`pullstats_split` format, which names the upstream that answered each request.
nginx runs in the foreground on a free port; as root its workers stay root,
since `nobody` could not write into the private temp directory. Also here: the
two clients the split test needs (a request from a chosen loopback address,
a chunked blob upload).
"""

from __future__ import annotations

import http.client
import os
import re
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from tests.e2e.services import ServiceError, _RegistryEndpoint, http_status, require_binary

RECIPE = Path(__file__).resolve().parents[2] / "examples" / "nginx" / "pullstats.conf"
_BARRIER = "pullstats-barrier"
_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
PLACEHOLDERS = ("PULLSTATS_LISTEN", "PULLSTATS_REGISTRY", "PULLSTATS_PROXY")

_MAIN = """\
{user}
worker_processes {workers};
events {{ worker_connections 1024; }}
http {{
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    include {tmp}/pullstats.conf;
    access_log {access_log};
{tls}}}
"""

# The recipe's `pullstats_split` format: combined, then upstream= and request_time=.
_LINE = re.compile(
    r'^(?P<remote>\S+) - \S+ \[[^\]]*\] "(?P<method>[A-Z]+) (?P<path>\S+) [^"]*" (?P<status>\d{3}) '
    r'\d+ "[^"]*" "[^"]*" upstream=(?P<upstream>\S+(?:, \S+)*) ',
    re.MULTILINE,
)


def to_proxy(path: str) -> bool:
    """Whether the recipe sends `path` to the proxy, decided apart from its regexes."""
    path = urlsplit(path).path
    parts = path.split("/")
    if path.startswith("/v2/") and len(parts) >= 5 and parts[-2] == "manifests":
        return True  # /v2/<name, one or more components>/manifests/<reference>
    if path.startswith("/api/v1/pull_statistics/"):
        return True
    return path.startswith("/api/v1/repository/") and "/pull_statistics" in path


def chunked_upload(
    conn: http.client.HTTPConnection, repo: str, data: Iterator[bytes], digest: str
) -> str:
    """A monolithic blob upload whose body is sent chunked (an iterator): its Location."""
    conn.request("POST", f"/v2/{repo}/blobs/uploads/")
    started = conn.getresponse()
    started.read()
    assert started.status == 202, started.status
    location = started.headers["location"]
    target = urlsplit(location)
    conn.request("PUT", f"{target.path}?{target.query}&digest={digest}", body=data)
    done = conn.getresponse()
    done.read()
    assert done.status == 201, done.status
    return location


def _addresses(upstream: str) -> frozenset[str]:
    return frozenset(upstream.split(", "))


def render_recipe(listen: str, registry: str, proxy: str) -> str:
    """The shipped recipe with its placeholders replaced, as `envsubst` would."""
    text = RECIPE.read_text()
    for name, value in zip(PLACEHOLDERS, (listen, registry, proxy), strict=True):
        text = text.replace("${" + name + "}", value)
    if "${PULLSTATS_" in text:
        raise ServiceError(f"{RECIPE.name} has a placeholder this renderer does not know")
    return text


@dataclass(frozen=True)
class Served:
    """One line of nginx's access log: a request and the upstream that answered it."""

    remote: str  # the client's address, as nginx saw it
    method: str
    path: str
    status: int
    upstreams: frozenset[str]  # several when nginx retried a stale keep-alive connection


class NginxSplit(_RegistryEndpoint):
    """nginx with the split recipe, in front of `registry` and `proxy` (both host:port)."""

    name = "nginx"
    startup_timeout = 20.0

    def __init__(
        self,
        registry: str,
        proxy: str,
        *,
        workers: str = "1",
        tls: tuple[Path, Path] | None = None,
        access_log: bool = True,
    ) -> None:
        """`tls`: (certificate, key) files; nginx then listens with `ssl` and serves HTTPS.
        Without `access_log` (a benchmark's choice) `served()` and `routed()` see nothing."""
        self.binary = require_binary("nginx")
        super().__init__()
        self.registry, self.proxy, self.workers, self.tls = registry, proxy, workers, tls
        self.logging = access_log
        self.access_log = self.tmpdir / "access.log"
        self._barriers = 0

    def _command(self) -> list[str]:
        listen = f"{self.address} ssl" if self.tls else self.address
        recipe = render_recipe(listen, self.registry, self.proxy)
        (self.tmpdir / "pullstats.conf").write_text(recipe)
        main = _MAIN.format(
            user="user root;" if os.geteuid() == 0 else "",
            workers=self.workers,
            tmp=self.tmpdir,
            access_log=f"{self.access_log} pullstats_split" if self.logging else "off",
            # At http level, inherited by the recipe's server: its own lines stay comments.
            tls=f"    ssl_certificate {self.tls[0]};\n    ssl_certificate_key {self.tls[1]};\n"
            if self.tls
            else "",
        )
        (self.tmpdir / "nginx.conf").write_text(main)
        directives = f"daemon off; pid {self.tmpdir}/nginx.pid; error_log stderr warn;"
        return [
            self.binary, "-p", str(self.tmpdir), "-c", str(self.tmpdir / "nginx.conf"),
            "-e", "stderr", "-g", directives,
        ]  # fmt: skip

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.address}"

    def _get(self, path: str) -> int | None:
        """The status of a GET through nginx (a self-signed certificate accepted)."""
        if not self.tls:
            return http_status(self.url + path)
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        try:
            with urllib.request.urlopen(self.url + path, timeout=1, context=context) as answer:
                return int(answer.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except OSError:
            return None

    def request_from(self, source: str, method: str, path: str, **headers: str) -> int:
        """One plain-HTTP request through nginx from the loopback address `source` (all
        of 127.0.0.0/8 is local on Linux), accepting OCI manifests: its status."""
        conn = http.client.HTTPConnection(
            self.host, self.port, timeout=30, source_address=(source, 0)
        )
        try:
            conn.request(method, path, headers={"Accept": _MANIFEST, **headers})
            answer = conn.getresponse()
            answer.read()
            return answer.status
        finally:
            conn.close()

    def _ready(self) -> bool:
        # /v2/ goes to the registry: an answer means nginx is up and routing.
        return self._get("/v2/") in (200, 401)

    def _logged(self) -> list[Served]:
        try:
            text = self.access_log.read_text()
        except FileNotFoundError:
            return []
        return [
            Served(m["remote"], m["method"], m["path"], int(m["status"]), _addresses(m["upstream"]))
            for m in _LINE.finditer(text)
        ]

    def _through_barrier(self) -> list[Served]:
        """The log up to a request sent now. A client may see its answer a moment before
        nginx writes the line; one worker logs each request right after its last byte,
        so once a request sent now is logged, every earlier answered one is too."""
        if not self.logging:
            return []
        self._barriers += 1
        path = f"/v2/?{_BARRIER}={self._barriers}"
        self._get(path)
        deadline = time.monotonic() + 10
        while True:
            logged = self._logged()
            for n, served in enumerate(logged):
                if served.path == path:
                    return logged[: n + 1]
            if time.monotonic() > deadline:
                raise ServiceError(f"nginx never logged {path}")
            time.sleep(0.01)

    def mark(self) -> int:
        """Where the requests from now on start in `served()`."""
        return len(self._through_barrier())

    def served(self, since: int = 0) -> list[Served]:
        """Every request answered so far, from `since` (a `mark()`) on."""
        return [s for s in self._through_barrier()[since:] if _BARRIER not in s.path]

    def routed(self, since: int = 0) -> list[Served]:
        """`served(since)`, each request checked to have gone where the recipe sends it."""
        served = self.served(since)
        for s in served:
            assert s.upstreams == {self.proxy if to_proxy(s.path) else self.registry}, s
        return served

    def start(self) -> NginxSplit:
        super().start()
        return self

    def __enter__(self) -> NginxSplit:
        return self.start()
