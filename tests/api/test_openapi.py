"""The OpenAPI document is django-ninja's, generated from the operations and their schemas; the one exception
handler answers ninja's own refusals in the API's error format."""

from __future__ import annotations

import json
import re

import pytest

from api import management_api, routing

pytestmark = pytest.mark.django_db

FLAG = "patch_mode_enabled"
WRITES = {"post", "patch", "put", "delete"}


@pytest.fixture
def document(client) -> dict:
    response = client.get("/api/v1/openapi.json")
    assert response.status_code == 200
    return json.loads(response.content)


def management_operations() -> list[tuple[str, str]]:
    """(method, path) of every operation the management router routes, read from ninja itself."""
    found = []
    for path, view in management_api.router.path_operations.items():
        for operation in view.operations:
            found += [(method.lower(), path) for method in operation.methods]
    return found


def resolve(document: dict, schema: dict) -> dict:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    return document["components"]["schemas"][ref.removeprefix("#/components/schemas/")]


def test_the_document_is_openapi_3_with_its_schemas_as_components(document):
    assert re.fullmatch(r"3\.\d+\.\d+", document["openapi"])
    assert document["info"]["title"] and document["info"]["version"]
    assert {"Error", "OfrepError", "Flag", "Decision", "OfrepSuccess"} <= set(document["components"]["schemas"])
    assert document["components"]["securitySchemes"]["ApiKey"] == {"type": "http", "scheme": "bearer"}


def test_the_document_is_what_django_ninja_generates(document):
    assert document == json.loads(json.dumps(management_api.document()))


def test_every_management_operation_is_documented_with_its_response_schema(document):
    operations = management_operations()
    assert len(operations) >= 10
    for method, path in operations:
        operation = document["paths"][path][method]
        ok = operation["responses"]["200"]["content"]["application/json"]["schema"]
        assert resolve(document, ok).get("type") == "object" or ok.get("additionalProperties") is not None, (
            method, path)


@pytest.mark.parametrize(("method", "path", "schema", "required"), [
    ("patch", "/api/v1/flags/{key}", "FlagChange", ["reason"]),
    ("post", "/api/v1/flags/{key}/overrides", "OverridesAdd", ["kind", "user_ids"]),
    ("delete", "/api/v1/flags/{key}/overrides", "OverridesRemove", ["user_ids"]),
    ("post", "/api/v1/executions", "ExecutionBatch", ["records"]),
    ("put", "/api/v1/flags/{key}/rules", "RulesChange", ["rules", "reason"]),
    ("post", "/api/v1/segments", "SegmentCreate", ["key", "name", "reason"]),
    ("patch", "/api/v1/segments/{key}", "SegmentChange", ["reason"]),
    ("delete", "/api/v1/segments/{key}", "SegmentDelete", ["reason"]),
])
def test_every_write_documents_its_request_body_schema_and_refuses_other_fields(document, method, path, schema,
                                                                                required):
    body = document["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": f"#/components/schemas/{schema}"}
    component = document["components"]["schemas"][schema]
    assert component["additionalProperties"] is False
    assert component["required"] == required


def test_a_missing_required_field_keeps_its_own_message(manage):
    response = manage("POST", f"/api/v1/flags/{FLAG}/overrides", b'{"note": "n"}')
    assert response.status_code == 400
    assert response.json()["fields"] == {"kind": ["must be allow or deny"],
                                         "user_ids": ["must be a non-empty list of user ids"]}


def test_every_write_operation_takes_a_body(document):
    for method, path in management_operations():
        if method in WRITES:
            assert "requestBody" in document["paths"][path][method], (method, path)


@pytest.mark.parametrize(("method", "path"), [("patch", "/api/v1/flags/{key}"), ("put", "/api/v1/flags/{key}/rules"),
                                            ("patch", "/api/v1/segments/{key}")])
def test_the_patch_documents_if_match_and_the_409(document, method, path):
    patch = document["paths"][path][method]
    assert {"name": "If-Match", "in": "header"}.items() <= next(
        p for p in patch["parameters"] if p["name"] == "If-Match").items()
    assert resolve(document, patch["responses"]["409"]["content"]["application/json"]["schema"])["properties"][
        "current"]


TARGETING = [("get", "/api/v1/flags/{key}/rules", "FlagRules"), ("put", "/api/v1/flags/{key}/rules", "FlagRules"),
             ("get", "/api/v1/segments", "SegmentList"), ("post", "/api/v1/segments", "Segment"),
             ("get", "/api/v1/segments/{key}", "Segment"), ("patch", "/api/v1/segments/{key}", "Segment"),
             ("delete", "/api/v1/segments/{key}", "SegmentDeleted")]


@pytest.mark.parametrize(("method", "path", "schema"), TARGETING)
def test_the_targeting_operations_are_documented_with_their_schemas(document, method, path, schema):
    assert (method, path) in management_operations()
    operation = document["paths"][path][method]
    assert operation["security"] == [{"ApiKey": []}]
    assert operation["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": f"#/components/schemas/{schema}"}
    if "/segments/" in path:
        assert operation["responses"]["404"]["description"] == "Unknown segment."


