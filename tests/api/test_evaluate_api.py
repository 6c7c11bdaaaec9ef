"""The evaluation endpoints through Django's test client: OFREP (single and bulk) and the JSON API.

The expected decisions come from shared/reference/ofrep.md (the mapping table), the shared murmur3 vectors
and flags.evaluation, never from the handlers under test.
"""

from __future__ import annotations

import io
import json

import pytest
from django.utils import timezone

from api.fastpath import FastPath
from api.keys import api_key_revoke
from api.models import ApiKey
from flags import evaluation, selectors, services
from flags.models import USER_ID_MAX_LENGTH, Flag, Source

pytestmark = pytest.mark.django_db

FLAG = "patch_mode_enabled"
SINGLE = f"/ofrep/v1/evaluate/flags/{FLAG}"
BULK = "/ofrep/v1/evaluate/flags"
EVALUATE_MANY = "/api/v1/evaluate"
# The shared murmur3 vectors: salt patch_mode_enabled.
BUCKETS = {"user_0": 4572, "user_1": 155, "user_2": 7434, "user_3": 1796}
OFREP_REASONS = {"STATIC", "TARGETING_MATCH", "SPLIT", "DISABLED", "UNKNOWN"}


@pytest.fixture(autouse=True)
def keep_the_test_transaction(monkeypatch):
    # The snapshot calls close_old_connections() before it reloads, as a long-running server process must.
    # Inside a test's transaction (autocommit off) Django would take that as a reason to close the very
    # connection holding the transaction, so the tests keep it.
    monkeypatch.setattr("api.snapshot.close_old_connections", lambda: None)


@pytest.fixture
def secret(make_key) -> str:
    return make_key("svc", "evaluate")


def post(client, path: str, payload, secret: str | None, **extra):
    """POST a JSON payload (or raw bytes/str as they are) with the bearer token, if any."""
    body = payload if isinstance(payload, bytes | str) else json.dumps(payload)
    if secret is not None:
        extra["HTTP_AUTHORIZATION"] = f"Bearer {secret}"
    return client.post(path, body, content_type="application/json", **extra)


def ofrep(client, secret: str, user: str | None = "user_1", key: str = FLAG):
    context = {} if user is None else {"targetingKey": user}
    return post(client, f"/ofrep/v1/evaluate/flags/{key}", {"context": context}, secret)


def set_rollout(actor, percentage, enabled=True, flag=FLAG) -> Flag:
    return services.flag_set_rollout(flag=flag, percentage=percentage, enabled=enabled, actor=actor,
                                     source=Source.CLI)


def expected_decision(flag_key: str, user_id: str) -> evaluation.Decision:
    flag = selectors.flag_get(flag_key)
    return evaluation.evaluate(selectors.flag_config(flag) if flag else None, user_id)


def assert_ofrep_error(response, status: int, code: str, key: str | None = FLAG) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["errorCode"] == code
    assert isinstance(body["errorDetails"], str) and body["errorDetails"]
    if key is not None:
        assert body["key"] == key
    return body


# --- OFREP single: the mapping table -------------------------------------------------------------------


def test_disabled_flag_is_false_off_disabled(client, flag, secret):
    response = ofrep(client, secret, "user_1")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert (body["key"], body["value"], body["variant"], body["reason"]) == (FLAG, False, "off", "DISABLED")
    assert body["metadata"]["reason"] == "DISABLED"


def test_disabled_flag_beats_the_allow_list(client, flag, actor, secret):
    services.override_add(flag=flag, user_id="user_1", kind="allow", actor=actor, source=Source.CLI)
    body = ofrep(client, secret, "user_1").json()
    assert (body["value"], body["variant"], body["reason"]) == (False, "off", "DISABLED")


def test_disabled_flag_without_targeting_key_is_false_disabled_not_an_error(client, flag, secret):
    response = ofrep(client, secret, None)
    assert response.status_code == 200
    body = response.json()
    assert (body["value"], body["variant"], body["reason"]) == (False, "off", "DISABLED")


