"""Who is pulling: the client identity that pairs a HEAD with its GET.

See docs/design.md, "Attribution".

Remote address (after trusted proxies), credentials and user agent. Computed
on the request side, only for manifest pulls (attribution pairs them, unique
pullers count them; see puller.py) and for exclusion rules.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import NamedTuple

from pullstats_middleware.config import ExcludeRule, IPNetwork
from pullstats_middleware.puller import identity, username


class Client(NamedTuple):
    """Who is asking: held in process memory only (the Redis store writes a hash)."""

    address: str  # after trusted proxies
    authorization: str
    user_agent: str

    @property
    def identity(self) -> str:
        """What pairs a HEAD with its GET: address, credentials and user agent."""
        return identity(self.address, self.authorization, self.user_agent)

    @classmethod
    def of(cls, identity: str) -> Client:
        """The client whose `identity` this is: its parts never hold a newline (no
        HTTP header value can), so the identity splits back into them."""
        address, _, rest = identity.partition("\n")
        authorization, _, user_agent = rest.partition("\n")
        return cls(address, authorization, user_agent)


def client_address(peer: str, forwarded_for: str | None, trusted: Sequence[IPNetwork]) -> str:
    """The address of the client, walking `X-Forwarded-For` back through trusted proxies.

    Each trusted hop appended the address it saw; the first untrusted one from
    the right is the client. With no trusted proxies the header is ignored, so
    a client cannot choose its own identity.
    """
    if not trusted or not forwarded_for or not trusted_peer(peer, trusted):
        return peer
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not trusted_peer(hop, trusted):
            return hop
    return hops[0] if hops else peer


def trusted_peer(address: str, trusted: Sequence[IPNetwork]) -> bool:
    """True when `address` is in one of the `trusted` networks (PULL_METRICS_TRUSTED_PROXIES)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)


def excluded(rules: Sequence[ExcludeRule], client: Client) -> bool:
    """True when any `PULL_METRICS_EXCLUDE` rule matches this client."""
    user = username(client.authorization) if any(r.username for r in rules) else None
    return any(rule.matches(client.address, user, client.user_agent) for rule in rules)