def test_rules_and_conditions_are_described_from_the_pure_cores_names_and_limits(document):
    from flags import targeting

    schemas = document["components"]["schemas"]
    assert schemas["Condition"]["properties"]["operator"]["enum"] == list(targeting.OPERATORS)
    assert schemas["Condition"]["properties"]["values"]["maxItems"] == targeting.VALUES_MAX
    assert schemas["Rule"]["required"] == ["id", "serve"]
    assert schemas["Rule"]["additionalProperties"] is False
    rule = {"$ref": "#/components/schemas/Rule"}
    assert schemas["RulesChange"]["properties"]["rules"]["items"] == rule
    assert schemas["Flag"]["properties"]["rules"]["items"] == rule  # a new key of the flag's body
    assert "segment" in schemas["AuditItem"]["properties"]
    assert "segment" in {p["name"] for p in document["paths"]["/api/v1/audit"]["get"]["parameters"]}


@pytest.mark.parametrize("path", ["/api/v1/flags/{key}/overrides", "/api/v1/audit"])
def test_pages_document_limit_and_cursor(document, path):
    parameters = {p["name"]: p for p in document["paths"][path]["get"]["parameters"]}
    assert parameters["limit"]["schema"]["maximum"] == 1000 and parameters["limit"]["schema"]["default"] == 100
    assert "cursor" in parameters


def test_the_evaluation_routes_are_documented_from_the_route_table(document):
    for route in routing.ROUTES:
        operation = document["paths"][route.path][route.method.lower()]
        assert operation["security"] == [{"ApiKey": []}]
        assert "200" in operation["responses"]


# --- one exception handler: ninja's own refusals in the API's error format --------------------------------


@pytest.fixture
def manage(client, flag, make_key):
    secret = make_key("ops", "manage")

    def call(method: str, path: str, body: bytes | None = None, **extra):
        return client.generic(method, path, body or b"", content_type="application/json",
                              HTTP_AUTHORIZATION=f"Bearer {secret}", **extra)

    return call


def test_a_wrong_type_in_a_body_field_is_400_with_the_fields_message(manage):
    response = manage("PATCH", f"/api/v1/flags/{FLAG}", b'{"enabled": true, "reason": "r", "expected_version": "1"}')
    assert response.status_code == 400
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"error": "validation_failed", "message": "invalid input in: expected_version",
                               "fields": {"expected_version": ["must be a positive integer"]}}


def test_several_bad_fields_are_named_together_with_list_positions(manage):
    response = manage("POST", f"/api/v1/flags/{FLAG}/overrides", b'{"kind": "both", "user_ids": [], "note": 5, '
                                                                 b'"users": 1}')
    assert response.status_code == 400
    assert response.json()["fields"] == {"kind": ["must be allow or deny"],
                                         "user_ids": ["must be a non-empty list of user ids"],
                                         "note": ["must be a string"], "users": ["unknown field"]}


def test_a_bad_query_parameter_is_400_naming_it_never_ninjas_422(manage):
    response = manage("GET", "/api/v1/audit?limit=ten&since=yesterday")
    assert response.status_code == 400
    assert response.json()["fields"] == {"limit": ["must be an integer from 1 to 1000"],
                                         "since": ["must be an ISO 8601 date-time, e.g. 2026-11-26T10:00:00Z"]}


def test_a_body_that_is_no_json_object_is_400_naming_the_body(manage):
    response = manage("PATCH", f"/api/v1/flags/{FLAG}", b"[1, 2]")
    assert response.status_code == 400
    assert response.json()["fields"] == {"body": ["must be a JSON object"]}


@pytest.mark.parametrize(("body", "message"), [(b"", "the request body is empty; send a JSON object"),
                                               (b"{", "the request body is not valid JSON")])
def test_a_body_that_is_no_json_is_400_invalid_json(manage, body, message):
    response = manage("PATCH", f"/api/v1/flags/{FLAG}", body)
    assert response.status_code == 400
    answer = response.json()
    assert answer["error"] == "invalid_json" and answer["message"].startswith(message)


def test_an_unknown_key_is_401_with_www_authenticate_before_the_body_is_looked_at(client, flag):
    response = client.generic("PATCH", f"/api/v1/flags/{FLAG}", b"{", content_type="application/json",
                              HTTP_AUTHORIZATION="Bearer ra_nope")
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer realm="rolloutadmin"'
    assert response.json()["error"] == "unauthenticated"


def test_a_wrong_method_is_405_json_with_allow_in_the_declared_order(manage):
    response = manage("PUT", f"/api/v1/flags/{FLAG}/overrides", b"{}")
    assert response.status_code == 405
    assert response["Allow"] == "GET, POST, DELETE"
    assert response.json() == {"error": "method_not_allowed", "message": "use GET, POST, DELETE"}