def test_allow_listed_user_is_true_on_targeting_match(client, flag, actor, secret):
    set_rollout(actor, 0)
    services.override_add(flag=FLAG, user_id="user_2", kind="allow", actor=actor, source=Source.CLI)
    body = ofrep(client, secret, "user_2").json()
    assert (body["value"], body["variant"], body["reason"]) == (True, "on", "TARGETING_MATCH")
    assert body["metadata"]["reason"] == "ALLOW_LIST"


def test_deny_listed_user_is_false_off_targeting_match(client, flag, actor, secret):
    set_rollout(actor, 100)
    services.override_add(flag=FLAG, user_id="user_1", kind="deny", actor=actor, source=Source.CLI)
    body = ofrep(client, secret, "user_1").json()
    assert (body["value"], body["variant"], body["reason"]) == (False, "off", "TARGETING_MATCH")
    assert body["metadata"]["reason"] == "DENY_LIST"


@pytest.mark.parametrize("user", sorted(BUCKETS))
def test_user_inside_the_rollout_is_true_on_split(client, flag, actor, secret, user):
    # The smallest percentage that takes this user's bucket in: bucket < basis points.
    set_rollout(actor, (BUCKETS[user] + 1) / 100)
    body = ofrep(client, secret, user).json()
    assert (body["value"], body["variant"], body["reason"]) == (True, "on", "SPLIT")
    assert body["metadata"]["reason"] == "IN_ROLLOUT"
    assert body["metadata"]["bucket"] == BUCKETS[user]


@pytest.mark.parametrize("user", sorted(BUCKETS))
def test_user_outside_the_rollout_is_false_off_split(client, flag, actor, secret, user):
    # The largest percentage that still leaves this user's bucket out.
    set_rollout(actor, BUCKETS[user] / 100)
    body = ofrep(client, secret, user).json()
    assert (body["value"], body["variant"], body["reason"]) == (False, "off", "SPLIT")
    assert body["metadata"]["reason"] == "OUT_OF_ROLLOUT"
    assert body["metadata"]["bucket"] == BUCKETS[user]


def test_unknown_flag_is_404_flag_not_found_with_key_and_details(client, flag, secret):
    response = ofrep(client, secret, "user_1", key="no_such_flag")
    assert_ofrep_error(response, 404, "FLAG_NOT_FOUND", key="no_such_flag")


@pytest.mark.parametrize("context", [{}, {"targetingKey": None}, {"targetingKey": ""}, {"targetingKey": "   "},
                                     {"country": "NL"}])
def test_enabled_flag_without_targeting_key_is_400_targeting_key_missing(client, flag, actor, secret, context):
    set_rollout(actor, 50)
    assert_ofrep_error(post(client, SINGLE, {"context": context}, secret), 400, "TARGETING_KEY_MISSING")


def test_enabled_flag_with_no_body_at_all_is_400_targeting_key_missing(client, flag, actor, secret):
    set_rollout(actor, 50)
    assert_ofrep_error(post(client, SINGLE, b"", secret), 400, "TARGETING_KEY_MISSING")


def test_metadata_has_our_reason_bucket_percentage_version_and_stale(client, flag, actor, secret):
    set_rollout(actor, 20)
    services.flag_set_rollout(flag=FLAG, percentage="12.5", actor=actor, source=Source.CLI)
    version = Flag.objects.get(key=FLAG).version
    body = ofrep(client, secret, "user_1").json()
    metadata = body["metadata"]
    assert metadata["reason"] == "IN_ROLLOUT"
    assert metadata["bucket"] == BUCKETS["user_1"]
    assert metadata["rolloutPercentage"] == 12.5
    assert metadata["version"] == version == 3
    assert metadata["stale"] is False
    # OFREP metadata is a flat object of strings, numbers and booleans.
    assert all(isinstance(v, str | int | float | bool) for v in metadata.values())
    assert body["reason"] in OFREP_REASONS


