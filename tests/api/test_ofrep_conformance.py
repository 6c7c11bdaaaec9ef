"""OFREP conformance (issue 10): OFREP JSON on every /ofrep/ path, WWW-Authenticate, X-API-Key, a per-key
rate limit with Retry-After, and per-flag change detection (the bulk ETag and items depend only on what
the response holds). Each check runs through Django's views and through the lean WSGI path that servers
use (rolloutadmin.wsgi.application), which must answer the same."""

from __future__ import annotations

import pytest

from api.throttle import KeyRateLimit, key_rate
from flags import services
from flags.models import Source
from tests.api import Answer, bearer

FLAG = "patch_mode_enabled"
BULK = "/ofrep/v1/evaluate/flags"


@pytest.fixture
def secret(make_key, flag) -> str:
    return make_key("svc", "evaluate")


@pytest.fixture(autouse=True)
def fresh_rate_limits():
    key_rate.reset()
    yield
    key_rate.reset()


CONTEXT = {"context": {"targetingKey": "user_1"}}


# --- every /ofrep/ path answers OFREP JSON ---------------------------------------------------------------


@pytest.mark.parametrize("key", ["no/such", "a/b/c", "no such", "x" * 300, "ünïcödé"])
def test_an_unknown_key_of_any_shape_is_flag_not_found_in_ofrep_json(call, secret, key):
    answer = call("POST", f"/ofrep/v1/evaluate/flags/{key}", CONTEXT, **bearer(secret))
    assert answer.status == 404 and answer.headers["content-type"].startswith("application/json")
    assert answer.json() == {"key": key, "errorCode": "FLAG_NOT_FOUND", "errorDetails": f"flag {key!r} does not exist"}


@pytest.mark.parametrize("path", ["/ofrep/v1/unknown", "/ofrep/", "/ofrep/v2/evaluate/flags/x"])
def test_any_other_ofrep_path_is_an_ofrep_json_404(call, secret, path):
    answer = call("POST", path, CONTEXT, **bearer(secret))
    assert answer.status == 404 and answer.json()["errorCode"] == "GENERAL"
    assert "no OFREP endpoint" in answer.json()["errorDetails"]


def test_the_wrong_method_on_an_ofrep_path_is_an_ofrep_json_405(call, secret):
    answer = call("GET", f"/ofrep/v1/evaluate/flags/{FLAG}", None, **bearer(secret))
    assert answer.status == 405 and answer.headers["allow"] == "POST" and answer.json()["errorCode"] == "GENERAL"


# --- authentication -------------------------------------------------------------------------------------


def test_an_ofrep_401_names_the_scheme_in_www_authenticate(call, flag):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "wrong"}):
        answer = call("POST", f"/ofrep/v1/evaluate/flags/{FLAG}", CONTEXT, **headers)
        assert answer.status == 401 and answer.headers["www-authenticate"].startswith("Bearer")
        assert answer.json()["errorCode"] == "GENERAL"


def test_x_api_key_works_like_the_bearer_header_everywhere(call, secret, make_key):
    manage = make_key("ops", "manage")  # before the first request loads the snapshot
    single = call("POST", f"/ofrep/v1/evaluate/flags/{FLAG}", CONTEXT, **{"X-API-Key": secret})
    assert single.status == 200 and single.json()["key"] == FLAG
    assert call("POST", BULK, CONTEXT, **{"X-API-Key": secret}).status == 200
    internal = call("POST", "/api/v1/evaluate", {"user_ids": ["u1"]}, **{"X-API-Key": secret})
    assert internal.status == 200 and internal.json()["results"][0]["flag"] == FLAG
    assert call("GET", "/api/v1/flags", None, **{"X-API-Key": manage}).status == 200
    assert call("GET", "/api/v1/flags", None, **{"X-API-Key": secret}).status == 403  # lacks the scope


def test_a_bearer_header_wins_over_x_api_key(call, secret):
    answer = call("POST", f"/ofrep/v1/evaluate/flags/{FLAG}", CONTEXT,
                  **{"Authorization": "Bearer wrong", "X-API-Key": secret})
    assert answer.status == 401


