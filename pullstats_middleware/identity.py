"""Who is pulling: the client identity that pairs a HEAD with its GET.

See docs/design.md, "Attribution".

Remote address (after trusted proxies), credentials and user agent. Computed
on the request side, only for the exchanges attribution needs.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from pullstats_middleware.config import IPNetwork


def client_address(peer: str, forwarded_for: str | None, trusted: Sequence[IPNetwork]) -> str:
    """The address of the client, walking `X-Forwarded-For` back through trusted proxies.

    Each trusted hop appended the address it saw; the first untrusted one from
    the right is the client. With no trusted proxies the header is ignored, so
    a client cannot choose its own identity.
    """
    if not trusted or not forwarded_for or not _trusted(peer, trusted):
        return peer
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, trusted):
            return hop
    return hops[0] if hops else peer


def _trusted(address: str, trusted: Sequence[IPNetwork]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)


def client_identity(address: str, authorization: str | None, user_agent: str | None) -> str:
    """Who is asking, held in process memory only: the Redis store writes a hash of it."""
    return f"{address}\n{authorization or ''}\n{user_agent or ''}"