@pytest.mark.parametrize("raw", [b"{not json", b'{"context": {"targetingKey": "user_1"}', b"\xff\xfe\xfd",
                                 b"[" * 10000, b"{'context': {}}"])
def test_malformed_json_is_400_parse_error(client, flag, secret, raw):
    assert_ofrep_error(post(client, SINGLE, raw, secret), 400, "PARSE_ERROR")


@pytest.mark.parametrize("payload", [{"context": "user_1"}, {"context": ["user_1"]}, {"context": 42},
                                     {"context": True}, [{"context": {}}], '"context"', 7])
def test_context_that_is_not_an_object_is_400_invalid_context(client, flag, actor, secret, payload):
    set_rollout(actor, 50)
    assert_ofrep_error(post(client, SINGLE, payload, secret), 400, "INVALID_CONTEXT")


@pytest.mark.parametrize("targeting_key", [42, ["user_1"], {"id": "user_1"}, True, "x" * (USER_ID_MAX_LENGTH + 1),
                                           "user\x001"])
def test_targeting_key_that_is_no_valid_user_id_is_400_invalid_context(client, flag, actor, secret, targeting_key):
    set_rollout(actor, 50)
    response = post(client, SINGLE, {"context": {"targetingKey": targeting_key}}, secret)
    assert_ofrep_error(response, 400, "INVALID_CONTEXT")


@pytest.mark.parametrize("raw", [b'{"context": {"targetingKey": "\\udc80"}}',
                                 b'{"context": {"targetingKey": "\xed\xa0\x80"}}',
                                 b'{"context": {"targetingKey": "user_1", "name": "\\ud800"}}'])
def test_lone_surrogate_in_the_body_is_400_parse_error(client, flag, actor, secret, raw):
    # No UTF-8 text can hold a lone surrogate: hashing or echoing it used to be a 500.
    set_rollout(actor, 50)
    assert_ofrep_error(post(client, SINGLE, raw, secret), 400, "PARSE_ERROR")
    assert_ofrep_error(post(client, BULK, raw, secret), 400, "PARSE_ERROR", key=None)


def test_escaped_surrogate_pair_in_the_targeting_key_is_the_character(client, flag, actor, secret):
    set_rollout(actor, 100)
    response = post(client, SINGLE, b'{"context": {"targetingKey": "user_\\ud83d\\ude80"}}', secret)
    assert response.status_code == 200
    assert response.json()["metadata"]["bucket"] == evaluation.murmur3_bucket(FLAG, "user_\U0001f680")


def test_targeting_key_of_the_maximum_length_is_evaluated(client, flag, actor, secret):
    set_rollout(actor, 100)
    user = "u" * USER_ID_MAX_LENGTH
    body = ofrep(client, secret, user).json()
    assert body["value"] is True
    assert body["metadata"]["bucket"] == evaluation.murmur3_bucket(FLAG, user)


# --- OFREP: credentials, size limit, paths and methods ---------------------------------------------------


def test_no_authorization_header_is_401_in_ofrep_format(client, flag):
    response = post(client, SINGLE, {"context": {"targetingKey": "user_1"}}, None)
    assert_ofrep_error(response, 401, "GENERAL")


@pytest.mark.parametrize("header", ["Bearer ra_this-is-not-a-real-key-000000000000000000", "Bearer ",
                                    "Basic dXNlcjpwYXNz", "ra_no-scheme-at-all"])
def test_unknown_or_malformed_credentials_are_401(client, flag, secret, header):
    response = client.post(SINGLE, {"context": {"targetingKey": "user_1"}}, content_type="application/json",
                           HTTP_AUTHORIZATION=header)
    assert_ofrep_error(response, 401, "GENERAL")
    scheme, space, token = header.partition(" ")
    token = token if space else scheme
    if token:
        assert token not in response.content.decode()


