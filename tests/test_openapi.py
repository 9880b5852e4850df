"""The OpenAPI document: valid OpenAPI 3.1, every route of the table in it, a route
added to the table added to it, served publicly by both adapters and the proxy.
(tests/test_openapi_live.py runs schemathesis against live servers over it.)"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from openapi_spec_validator import OpenAPIV31SpecValidator, validate
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError

from pullstats_middleware import PullMetrics, PullStatsConfig
from pullstats_middleware.demo_registry import MemoryRegistry
from pullstats_middleware.matchers import validate_digest, validate_repository, validate_tag
from pullstats_middleware.proxy import build_proxy
from pullstats_middleware.routes import ROUTES, Route, error, json_response
from pullstats_middleware.routes.http import ERROR_STATUSES
from pullstats_middleware.routes.openapi import OPENAPI_PATH, document
from pullstats_middleware.store import MemoryStore
from tests.apps import Driver, make_driver
from tests.test_router import TOY

REGISTRY = PullStatsConfig(enabled=True)


def deny_all(request: Any, headers: Any) -> bool:
    return False


CONFIGS = {
    "registry": REGISTRY,
    "none": PullStatsConfig(enabled=True, auth="none"),
    "policy": PullStatsConfig(enabled=True, auth=deny_all),
    "prefix": PullStatsConfig(enabled=True, path_prefix="/registry"),
}


def path_of(route: Route) -> str:
    return re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route.rule)


@pytest.mark.parametrize("name", CONFIGS)
def test_the_document_is_valid_openapi_3_1(name: str) -> None:
    doc = document(ROUTES, CONFIGS[name])
    assert doc["openapi"] == "3.1.0"
    validate(doc, cls=OpenAPIV31SpecValidator)


def test_the_validator_rejects_what_is_not_openapi_3_1() -> None:
    """The check above can fail: a path parameter the operation does not declare."""
    doc = document(ROUTES, REGISTRY)
    operation = doc["paths"][path_of(ROUTES[0])]["get"]
    operation["parameters"] = operation["parameters"][1:]
    with pytest.raises(OpenAPIValidationError):
        validate(doc, cls=OpenAPIV31SpecValidator)


def test_every_route_in_the_table_is_described() -> None:
    doc = document(ROUTES, REGISTRY)
    assert len(doc["paths"]) == len({path_of(route) for route in ROUTES})
    for route in ROUTES:
        operation = doc["paths"][path_of(route)]["get"]
        assert operation["operationId"] == route.name
        names = [(p["in"], p["name"]) for p in operation["parameters"]]
        assert names == [("path", n) for n in re.findall(r"<(?:\w+:)?(\w+)>", route.rule)] + [
            ("query", n) for n in route.query
        ]
        ok = operation["responses"]["200"]["content"][route.media_type]
        assert ok["schema"] == route.response
        statuses = set(operation["responses"]) - {"200"}
        assert {"405", "500"} <= statuses and {str(s) for s in route.errors} <= statuses
        assert ("400" in statuses) == bool(route.params or route.query)
        guarded = {"401", "403", "404", "503"} <= statuses
        assert guarded == (route.probe is not None)
        assert ("security" in operation) == (route.probe is not None)


def test_a_route_added_to_the_table_is_added_to_the_document() -> None:
    echo = Route(
        "echo",
        "/api/v1/pull_statistics/echo",
        lambda context: json_response(200, {"query": context.request.query}),
        query={"q": {"type": "string"}},
        response={"type": "object", "properties": {"query": {"type": "string"}}},
        errors=(409,),
    )
    before = document(ROUTES, REGISTRY)
    after = document((*ROUTES, TOY, echo), REGISTRY)
    validate(after, cls=OpenAPIV31SpecValidator)
    assert set(after["paths"]) - set(before["paths"]) == {
        "/api/v1/pull_statistics/toy/{repository}",
        "/api/v1/pull_statistics/echo",
    }
    toy = after["paths"]["/api/v1/pull_statistics/toy/{repository}"]["get"]
    assert toy["summary"] == TOY.summary
    assert toy["parameters"][0]["schema"]["pattern"].startswith("^[a-z0-9]")
    assert "schema" not in toy["responses"]["200"]["content"]["application/json"]  # not declared
    operation = after["paths"]["/api/v1/pull_statistics/echo"]["get"]
    assert operation["parameters"] == [{"name": "q", "in": "query", "schema": {"type": "string"}}]
    assert set(operation["responses"]) == {"200", "400", "405", "409", "500"}
    conflict = after["components"]["responses"]["error_409"]["content"]["application/json"]
    assert conflict["schema"]["allOf"][1]["properties"]["status"] == {"const": 409}


def test_every_error_the_routes_answer_has_the_documented_shape() -> None:
    doc = document(ROUTES, REGISTRY)
    for status in sorted(ERROR_STATUSES):
        pointer = f"#/components/responses/error_{status}/content/application~1json/schema"
        validator = Draft202012Validator({"$ref": pointer, "components": doc["components"]})
        validator.validate(json.loads(error(status, "what is wrong").body))
        other = 400 if status != 400 else 404
        assert not validator.is_valid(json.loads(error(other, "what is wrong").body))


@pytest.mark.parametrize("name", ["registry", "policy"])
def test_both_adapters_serve_it_to_anyone(registry: MemoryRegistry, kind: str, name: str) -> None:
    """No credentials, and a policy that denies every request: the document is public."""
    config = CONFIGS[name]
    driver = make_driver(kind, registry, config, PullMetrics(config, store=MemoryStore()))
    result = driver.get(OPENAPI_PATH)
    assert result.status == 200 and result.headers["content-type"] == "application/json"
    assert result.json() == document(ROUTES, config)
    head = driver.head(OPENAPI_PATH)
    assert head.status == 200 and head.body == b""
    refused = driver.request("POST", OPENAPI_PATH)
    assert refused.status == 405 and refused.headers["allow"] == "GET, HEAD"


def test_under_a_path_prefix_the_server_names_it(registry: MemoryRegistry, kind: str) -> None:
    config = CONFIGS["prefix"]
    driver = make_driver(kind, registry, config, PullMetrics(config, store=MemoryStore()))
    doc = driver.get("/registry" + OPENAPI_PATH).json()
    assert doc["servers"] == [{"url": "/registry"}] and OPENAPI_PATH in doc["paths"]


def test_a_table_of_its_own_is_served_as_mounted(registry: MemoryRegistry, kind: str) -> None:
    metrics = PullMetrics(REGISTRY, store=MemoryStore())
    driver = make_driver(kind, registry, REGISTRY, metrics, routes=(*ROUTES, TOY))
    paths = driver.get(OPENAPI_PATH).json()["paths"]
    assert "/api/v1/pull_statistics/toy/{repository}" in paths


def test_the_proxy_serves_it() -> None:
    """`pullstats proxy` wraps the ASGI adapter: the document is answered in process."""
    metrics = PullMetrics(REGISTRY, store=MemoryStore())
    proxy = build_proxy("http://127.0.0.1:9", REGISTRY, metrics=metrics)  # never reached
    result = Driver("asgi", proxy, metrics).get(OPENAPI_PATH)
    assert result.status == 200 and result.json() == document(ROUTES, REGISTRY)
    metrics.close()


def pattern_of(doc: dict[str, Any], route: str, name: str) -> re.Pattern[str]:
    parameters = doc["paths"][route]["get"]["parameters"]
    return re.compile(next(p for p in parameters if p["name"] == name)["schema"]["pattern"])


DOC = document(ROUTES, REGISTRY)
TAG_PATH = "/api/v1/repository/{repository}/tag/{reference}/pull_statistics"
MANIFEST_PATH = "/api/v1/repository/{repository}/manifest/{reference}/pull_statistics"
NAME_CHARS = st.text(st.sampled_from("abz09._-/:A+"), max_size=80)


@settings(max_examples=300, deadline=None)
@given(NAME_CHARS)
def test_the_documented_names_are_those_the_validators_accept(text: str) -> None:
    """The patterns are generated from the grammar; they must say what the router does."""
    repository = pattern_of(DOC, TAG_PATH, "repository")
    assert (repository.fullmatch(text) is not None) == (validate_repository(text) is None)
    tag = pattern_of(DOC, TAG_PATH, "reference")
    assert (tag.fullmatch(text) is not None) == (validate_tag(text) is None)


@settings(max_examples=100, deadline=None)
@given(st.from_regex(pattern_of(DOC, MANIFEST_PATH, "reference"), fullmatch=True))
def test_every_documented_digest_is_accepted(digest: str) -> None:
    assert validate_digest(digest) is None
