"""`PULL_METRICS_EXCLUDE`: rules naming the clients whose pulls are not users' pulls
(vulnerability scanners, replication jobs, CI robots, signature fetches).

A rule matches when every field it names matches; a pull is excluded when any
rule matches. `user_agent` is a regular expression searched in the User-Agent
header, `username` the Basic-auth user or the `sub` of a bearer JWT (read
without verification: classification only, never authorization), `network`
a CIDR the client address (after trusted proxies) lies in.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pullstats_middleware.config.values import ConfigError, IPNetwork

_FIELDS = ("user_agent", "username", "network")


@dataclass(frozen=True, slots=True)
class ExcludeRule:
    user_agent: re.Pattern[str] | None = None
    username: str | None = None
    network: IPNetwork | None = None

    def matches(self, address: str, username: str | None, user_agent: str) -> bool:
        if self.user_agent is not None and self.user_agent.search(user_agent) is None:
            return False
        if self.username is not None and username != self.username:
            return False
        if self.network is not None:
            try:
                return ipaddress.ip_address(address) in self.network
            except ValueError:
                return False
        return True


def exclude_rules(key: str, value: Any) -> tuple[ExcludeRule, ...]:
    """A list of rules (or its JSON, as the environment gives it)."""
    if all(isinstance(rule, ExcludeRule) for rule in value or ()):
        return tuple(value or ())
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else []
        except ValueError as exc:
            raise ConfigError(f"{key}: not valid JSON ({exc})") from None
    if isinstance(value, Mapping) or not isinstance(value, (list, tuple)):
        raise ConfigError(
            f"{key} must be a list of rules like "
            f'[{{"user_agent": "^Trivy/"}}, {{"network": "10.8.0.0/16"}}], got {value!r}'
        )
    return tuple(_rule(f"{key}[{n}]", rule) for n, rule in enumerate(value))


def _rule(key: str, value: Any) -> ExcludeRule:
    if not isinstance(value, Mapping) or not value:
        raise ConfigError(f"{key} must be a mapping naming one or more of {', '.join(_FIELDS)}")
    unknown = sorted(set(value) - set(_FIELDS))
    if unknown:
        raise ConfigError(f"{key} has unknown field(s) {', '.join(unknown)}")
    for name, field in value.items():
        if not isinstance(field, str) or not field:
            raise ConfigError(f"{key}.{name} must be a non-empty string, got {field!r}")
    try:
        agent = re.compile(value["user_agent"]) if "user_agent" in value else None
    except re.error as exc:
        raise ConfigError(f"{key}.user_agent is not a regular expression: {exc}") from None
    try:
        network = (
            ipaddress.ip_network(value["network"], strict=False) if "network" in value else None
        )
    except ValueError as exc:
        raise ConfigError(f"{key}.network is not an IP network: {exc}") from None
    return ExcludeRule(agent, value.get("username"), network)