def test_valid_secret_under_another_scheme_is_401(client, flag, secret):
    response = client.post(SINGLE, {"context": {"targetingKey": "user_1"}}, content_type="application/json",
                           HTTP_AUTHORIZATION=f"Token {secret}")
    assert_ofrep_error(response, 401, "GENERAL")
    assert secret not in response.content.decode()


def test_key_without_the_evaluate_scope_is_403(client, flag, make_key):
    ingest_secret = make_key("collector", "ingest")
    response = ofrep(client, ingest_secret)
    body = assert_ofrep_error(response, 403, "GENERAL")
    assert "evaluate" in body["errorDetails"]
    assert ingest_secret not in response.content.decode()


def test_manage_only_key_cannot_evaluate(client, flag, make_key):
    assert ofrep(client, make_key("ops", "manage")).status_code == 403


@pytest.mark.parametrize(
    ("path", "payload"),
    [
        (SINGLE, b"{not json"),
        (SINGLE, {"context": []}),
        ("/ofrep/v1/evaluate/flags/no_such_flag", {"context": {"targetingKey": "user_1"}}),
        (SINGLE, {"context": {}}),
        (BULK, b"{not json"),
        (EVALUATE_MANY, {"user_ids": [7]}),
        (EVALUATE_MANY, b"[["),
    ],
)
def test_error_bodies_never_contain_the_secret(client, flag, actor, secret, path, payload):
    set_rollout(actor, 50)
    response = post(client, path, payload, secret)
    assert 400 <= response.status_code < 500
    text = response.content.decode()
    assert secret not in text and secret[3:] not in text and secret[-20:] not in text
    assert response.json()


def test_body_over_the_limit_is_413_and_under_it_is_answered(client, flag, actor, secret, settings):
    set_rollout(actor, 100)
    settings.API_MAX_BODY_BYTES = 1000
    small = json.dumps({"context": {"targetingKey": "user_1", "pad": "x" * 500}})
    big = json.dumps({"context": {"targetingKey": "user_1", "pad": "x" * 1500}})
    assert len(small) < 1000 < len(big)
    assert post(client, SINGLE, small, secret).status_code == 200
    assert_ofrep_error(post(client, SINGLE, big, secret), 413, "GENERAL")
    assert_ofrep_error(post(client, BULK, big, secret), 413, "GENERAL", key=None)


def test_body_over_the_limit_is_413_on_the_json_evaluate_endpoint(client, flag, secret, settings):
    settings.API_MAX_BODY_BYTES = 1000
    response = post(client, EVALUATE_MANY, {"user_ids": [f"user_{i}" for i in range(200)]}, secret)
    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"


def test_doubled_leading_slash_is_answered_like_the_single_slash(client, flag, actor, secret):
    # Node's OFREP provider with a trailing slash on its base URL asks for //ofrep/... (ofrep.md). The
    # absolute URL keeps the test client from reading "//ofrep" as a host name.
    set_rollout(actor, 20)
    payload = {"context": {"targetingKey": "user_1"}}
    doubled = post(client, f"http://testserver/{SINGLE}", payload, secret)
    assert doubled.wsgi_request.path_info.startswith("//ofrep/")
    assert doubled.status_code == 200
    assert doubled.json() == post(client, SINGLE, payload, secret).json()
    bulk = post(client, f"http://testserver/{BULK}", payload, secret)
    assert bulk.status_code == 200 and [item["key"] for item in bulk.json()["flags"]] == [FLAG]


