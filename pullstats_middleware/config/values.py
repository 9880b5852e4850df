"""Parsers of single configuration values, and of the YAML file that holds them: each
returns the typed value or raises `ConfigError` naming the key (or the file), so
every bad value is caught at start-up."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable
from typing import Any

from pullstats_middleware.matchers import validate_repository

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigError(ValueError):
    """An invalid configuration value; the message names the key."""


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def boolean(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ConfigError(f"{key} must be true or false, got {value!r}")


def integer(key: str, value: Any, *, minimum: int) -> int:
    try:
        number = int(value) if not isinstance(value, (bool, float)) else None
    except (TypeError, ValueError):
        number = None
    if number is None or number < minimum:
        raise ConfigError(f"{key} must be an integer >= {minimum}, got {value!r}")
    return number


def seconds(key: str, value: Any, *, zero: bool = False) -> float:
    """A finite number of seconds, > 0 (or >= 0 with `zero`)."""
    try:
        number = float(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError):
        number = None
    if number is None or not (number >= 0 if zero else number > 0) or number == float("inf"):
        kind = "a number of seconds >= 0" if zero else "a positive number of seconds"
        raise ConfigError(f"{key} must be {kind}, got {value!r}")
    return number


def auth_mode(key: str, value: Any) -> str | Callable[..., Any]:
    if callable(value):
        return value  # type: ignore[no-any-return]
    if value in ("registry", "none"):
        return str(value)
    if isinstance(value, str) and ":" in value:
        module, _, attr = value.partition(":")
        try:
            target = getattr(__import__(module, fromlist=[attr]), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"{key}: cannot load {value!r} ({exc})") from None
        if callable(target):
            return target  # type: ignore[no-any-return]
    raise ConfigError(
        f"{key} must be 'registry', 'none', a callable or 'module:callable', got {value!r}"
    )


def database_url(key: str, value: Any) -> str:
    """An SQLAlchemy URL of a database the durable store supports."""
    if not isinstance(value, str) or "://" not in value:
        raise ConfigError(
            f"{key} must be an SQLAlchemy URL like sqlite:///pullstats.db, got {value!r}"
        )
    backend = value.split("://", 1)[0].split("+", 1)[0]
    if backend not in ("sqlite", "postgresql"):
        raise ConfigError(f"{key} must name sqlite or postgresql, got {backend!r}")
    return value


def host_ports(key: str, value: Any) -> tuple[tuple[str, int], ...]:
    """`["host:port", ...]`, `[[host, port], ...]` or `"host:port,host:port"`."""
    items = value.split(",") if isinstance(value, str) else value
    out = []
    try:
        for item in items:
            host, port = item.rsplit(":", 1) if isinstance(item, str) else item
            out.append((str(host).strip(), integer(key, port, minimum=1)))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key} must be a list of host:port, got {value!r} ({exc})") from None
    if not out or not all(host for host, _ in out):
        raise ConfigError(f"{key} must name at least one host:port, got {value!r}")
    return tuple(out)


def networks(key: str, value: Any) -> tuple[IPNetwork, ...]:
    items = value.split(",") if isinstance(value, str) else value
    try:
        return tuple(
            item if not isinstance(item, str) else ipaddress.ip_network(item.strip(), strict=False)
            for item in items
            if not (isinstance(item, str) and not item.strip())
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"{key} must be a list of IP addresses or networks, got {value!r} ({exc})"
        ) from None


def label_values(key: str, value: Any) -> tuple[str, ...] | int:
    """Repository names (a list, or a comma-separated string), or how many label values
    at most (an integer, 0: none)."""
    if isinstance(value, str) and value.strip().removeprefix("-").isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return integer(key, value, minimum=0)
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(i, str) for i in items):
        raise ConfigError(
            f"{key} must be a list of repository names or a number of them, got {value!r}"
        )
    names = tuple(dict.fromkeys(item.strip() for item in items if item.strip()))
    for name in names:
        problem = validate_repository(name)
        if problem:
            raise ConfigError(f"{key}: {problem}")
    return names


def read_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The mapping a YAML file holds; every way it can be unreadable is a ConfigError."""
    try:
        import yaml
    except ImportError:
        raise ConfigError(
            "reading a config file needs PyYAML: pip install 'pullstats-middleware[proxy]'"
        ) from None
    try:
        with open(path, encoding="utf-8") as stream:
            data = yaml.safe_load(stream)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start})"
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {' '.join(str(exc).split())}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys, not {type(data).__name__}")
    return data