# --- the per-key rate limit -----------------------------------------------------------------------------


def test_a_key_over_its_rate_gets_429_with_retry_after_and_other_keys_do_not(call, settings, secret, make_key):
    settings.API_KEY_RATE_LIMIT = 0.5  # one request every 2 s, bursts of 1
    other = make_key("other", "evaluate")
    first = call("POST", f"/ofrep/v1/evaluate/flags/{FLAG}", CONTEXT, **bearer(secret))
    second = call("POST", f"/ofrep/v1/evaluate/flags/{FLAG}", CONTEXT, **bearer(secret))
    assert first.status == 200
    assert second.status == 429 and second.json()["errorCode"] == "GENERAL"
    assert second.headers["retry-after"] == "2" and "rate limit" in second.json()["errorDetails"]
    assert call("POST", f"/ofrep/v1/evaluate/flags/{FLAG}", CONTEXT, **bearer(other)).status == 200
    internal = call("POST", "/api/v1/evaluate", {"user_ids": ["u1"]}, **bearer(secret))
    assert internal.status == 429 and internal.json()["error"] == "too_many_requests"


def test_the_bucket_refills_at_the_rate_and_holds_its_burst(settings):
    settings.API_KEY_RATE_LIMIT = 10
    settings.API_KEY_RATE_BURST = 3
    bucket = KeyRateLimit()
    assert [bucket.take(1, now=100.0) for _ in range(4)] == [None, None, None, 1]
    assert bucket.take(1, now=100.05) == 1  # half a token
    assert bucket.take(1, now=100.15) is None  # a token refilled after 0.1 s
    assert [bucket.take(1, now=200.0) for _ in range(4)] == [None, None, None, 1]  # never more than the burst
    assert bucket.take(2, now=200.0) is None  # per key
    settings.API_KEY_RATE_LIMIT = 0
    assert all(bucket.take(1, now=200.0) is None for _ in range(100))  # 0: no limit


# --- per-flag change detection --------------------------------------------------------------------------


@pytest.fixture
def two_flags(flag, make_flag, actor) -> list[str]:
    make_flag("dark_mode")
    services.flag_set_rollout(flag="dark_mode", percentage=100, enabled=True, actor=actor, source=Source.CLI)
    return [FLAG, "dark_mode"]


def test_a_change_outside_the_response_keeps_the_etag_and_answers_304(call, secret, two_flags, make_key,
                                                                      django_capture_on_commit_callbacks):
    first = call("POST", BULK, CONTEXT, **bearer(secret))
    assert first.status == 200 and first.headers["etag"].startswith('W/"')
    with django_capture_on_commit_callbacks(execute=True):
        make_key("another-service", "evaluate")  # moves the server-wide config stamp
    again = call("POST", BULK, CONTEXT, **{**bearer(secret), "If-None-Match": first.headers["etag"]})
    assert again.status == 304 and again.body == b"" and again.headers["etag"] == first.headers["etag"]


def test_a_change_to_one_flag_changes_only_that_flags_item(call, secret, two_flags, actor,
                                                           django_capture_on_commit_callbacks):
    before = call("POST", BULK, CONTEXT, **bearer(secret))
    with django_capture_on_commit_callbacks(execute=True):
        services.flag_set_rollout(flag=FLAG, percentage=50, enabled=True, actor=actor, source=Source.CLI)
    after = call("POST", BULK, CONTEXT, **{**bearer(secret), "If-None-Match": before.headers["etag"]})
    assert after.status == 200 and after.headers["etag"] != before.headers["etag"]
    old = {item["key"]: item for item in before.json()["flags"]}
    new = {item["key"]: item for item in after.json()["flags"]}
    changed = sorted(key for key in new if new[key] != old[key])
    assert changed == [FLAG]  # what the web provider reports in flagsChanged
    assert "configVersion" not in new[FLAG]["metadata"]


