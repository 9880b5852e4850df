"""Who counts as one puller, for unique pullers per day: address, user, user agent.

The attribution rule pairs a HEAD with its GET by the client identity, which
holds the raw `Authorization` header (`identity`). A puller is that identity with
the credentials reduced to the user they name: a registry hands out a new bearer
token for every pull, and one machine pulling hourly is one puller a day, not 24.
Hashed (`puller_key`) on the recorder's thread; no credential is ever stored.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json


def identity(address: str, authorization: str, user_agent: str) -> str:
    """The attribution rule's client identity: what pairs a HEAD with its GET."""
    return f"{address}\n{authorization}\n{user_agent}"


def username(authorization: str) -> str | None:
    """The Basic-auth user, or the `sub` of a bearer JWT, read without verification:
    good enough to classify a pull, never to authorize anything."""
    scheme, _, credentials = authorization.partition(" ")
    try:
        if scheme.lower() == "basic":
            return base64.b64decode(credentials, validate=True).decode().partition(":")[0]
        if scheme.lower() == "bearer" and credentials.count(".") == 2:
            payload = credentials.split(".")[1]
            claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            subject = claims.get("sub") if isinstance(claims, dict) else None
            return subject if isinstance(subject, str) else None
    except (binascii.Error, UnicodeDecodeError, ValueError):
        pass
    return None


def puller_key(client: str) -> str:
    """16 hex digits (64 bits, what a HyperLogLog sketch needs) naming the puller of
    the client identity `client`. An opaque token names nobody: address and agent."""
    address, _, rest = client.partition("\n")
    authorization, _, user_agent = rest.partition("\n")
    user = username(authorization) or ""
    return hashlib.blake2b(f"{address}\n{user}\n{user_agent}".encode(), digest_size=8).hexdigest()
