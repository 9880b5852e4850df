"""What a well-behaved HTTP intermediary changes in the headers it forwards, and
the upstream's address it checks: hop-by-hop headers, Host, X-Forwarded-*, and
a Location naming the upstream (RFC 9110 §7.6).

The scheme and host the client used are this hop's own, unless the peer is a
trusted proxy (PULL_METRICS_TRUSTED_PROXIES) that said which in X-Forwarded-Proto
and X-Forwarded-Host: behind a balancer that ends TLS, the registry then names
`https` in its upload URLs, and so does every Location rewritten here."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple
from urllib.parse import SplitResult, urlsplit, urlunsplit

from pullstats_middleware.identity import trusted_peer

if TYPE_CHECKING:
    from starlette.types import Scope

    from pullstats_middleware.config import IPNetwork

Headers = list[tuple[bytes, bytes]]
Origin = tuple[str, str, int | None]


class Public(NamedTuple):
    """Where the client reached us: the scheme and the Host it used."""

    scheme: bytes
    host: bytes


HOP_BY_HOP = frozenset(
    b"connection keep-alive proxy-authenticate proxy-authorization te trailer "
    b"transfer-encoding upgrade".split()
)
# Set by this hop itself. `Expect: 100-continue` was already answered to the
# client by the server in front of us, and httpx cannot wait for a second one.
_REPLACED = frozenset(
    (b"host", b"expect", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host")
)
_DROPPED = HOP_BY_HOP | _REPLACED
_DEFAULT_PORTS = {"http": 80, "https": 443}
_SCHEMES = frozenset((b"http", b"https"))


def check_upstream(url: str) -> str:
    """Return the upstream's origin `scheme://host[:port]`; ValueError saying what is wrong."""
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 -- raises ValueError on a bad port
    except ValueError as exc:
        raise ValueError(f"invalid upstream URL {url!r}: {exc}") from None
    if parts.scheme not in _DEFAULT_PORTS:
        raise ValueError(f"upstream URL must start with http:// or https://, got {url!r}")
    if not parts.hostname:
        raise ValueError(f"upstream URL {url!r} has no host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("upstream URL must not carry credentials; clients' own pass through")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"upstream URL must be an origin like http://registry:5000, got {url!r}")
    return f"{parts.scheme}://{parts.netloc}"


def host_header(upstream: str) -> bytes:
    """The Host the upstream expects: its name IDNA-encoded, an IPv6 address in
    brackets, the port unless it is the scheme's default."""
    parts = urlsplit(upstream)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host.encode("idna").decode("ascii")
    if parts.port is not None and parts.port != _DEFAULT_PORTS[parts.scheme]:
        host += f":{parts.port}"
    return host.encode("ascii")


def origin(parts: SplitResult) -> Origin:
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or _DEFAULT_PORTS.get(scheme)


def request_headers(
    scope: Scope, upstream_host: bytes, trusted: Sequence[IPNetwork] = ()
) -> tuple[Headers, bool, Public]:
    """The headers to send upstream, whether the request has a body, and where the
    client reached us (its scheme and host: from a `trusted` peer's X-Forwarded-Proto
    and X-Forwarded-Host, else this hop's own)."""
    kept: Headers = []
    connection: list[bytes] = []
    forwarded: list[bytes] = []
    host = proto = forwarded_host = b""
    has_body = False
    for name, value in scope.get("headers", ()):
        name = name.lower()  # one pass, once per name: this runs for every request
        if name == b"host":
            host = value
        elif name == b"x-forwarded-for":
            forwarded.append(value)
        elif name == b"x-forwarded-proto":
            proto = value
        elif name == b"x-forwarded-host":
            forwarded_host = value
        elif name == b"connection":
            connection.append(value)
        elif name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
            has_body = True
        if name not in _DROPPED:
            kept.append((name, value))
    if connection:
        tokens = _tokens(connection)
        kept = [(name, value) for name, value in kept if name not in tokens]
    peer = scope.get("client")
    if peer:
        forwarded.append(peer[0].encode("latin-1"))
    public = Public(scope.get("scheme", "http").encode("latin-1"), host)
    if (proto or forwarded_host) and trusted and peer and trusted_peer(peer[0], trusted):
        public = _reported(public, proto, forwarded_host)
    out: Headers = [(b"host", upstream_host), *kept]
    if forwarded:
        out.append((b"x-forwarded-for", b", ".join(forwarded)))
    out.append((b"x-forwarded-proto", public.scheme))
    if public.host:
        out.append((b"x-forwarded-host", public.host))
    return out, has_body, public


def _reported(own: Public, proto: bytes, host: bytes) -> Public:
    """What a trusted peer reported, where it makes sense: the last of a list (the
    value the peer itself saw or set), a scheme of http or https, a host without
    spaces or slashes."""
    scheme = proto.rpartition(b",")[2].strip().lower()
    name = host.rpartition(b",")[2].strip()
    return Public(
        scheme if scheme in _SCHEMES else own.scheme,
        name if name and not any(c in name for c in b" /\\@") else own.host,
    )


def response_headers(
    raw: Sequence[tuple[bytes, bytes]], scope: Scope, upstream: Origin, public: Public
) -> Headers:
    out: Headers = []
    connection: list[bytes] = []
    for name, value in raw:
        name = name.lower()
        if name in HOP_BY_HOP:
            if name == b"connection":
                connection.append(value)
            continue
        if name == b"location":
            value = _rewrite_location(value, scope, upstream, public)
        out.append((name, value))
    if connection:
        tokens = _tokens(connection)
        out = [(name, value) for name, value in out if name not in tokens]
    return out


def _rewrite_location(value: bytes, scope: Scope, upstream: Origin, public: Public) -> bytes:
    """An absolute URL naming the upstream would send the client around us."""
    try:
        parts = urlsplit(value.decode("latin-1"))
        if not parts.netloc or origin(parts) != upstream:
            return value  # relative, or another host (a blob storage redirect)
    except ValueError:
        return value
    host = public.host.decode("latin-1")
    if not host and scope.get("server"):
        address, port = scope["server"]
        host = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
    if not host:
        return value
    scheme = public.scheme.decode("latin-1")
    return urlunsplit((scheme, host, parts.path, parts.query, parts.fragment)).encode("latin-1")


def _tokens(connection: list[bytes]) -> frozenset[bytes]:
    """Headers named in `Connection` are hop-by-hop too (RFC 9110 §7.6.1)."""
    return frozenset(
        token.strip().lower()
        for value in connection
        for token in value.split(b",")
        if token.strip()
    )