# --- CORS -----------------------------------------------------------------------------------------------

APP = "https://app.example.com"


@pytest.fixture
def cors(settings):
    settings.CORS_ALLOWED_ORIGINS = [APP, "http://localhost:5173"]


def preflight(call, path: str, origin: str = APP, method: str = "POST") -> Answer:
    asked = {"Access-Control-Request-Method": method, "Access-Control-Request-Headers": "authorization,content-type"}
    return call("OPTIONS", path, None, Origin=origin, **asked)


@pytest.mark.parametrize("path", [BULK, f"{BULK}/{FLAG}", "/api/v1/evaluate", f"/api/v1/flags/{FLAG}/evaluate"])
def test_a_preflight_from_an_allowed_origin_is_answered_for_the_evaluation_paths(call, cors, path):
    answer = preflight(call, path)
    assert answer.status == 200 and answer.body == b""
    assert answer.headers["access-control-allow-origin"] == APP
    allowed = {h.strip().lower() for h in answer.headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type", "if-none-match", "x-api-key"} <= allowed
    assert {"GET", "POST"} <= {m.strip() for m in answer.headers["access-control-allow-methods"].split(",")}
    assert int(answer.headers["access-control-max-age"]) > 0
    assert "access-control-allow-credentials" not in answer.headers
    assert "origin" in answer.headers["vary"].lower()


def test_a_cross_origin_evaluation_exposes_the_etag_to_the_browser(call, cors, secret):
    answer = call("POST", BULK, CONTEXT, Origin=APP, **bearer(secret))
    assert answer.status == 200 and answer.headers["access-control-allow-origin"] == APP
    exposed = {h.strip().lower() for h in answer.headers["access-control-expose-headers"].split(",")}
    assert {"etag", "retry-after"} <= exposed
    refused = call("POST", f"{BULK}/{FLAG}", CONTEXT, Origin=APP, **{"Authorization": "Bearer wrong"})
    assert refused.status == 401 and refused.headers["access-control-allow-origin"] == APP  # the app can read why


@pytest.mark.parametrize("origin", ["https://evil.example.com", "http://app.example.com", "https://app.example.com:8443",
                                    "null", "not a url"])
def test_other_origins_get_no_cors_headers(call, cors, secret, origin):
    assert "access-control-allow-origin" not in preflight(call, BULK, origin).headers
    answer = call("POST", BULK, CONTEXT, Origin=origin, **bearer(secret))
    assert answer.status == 200 and "access-control-allow-origin" not in answer.headers


@pytest.mark.parametrize("path", ["/api/v1/flags", f"/api/v1/flags/{FLAG}", "/api/v1/audit", "/api/v1/executions",
                                  "/", "/login/", "/metrics"])
def test_the_management_api_and_the_dashboard_never_answer_cross_origin(call, cors, path, make_key):
    manage = make_key("ops", "manage,ingest")
    assert "access-control-allow-origin" not in preflight(call, path, method="GET").headers
    answer = call("GET", path, None, Origin=APP, **bearer(manage))
    assert "access-control-allow-origin" not in answer.headers


def test_without_allowed_origins_nobody_gets_cors_headers(call, secret):
    assert "access-control-allow-origin" not in preflight(call, BULK).headers
    assert "access-control-allow-origin" not in call("POST", BULK, CONTEXT, Origin=APP, **bearer(secret)).headers


def test_a_malformed_allowed_origin_is_a_clear_error_at_start(tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "DEBUG": "1", "CORS_ALLOWED_ORIGINS": "app.example.com/path",
           "ROLLOUTADMIN_VAR_DIR": str(tmp_path)}
    env.pop("DATABASE_URL", None)
    result = subprocess.run([sys.executable, "manage.py", "check"], capture_output=True, text=True, env=env,
                            cwd=__import__("pathlib").Path(__file__).resolve().parents[2], timeout=60)
    assert result.returncode != 0 and "CORS_ALLOWED_ORIGINS" in result.stderr + result.stdout
