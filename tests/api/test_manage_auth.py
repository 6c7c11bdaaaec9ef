"""Access to the management API: a key of scope `manage` (401 without a key, 403 with another scope), and
405 for a method an endpoint does not take."""

from __future__ import annotations

import pytest

from tests.api.manage import AUDIT, DETAIL, OVERRIDES, Api, state

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("keep_the_test_transaction")]


@pytest.mark.parametrize("path", ["/api/v1/flags", DETAIL, OVERRIDES, AUDIT])
def test_management_reads_need_a_manage_key(client, flag, make_key, path):
    secrets = [make_key(f"k-{scopes.replace(',', '-')}", scopes) for scopes in ("evaluate", "ingest",
                                                                                 "evaluate,ingest")]
    assert Api(client, None).get(path).status_code == 401
    for other in secrets:
        response = Api(client, other).get(path)
        assert response.status_code == 403
        assert response.json()["error"] == "forbidden"


def test_patch_with_an_evaluate_only_key_is_403_and_changes_nothing(client, flag, make_key):
    before = state()
    response = Api(client, make_key("svc", "evaluate")).patch(DETAIL, {"enabled": True, "reason": "r"})
    assert response.status_code == 403
    assert response.json()["error"] == "forbidden"
    assert state() == before


def test_patch_without_a_key_is_401_and_changes_nothing(client, flag):
    before = state()
    response = Api(client, None).patch(DETAIL, {"enabled": True, "reason": "r"})
    assert response.status_code == 401
    assert state() == before


@pytest.mark.parametrize(("method", "path"), [("put", DETAIL), ("post", DETAIL), ("delete", DETAIL),
                                              ("post", "/api/v1/flags"), ("put", OVERRIDES), ("post", AUDIT)])
def test_wrong_method_on_a_management_endpoint_is_405_json(api, flag, method, path):
    response = api.request(method, path, {})
    assert response.status_code == 405
    assert response["Allow"]
    assert response.json()["error"] == "method_not_allowed"