def test_lean_wsgi_path_also_tolerates_the_doubled_slash(flag, actor, secret):
    # gunicorn serves the evaluation endpoints through api.fastpath, not through Django's URL resolver.
    set_rollout(actor, 20)
    body = json.dumps({"context": {"targetingKey": "user_1"}}).encode()
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": f"/{SINGLE}", "QUERY_STRING": "",
               "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body),
               "HTTP_AUTHORIZATION": f"Bearer {secret}"}
    started = {}

    def start_response(status, headers):
        started.update(status=status, headers=dict(headers))

    def django_app(environ, start_response):
        raise AssertionError("the evaluation endpoint fell through to Django")

    answer = json.loads(b"".join(FastPath(django_app)(environ, start_response)))
    assert started["status"] == "200 OK"
    assert started["headers"]["Content-Type"].startswith("application/json")
    assert (answer["value"], answer["reason"], answer["metadata"]["bucket"]) == (True, "SPLIT", BUCKETS["user_1"])


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [("get", SINGLE, "POST"), ("put", SINGLE, "POST"), ("delete", SINGLE, "POST"), ("get", BULK, "POST"),
     ("patch", BULK, "POST"), ("get", EVALUATE_MANY, "POST"), ("post", f"/api/v1/flags/{FLAG}/evaluate", "GET"),
     ("delete", f"/api/v1/flags/{FLAG}/evaluate", "GET")],
)
def test_wrong_method_is_405_with_allow_header_and_json(client, flag, secret, method, path, allowed):
    response = getattr(client, method)(path, HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert response.status_code == 405
    assert response["Allow"] == allowed
    assert response["Content-Type"].startswith("application/json")
    assert response.json()


# --- OFREP bulk -------------------------------------------------------------------------------------------


@pytest.fixture
def three_flags(flag, make_flag, actor):
    make_flag("beta_search")
    make_flag("dark_mode")
    set_rollout(actor, 100, flag="beta_search")
    set_rollout(actor, 0, flag="dark_mode")
    services.override_add(flag="dark_mode", user_id="user_1", kind="allow", actor=actor, source=Source.CLI)
    return ["beta_search", "dark_mode", FLAG]


def test_bulk_returns_every_flag_each_as_the_single_endpoint_answers(client, three_flags, secret):
    response = post(client, BULK, {"context": {"targetingKey": "user_1"}}, secret)
    assert response.status_code == 200
    items = response.json()["flags"]
    assert sorted(item["key"] for item in items) == sorted(Flag.objects.values_list("key", flat=True))
    for item in items:
        assert item == ofrep(client, secret, "user_1", key=item["key"]).json()
        decision = expected_decision(item["key"], "user_1")
        assert (item["value"], item["metadata"]["reason"]) == (decision.enabled, decision.reason.value)


def test_bulk_without_targeting_key_gives_error_items_for_enabled_flags_only(client, three_flags, secret):
    response = post(client, BULK, {"context": {}}, secret)
    assert response.status_code == 200
    items = {item["key"]: item for item in response.json()["flags"]}
    assert set(items) == set(three_flags)
    for key in ("beta_search", "dark_mode"):  # enabled: no user, no decision
        assert items[key]["errorCode"] == "TARGETING_KEY_MISSING" and items[key]["errorDetails"]
        assert "value" not in items[key]
    assert (items[FLAG]["value"], items[FLAG]["reason"]) == (False, "DISABLED")  # disabled: off for everyone


def test_bulk_has_an_etag_and_the_same_request_with_if_none_match_is_304_empty(client, three_flags, secret):
    payload = {"context": {"targetingKey": "user_1"}}
    first = post(client, BULK, payload, secret)
    etag = first["ETag"]
    assert first.status_code == 200 and etag
    again = post(client, BULK, payload, secret, HTTP_IF_NONE_MATCH=etag)
    assert again.status_code == 304
    assert again.content == b""
    assert again["ETag"] == etag


def test_bulk_etag_depends_on_the_context(client, three_flags, secret):
    first = post(client, BULK, {"context": {"targetingKey": "user_1"}}, secret)
    other = post(client, BULK, {"context": {"targetingKey": "user_2"}}, secret, HTTP_IF_NONE_MATCH=first["ETag"])
    assert other.status_code == 200
    assert other["ETag"] != first["ETag"]


def test_bulk_etag_changes_after_a_rollout_change_and_the_old_one_gets_200(
    client, three_flags, secret, actor, django_capture_on_commit_callbacks
):
    payload = {"context": {"targetingKey": "user_0"}}
    before = post(client, BULK, payload, secret)
    old_etag = before["ETag"]
    with django_capture_on_commit_callbacks(execute=True):
        set_rollout(actor, 50)
    after = post(client, BULK, payload, secret, HTTP_IF_NONE_MATCH=old_etag)
    assert after.status_code == 200
    assert after["ETag"] != old_etag
    items = {item["key"]: item for item in after.json()["flags"]}
    assert items[FLAG]["metadata"]["reason"] == "IN_ROLLOUT"  # bucket 4572 < 5000
    assert post(client, BULK, payload, secret, HTTP_IF_NONE_MATCH=after["ETag"]).status_code == 304


def test_bulk_needs_the_evaluate_scope(client, three_flags, make_key):
    assert_ofrep_error(post(client, BULK, {"context": {}}, make_key("collector", "ingest")), 403, "GENERAL",
                       key=None)
    assert_ofrep_error(post(client, BULK, {"context": {}}, None), 401, "GENERAL", key=None)


# --- GET /api/v1/flags/{key}/evaluate ---------------------------------------------------------------------


def test_evaluate_one_returns_the_decision_fields(client, flag, actor, secret):
    set_rollout(actor, 20)
    version = Flag.objects.get(key=FLAG).version
    response = client.get(f"/api/v1/flags/{FLAG}/evaluate", {"user_id": "user_1"},
                          HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert response.status_code == 200
    body = response.json()
    assert {"flag", "user_id", "enabled", "reason", "bucket", "rollout_percentage", "version"} <= set(body)
    assert body["flag"] == FLAG and body["user_id"] == "user_1"
    assert (body["enabled"], body["reason"], body["bucket"]) == (True, "IN_ROLLOUT", BUCKETS["user_1"])
    assert body["rollout_percentage"] == 20
    assert body["version"] == version


@pytest.mark.parametrize("user", sorted(BUCKETS))
def test_evaluate_one_agrees_with_flags_evaluation(client, flag, actor, secret, user):
    set_rollout(actor, 30)
    services.override_add(flag=FLAG, user_id="user_2", kind="allow", actor=actor, source=Source.CLI)
    body = client.get(f"/api/v1/flags/{FLAG}/evaluate", {"user_id": user},
                      HTTP_AUTHORIZATION=f"Bearer {secret}").json()
    decision = expected_decision(FLAG, user)
    assert (body["enabled"], body["reason"], body["bucket"]) == (decision.enabled, decision.reason.value,
                                                                 decision.bucket)


@pytest.mark.parametrize("query", [{}, {"user_id": ""}, {"user_id": "   "}, {"user_id": "x" * (USER_ID_MAX_LENGTH + 1)},
                                   {"user_id": "a\x00b"}])
def test_evaluate_one_without_a_valid_user_id_is_400_naming_user_id(client, flag, secret, query):
    response = client.get(f"/api/v1/flags/{FLAG}/evaluate", query, HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "validation_failed"
    assert list(body["fields"]) == ["user_id"] and body["fields"]["user_id"]


def test_evaluate_one_unknown_flag_is_404(client, flag, secret):
    response = client.get("/api/v1/flags/no_such_flag/evaluate", {"user_id": "user_1"},
                          HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


def test_evaluate_one_without_key_is_401_and_with_ingest_key_403(client, flag, make_key):
    url = f"/api/v1/flags/{FLAG}/evaluate"
    anonymous = client.get(url, {"user_id": "user_1"})
    assert anonymous.status_code == 401 and anonymous.json()["error"] == "unauthenticated"
    assert anonymous["WWW-Authenticate"].lower().startswith("bearer")
    ingest_secret = make_key("collector", "ingest")
    forbidden = client.get(url, {"user_id": "user_1"}, HTTP_AUTHORIZATION=f"Bearer {ingest_secret}")
    assert forbidden.status_code == 403 and forbidden.json()["error"] == "forbidden"
    assert ingest_secret not in forbidden.content.decode()


# --- POST /api/v1/evaluate ------------------------------------------------------------------------------


def test_evaluate_many_defaults_to_every_flag_and_agrees_with_flags_evaluation(client, three_flags, actor, secret):
    set_rollout(actor, 37.5)
    services.override_add(flag=FLAG, user_id="user_7", kind="deny", actor=actor, source=Source.CLI)
    users = [f"user_{i}" for i in range(40)]
    response = post(client, EVALUATE_MANY, {"user_ids": users}, secret)
    assert response.status_code == 200
    body = response.json()
    assert body["stale"] is False and isinstance(body["config_version"], int)
    results = body["results"]
    assert len(results) == len(users) * len(three_flags)
    seen = {(r["flag"], r["user_id"]) for r in results}
    assert seen == {(f, u) for f in three_flags for u in users}
    for result in results:
        decision = expected_decision(result["flag"], result["user_id"])
        assert (result["enabled"], result["reason"], result["bucket"]) == (decision.enabled, decision.reason.value,
                                                                           decision.bucket)
    reasons = {r["reason"] for r in results}
    assert {"IN_ROLLOUT", "OUT_OF_ROLLOUT", "DENY_LIST", "ALLOW_LIST"} <= reasons


def test_evaluate_many_with_a_flag_list_evaluates_only_those(client, three_flags, secret):
    response = post(client, EVALUATE_MANY, {"user_ids": ["user_1", "user_2"], "flags": ["dark_mode"]}, secret)
    assert response.status_code == 200
    results = response.json()["results"]
    assert [(r["flag"], r["user_id"]) for r in results] == [("dark_mode", "user_1"), ("dark_mode", "user_2")]
    assert [r["reason"] for r in results] == ["ALLOW_LIST", "OUT_OF_ROLLOUT"]


def test_evaluate_many_unknown_flag_gives_flag_not_found_results(client, flag, secret):
    response = post(client, EVALUATE_MANY, {"user_ids": ["user_1", "user_2"], "flags": ["no_such_flag", FLAG]},
                    secret)
    assert response.status_code == 200
    results = [r for r in response.json()["results"] if r["flag"] == "no_such_flag"]
    assert [r["user_id"] for r in results] == ["user_1", "user_2"]
    assert all((r["enabled"], r["reason"], r["bucket"]) == (False, "FLAG_NOT_FOUND", None) for r in results)


def test_evaluate_many_of_exactly_10000_decisions_is_answered(client, flag, secret):
    users = [f"user_{i}" for i in range(10_000)]
    response = post(client, EVALUATE_MANY, {"user_ids": users, "flags": [FLAG]}, secret)
    assert response.status_code == 200
    assert len(response.json()["results"]) == 10_000


@pytest.mark.parametrize(("users", "flags"), [(10_001, 1), (5_001, 2), (3_334, 3)])
def test_evaluate_many_over_10000_decisions_is_400_naming_user_ids(client, flag, secret, users, flags):
    payload = {"user_ids": [f"user_{i}" for i in range(users)], "flags": [FLAG, "other", "third"][:flags]}
    response = post(client, EVALUATE_MANY, payload, secret)
    assert response.status_code == 400
    body = response.json()
    assert list(body["fields"]) == ["user_ids"]
    assert str(users * flags) in body["fields"]["user_ids"][0]


def test_evaluate_many_over_10000_decisions_counts_the_default_flags(client, three_flags, secret):
    response = post(client, EVALUATE_MANY, {"user_ids": [f"user_{i}" for i in range(3_334)]}, secret)
    assert response.status_code == 400
    assert "user_ids" in response.json()["fields"]


@pytest.mark.parametrize(("index", "bad"), [(0, 7), (2, ""), (1, "   "), (3, None), (2, ["user_1"]),
                                            (1, "x" * (USER_ID_MAX_LENGTH + 1)), (0, "a\x00b"), (3, {"id": 1})])
def test_evaluate_many_invalid_user_id_is_400_naming_its_index(client, flag, secret, index, bad):
    users: list = ["user_0", "user_1", "user_2", "user_3"]
    users[index] = bad
    response = post(client, EVALUATE_MANY, {"user_ids": users}, secret)
    assert response.status_code == 400
    assert list(response.json()["fields"]) == [f"user_ids[{index}]"]


@pytest.mark.parametrize(
    ("payload", "field"),
    [({}, "user_ids"), ({"user_ids": []}, "user_ids"), ({"user_ids": "user_1"}, "user_ids"),
     ({"user_ids": {"a": 1}}, "user_ids"), ({"user_ids": ["user_1"], "flags": "patch_mode_enabled"}, "flags"),
     ({"user_ids": ["user_1"], "flags": []}, "flags"), ({"user_ids": ["user_1"], "flags": [1]}, "flags"),
     ({"user_ids": ["user_1"], "users": ["user_2"]}, "users"), ([["user_1"]], "body")],
)
def test_evaluate_many_bad_shape_is_400_naming_the_field(client, flag, secret, payload, field):
    response = post(client, EVALUATE_MANY, payload, secret)
    assert response.status_code == 400
    assert field in response.json()["fields"]


@pytest.mark.parametrize("raw", [b'{"user_ids": ["user_1", "\\udc80"]}', b'{"user_ids": ["user_1", "\xed\xa0\x80"]}',
                                 b'{"user_ids": ["user_1"], "flags": ["\\ud800"]}'])
def test_evaluate_many_with_a_lone_surrogate_is_400_invalid_json(client, flag, secret, raw):
    response = post(client, EVALUATE_MANY, raw, secret)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_json"


def test_evaluate_many_malformed_json_is_400_invalid_json(client, flag, secret):
    response = post(client, EVALUATE_MANY, b'{"user_ids": ["user_1"', secret)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_json"


def test_evaluate_many_needs_the_evaluate_scope(client, flag, make_key):
    assert post(client, EVALUATE_MANY, {"user_ids": ["user_1"]}, None).status_code == 401
    assert post(client, EVALUATE_MANY, {"user_ids": ["user_1"]}, make_key("ops", "manage")).status_code == 403


# --- changes reach the snapshot --------------------------------------------------------------------------


def test_a_committed_rollout_change_is_seen_by_the_next_request(client, flag, actor, secret,
                                                                django_capture_on_commit_callbacks):
    assert ofrep(client, secret, "user_1").json()["reason"] == "DISABLED"
    with django_capture_on_commit_callbacks(execute=True):
        set_rollout(actor, 10)
    body = ofrep(client, secret, "user_1").json()
    assert (body["value"], body["metadata"]["reason"]) == (True, "IN_ROLLOUT")  # bucket 155 < 1000


@pytest.mark.django_db(transaction=True)
def test_revoking_a_key_makes_the_next_request_401(client, flag, make_key):
    secret = make_key("svc", "evaluate")
    assert ofrep(client, secret).status_code == 200
    api_key_revoke(key=ApiKey.objects.get(name="svc"))  # commits: the snapshot reloads on commit
    assert_ofrep_error(ofrep(client, secret), 401, "GENERAL")
    response = client.get(f"/api/v1/flags/{FLAG}/evaluate", {"user_id": "user_1"},
                          HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert response.status_code == 401


def test_revoking_one_key_leaves_the_others_working(client, flag, make_key, django_capture_on_commit_callbacks):
    first, second = make_key("svc", "evaluate"), make_key("svc-2", "evaluate")
    assert ofrep(client, first).status_code == ofrep(client, second).status_code == 200
    with django_capture_on_commit_callbacks(execute=True):
        api_key_revoke(key=ApiKey.objects.get(name="svc"))
    assert ofrep(client, first).status_code == 401
    assert ofrep(client, second).status_code == 200
    assert ApiKey.objects.get(name="svc").revoked_at <= timezone.now()
