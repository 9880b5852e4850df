"""The statistics routes: one table (`ROUTES`), one router, plain request/response values."""

from pullstats_middleware.routes.http import (
    Probe,
    ProbeAnswer,
    Request,
    Response,
    RouteError,
    error,
    json_response,
)
from pullstats_middleware.routes.router import Route, RouteCall, RouteContext, Router
from pullstats_middleware.routes.statistics import MANIFEST_ACCEPT, ROUTES, manifest_head, tags_list

__all__ = [
    "MANIFEST_ACCEPT",
    "ROUTES",
    "Probe",
    "ProbeAnswer",
    "Request",
    "Response",
    "Route",
    "RouteCall",
    "RouteContext",
    "RouteError",
    "Router",
    "error",
    "json_response",
    "manifest_head",
    "tags_list",
]
