"""The OpenAPI 3.1 document of the mounted routes, generated from the route table.

`GET /api/v1/pull_statistics/openapi.json` answers `document(routes, config)` for
the table the router mounts, so a route added to the table is described without
touching this module: its rule gives the path and its path parameters (their
schemas come from the grammar their validators check), its `query`, `response`,
`media_type` and `errors` the rest. The error statuses are derived the way the
router answers them: 405 and 500 always, 400 wherever something is validated,
the authorization mode's where a probe guards the route (registry: 401, 403,
404, 503; a policy may answer any error status), and the handler's own
`errors`. Every error has the one JSON shape of routes/http.py.

Also here: the schema fragments the routes' declarations share.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from importlib import metadata
from typing import Any

from pullstats_middleware.config import PullStatsConfig
from pullstats_middleware.matchers import (
    REPOSITORY_RE,
    TAG_RE,
    validate_digest,
    validate_repository,
    validate_tag,
)
from pullstats_middleware.matchers.oci import MAX_REPOSITORY_LENGTH, REGISTERED_ALGORITHMS
from pullstats_middleware.routes.http import (
    ERROR_SCHEMA,
    ERROR_STATUSES,
    ERROR_TITLES,
    Response,
    json_response,
)
from pullstats_middleware.routes.router import JsonSchema, Route, RouteContext, Validator

OPENAPI_PATH = "/api/v1/pull_statistics/openapi.json"

COUNT: JsonSchema = {"type": "integer", "minimum": 0}
WHEN: JsonSchema = {"type": ["string", "null"], "format": "date-time", "description": "null: never"}
DATE: JsonSchema = {"type": "string", "format": "date", "description": "YYYY-MM-DD, a UTC day"}
# What this route answers: enough to tell it is the document; validators check the rest.
DOCUMENT: JsonSchema = {
    "type": "object",
    "required": ["openapi", "info", "paths"],
    "properties": {"openapi": {"type": "string", "pattern": r"^3\.1\.\d+$"}},
}

# A path parameter's schema: the grammar its validator checks (Python and ECMA-262 agree on it).
_NAMES: dict[Validator, JsonSchema] = {
    validate_repository: {
        "type": "string",
        "maxLength": MAX_REPOSITORY_LENGTH,
        "pattern": f"^{REPOSITORY_RE.pattern}$",
        "examples": ["library/hello"],
    },
    validate_tag: {"type": "string", "pattern": f"^{TAG_RE.pattern}$", "examples": ["v1"]},
    validate_digest: {
        "type": "string",
        "pattern": "^(?:"
        + "|".join(f"{name}:{p.pattern}" for name, p in REGISTERED_ALGORITHMS.items())
        + ")$",
    },
}
_CONVERTERS = {  # what a werkzeug converter of routes/router.py means to a caller
    "anypath": "May contain `/` (a repository `library/hello`): send it as is or "
    "percent-encoded (`%2F`), both reach the route.",
    "segment": "One path segment: no `/`.",
}
_PLACEHOLDER = re.compile(r"<(?:(\w+)(?:\([^)]*\))?:)?(\w+)>")  # <converter(args):name>
_WHY = {
    400: "A malformed repository, tag, digest or query parameter; the detail names it.",
    401: "The registry asks for credentials; its `WWW-Authenticate` is passed through.",
    403: "The registry or the authorization policy refused the caller.",
    404: "The registry does not know the repository, tag or manifest.",
    405: "A method the route does not serve; `Allow` lists those it does.",
    500: "A malformed stored value (the detail names the key), or a failing policy or route.",
    501: "The route needs what is not configured (history: a database).",
    503: "The store cannot be read, or the registry failed the authorization check: "
    "retry after `Retry-After` seconds. Never a made-up zero.",
}
_HEADERS = {
    401: {"WWW-Authenticate": "The registry's challenge, when it sent one."},
    405: {"Allow": "The methods the route serves."},
    503: {"Retry-After": "Seconds to wait before asking again."},
}
# The wrapped registry's own credentials; `{}`: anonymous, where the registry allows it.
_SECURITY: list[dict[str, list[str]]] = [{}, {"registry_basic": []}, {"registry_bearer": []}]
_SECURITY_SCHEMES = {
    "registry_basic": {"type": "http", "scheme": "basic"},
    "registry_bearer": {"type": "http", "scheme": "bearer"},
}


def openapi(context: RouteContext) -> Response:
    """The handler: public, it names no repository and reads no store."""
    return json_response(200, document(context.routes, context.metrics.config))


def document(routes: Sequence[Route], config: PullStatsConfig) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `routes`, as mounted with `config`."""
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        item = paths.setdefault(_PLACEHOLDER.sub(r"{\2}", route.rule), {})
        for method in route.methods:
            operation = _operation(route, config)
            if method != route.methods[0]:
                operation["operationId"] += f"_{method.lower()}"
            item[method.lower()] = operation
    statuses = ERROR_STATUSES.union(*(route.errors for route in routes))
    components: dict[str, Any] = {
        "schemas": {"Error": ERROR_SCHEMA},
        "responses": {f"error_{status}": _error(status) for status in sorted(statuses)},
    }
    if config.auth == "registry":
        components["securitySchemes"] = _SECURITY_SCHEMES
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "Image pull statistics",
            "version": _version(),
            "description": "Pull statistics of the wrapped container registry's images. "
            "Every GET route answers HEAD too, without a body.",
        },
        "paths": paths,
        "components": components,
    }
    if config.path_prefix:  # PULL_METRICS_PATH_PREFIX: every route lives under it
        doc["servers"] = [{"url": config.path_prefix}]
    return doc


