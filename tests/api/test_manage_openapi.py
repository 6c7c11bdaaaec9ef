"""The OpenAPI document against the routes of api/urls.py: every route documented, every documented
operation routed, references that resolve."""

from __future__ import annotations

import json
import re

import pytest

from flags import services
from flags.models import Source
from tests.api.manage import FLAG, ROUTES, Api

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("keep_the_test_transaction")]


def test_route_list_read_from_api_urls_is_clean():
    assert "/api/v1/flags/{key}/overrides" in ROUTES
    assert "/ofrep/v1/evaluate/flags/{key}" in ROUTES and "/ofrep/v1/evaluate/flags" in ROUTES
    assert len(set(ROUTES)) == len(ROUTES)
    for route in ROUTES:
        assert route.startswith(("/api/v1/", "/ofrep/v1/"))
        assert not re.search(r"[\\^$?()\[\]<>]", route), route  # nothing of a regex or a converter left


def test_openapi_is_valid_json_of_version_3_1(client):
    response = client.get("/api/v1/openapi.json")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/json")
    document = json.loads(response.content)
    assert document["openapi"] == "3.1.0"
    assert document["paths"] and document["info"]["title"]


@pytest.mark.parametrize("route", ROUTES)
def test_openapi_documents_every_route(client, route):
    assert route in client.get("/api/v1/openapi.json").json()["paths"]


def test_every_documented_operation_is_routed(client, flag, actor, make_key):
    # A segment under the flag's key, so that /api/v1/segments/{key} answers; an unknown one is a 404 too.
    services.segment_create(key=FLAG, name="routed", included=["user_1"], actor=actor, source=Source.CLI)
    everything = Api(client, make_key("all", "evaluate,ingest,manage"))
    paths = client.get("/api/v1/openapi.json").json()["paths"]
    for path, operations in paths.items():
        for method in operations:
            response = everything.request(method, path.replace("{key}", FLAG), {})
            assert response.status_code not in (404, 405), (method, path, response.status_code)


def test_every_authenticated_operation_documents_the_outage_503_with_retry_after(client):
    paths = client.get("/api/v1/openapi.json").json()["paths"]
    checked = 0
    for path, operations in paths.items():
        for method, operation in operations.items():
            if "401" not in operation["responses"]:
                continue  # the OpenAPI document itself needs no key and no database
            answer = operation["responses"].get("503")
            assert answer is not None, (method, path)
            assert answer["headers"]["Retry-After"]["schema"]["type"] == "integer", (method, path)
            checked += 1
    assert checked >= 10


def test_openapi_refs_resolve(client):
    document = client.get("/api/v1/openapi.json").json()
    refs = set(re.findall(r'"\$ref": "#/components/schemas/(\w+)"', json.dumps(document)))
    assert refs and refs <= set(document["components"]["schemas"])
