"""The reverse proxy behind `pullstats proxy`: pull statistics for a registry in any language."""

from pullstats_middleware.proxy.forward import RegistryProxy, build_proxy, proxy_app
from pullstats_middleware.proxy.headers import HOP_BY_HOP, check_upstream

__all__ = ["HOP_BY_HOP", "RegistryProxy", "build_proxy", "check_upstream", "proxy_app"]