def _operation(route: Route, config: PullStatsConfig) -> dict[str, Any]:
    parameters = [
        _path_parameter(route, converter, name)
        for converter, name in _PLACEHOLDER.findall(route.rule)
    ]
    parameters += [{"name": n, "in": "query", "schema": s} for n, s in route.query.items()]
    content = {"schema": route.response} if route.response is not None else {}
    responses: dict[str, Any] = {
        "200": {"description": route.summary or "OK", "content": {route.media_type: content}}
    }
    for status in sorted(_statuses(route, config)):
        responses[str(status)] = {"$ref": f"#/components/responses/error_{status}"}
    operation: dict[str, Any] = {"operationId": route.name}
    if route.summary:
        operation["summary"] = route.summary
    operation.update(parameters=parameters, responses=responses)
    if route.probe is not None and config.auth == "registry":
        operation["description"] = (
            "Authorized by the wrapped registry: the caller's own credentials for it "
            "(or none, where it allows anonymous pulls) are asked of it in process."
        )
        operation["security"] = _SECURITY
    return operation


def _statuses(route: Route, config: PullStatsConfig) -> set[int]:
    statuses = {405, 500, *route.errors}
    if route.params or route.query:
        statuses.add(400)
    if route.probe is not None:  # the router asks neither registry nor policy without one
        if config.auth == "registry":
            statuses |= {401, 403, 404, 503}
        elif callable(config.auth):
            statuses |= ERROR_STATUSES
    return statuses


def _path_parameter(route: Route, converter: str, name: str) -> dict[str, Any]:
    validator = route.params.get(name)
    schema = _NAMES.get(validator, {"type": "string"}) if validator else {"type": "string"}
    parameter: dict[str, Any] = {"name": name, "in": "path", "required": True, "schema": schema}
    if converter in _CONVERTERS:
        parameter["description"] = _CONVERTERS[converter]
    return parameter


def _error(status: int) -> dict[str, Any]:
    title = ERROR_TITLES.get(status, "error")
    schema = {
        "allOf": [
            {"$ref": "#/components/schemas/Error"},
            {"properties": {"status": {"const": status}, "title": {"const": title}}},
        ]
    }
    response: dict[str, Any] = {
        "description": _WHY.get(status, title),
        "content": {"application/json": {"schema": schema}},
    }
    if status in _HEADERS:
        response["headers"] = {
            name: {"description": text, "schema": {"type": "string"}}
            for name, text in _HEADERS[status].items()
        }
    return response


def _version() -> str:
    try:
        return metadata.version("pullstats-middleware")
    except metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "0"
