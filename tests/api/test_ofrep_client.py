"""The real OpenFeature Python SDK with the OFREP provider, against a live gunicorn server.

Every row of the mapping table in shared/reference/ofrep.md, plus 401, 403, 404 and 400, as a service
would see them through the SDK.
"""

from __future__ import annotations

import time

import pytest
from openfeature import api
from openfeature.contrib.provider.ofrep import OFREPProvider
from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import Reason

from flags import evaluation, services
from flags.models import Source

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def live(servers, flag, actor, make_key):
    # Each test changes the flag and asks at once: check the config stamp on every request instead of
    # every 250 ms (propagation timing has its own tests in test_live_servers.py).
    server = servers(SNAPSHOT_CHECK_INTERVAL="0")
    tokens = {"evaluate": make_key("svc", "evaluate"), "ingest": make_key("ingest-only", "ingest")}
    return server, tokens


def client_for(url: str, token: str | None):
    headers = (lambda: {"Authorization": f"Bearer {token}"}) if token else None
    api.set_provider(OFREPProvider(url, headers_factory=headers, timeout=5.0), domain=f"{url}-{token}")
    return api.get_client(domain=f"{url}-{token}")


def details(live, user: str | None = "user_1", flag: str = "patch_mode_enabled", token_scope: str = "evaluate"):
    server, tokens = live
    client = client_for(server.url, tokens.get(token_scope, token_scope) if token_scope else None)
    context = EvaluationContext(targeting_key=user) if user is not None else EvaluationContext()
    return client.get_boolean_details(flag, False, context)


def set_flag(actor, **changes):
    services.flag_update(flag="patch_mode_enabled", actor=actor, source=Source.CLI, **changes)


def test_disabled_flag_is_off_with_reason_disabled(live, actor):
    result = details(live)
    assert (result.value, result.variant, result.reason, result.error_code) == (False, "off", Reason.DISABLED, None)
    assert result.flag_metadata["reason"] == "DISABLED"


def test_allow_list_is_on_with_targeting_match(live, actor):
    set_flag(actor, enabled=True, rollout_percentage=0)
    services.override_add(flag="patch_mode_enabled", user_id="vip", kind="allow", actor=actor, source=Source.CLI)
    result = details(live, "vip")
    assert (result.value, result.variant, result.reason) == (True, "on", Reason.TARGETING_MATCH)
    assert result.flag_metadata["reason"] == "ALLOW_LIST"


def test_deny_list_is_off_with_targeting_match(live, actor):
    set_flag(actor, enabled=True, rollout_percentage=100)
    services.override_add(flag="patch_mode_enabled", user_id="blocked", kind="deny", actor=actor, source=Source.CLI)
    result = details(live, "blocked")
    assert (result.value, result.variant, result.reason) == (False, "off", Reason.TARGETING_MATCH)
    assert result.flag_metadata["reason"] == "DENY_LIST"


def test_inside_and_outside_the_rollout_are_split(live, actor):
    # user_1 is in bucket 155 and user_0 in 4572 (shared vectors): at 20% the first is in, the second out.
    set_flag(actor, enabled=True, rollout_percentage=20)
    inside, outside = details(live, "user_1"), details(live, "user_0")
    assert (inside.value, inside.variant, inside.reason) == (True, "on", Reason.SPLIT)
    assert (outside.value, outside.variant, outside.reason) == (False, "off", Reason.SPLIT)
    assert inside.flag_metadata["bucket"] == evaluation.murmur3_bucket("patch_mode_enabled", "user_1") == 155
    assert outside.flag_metadata["reason"] == "OUT_OF_ROLLOUT"
    assert inside.flag_metadata["rolloutPercentage"] == 20
    assert inside.flag_metadata["stale"] is False and inside.flag_metadata["version"] >= 2


def test_unknown_flag_is_flag_not_found(live):
    result = details(live, flag="no_such_flag")
    assert (result.value, result.error_code) == (False, ErrorCode.FLAG_NOT_FOUND)


def test_enabled_flag_without_targeting_key_is_targeting_key_missing(live, actor):
    set_flag(actor, enabled=True, rollout_percentage=50)
    result = details(live, user=None)
    assert (result.value, result.error_code) == (False, ErrorCode.TARGETING_KEY_MISSING)


def test_too_long_targeting_key_is_invalid_context(live, actor):
    set_flag(actor, enabled=True, rollout_percentage=50)
    result = details(live, user="x" * 300)
    assert result.error_code == ErrorCode.INVALID_CONTEXT


@pytest.mark.parametrize(
    ("scope", "expected_message"), [(None, "unauthorized"), ("wrong-token", "unauthorized"), ("ingest", "forbidden")]
)
def test_bad_credentials_are_errors_and_the_default_value(live, actor, scope, expected_message):
    set_flag(actor, enabled=True, rollout_percentage=100)
    result = details(live, token_scope=scope)
    assert result.value is False and result.error_code == ErrorCode.GENERAL
    # The provider turns our 401 and 403 into these messages; a 200 or any other status would not.
    assert result.error_message == expected_message


def test_malformed_json_gets_parse_error_from_the_live_server(live):
    server, tokens = live
    status, body, _ = server.request("POST", "/ofrep/v1/evaluate/flags/patch_mode_enabled", raw=b"{not json",
                                     token=tokens["evaluate"])
    assert status == 400
    assert body["errorCode"] == "PARSE_ERROR" and body["key"] == "patch_mode_enabled" and body["errorDetails"]


def test_the_seeds_handle_tool_call_falls_back_to_single_mode_when_off(live, actor):
    """The README's example: apply_patches only for users the flag lets in."""

    def handle_tool_call(client, tool_name: str, user_id: str) -> str:
        allowed = client.get_boolean_value("patch_mode_enabled", False, EvaluationContext(targeting_key=user_id))
        if tool_name == "apply_patches" and not allowed:
            return "single"
        return "patch" if tool_name == "apply_patches" else "single"

    server, tokens = live
    client = client_for(server.url, tokens["evaluate"])
    set_flag(actor, enabled=True, rollout_percentage=20)
    assert handle_tool_call(client, "apply_patches", "user_1") == "patch"
    assert handle_tool_call(client, "apply_patches", "user_0") == "single"


def test_the_python_provider_honours_retry_after_when_its_key_is_over_the_rate_limit(servers, flag, actor, make_key):
    set_flag(actor, enabled=True, rollout_percentage=100)
    token = make_key("limited", "evaluate")
    server = servers(API_KEY_RATE_LIMIT="0.2", GUNICORN_WORKERS="1")  # one request per 5 s, bursts of 1
    client = client_for(server.url, token)
    context = EvaluationContext(targeting_key="user_1")
    answers = [client.get_boolean_details("patch_mode_enabled", False, context) for _ in range(4)]
    assert (answers[0].value, answers[0].error_code) == (True, None)
    for answer in answers[1:]:  # the default, with an error, and no flood of requests
        assert answer.value is False and answer.error_code is not None
    line = "POST /ofrep/v1/evaluate/flags/patch_mode_enabled"

    def asked() -> int:
        return server.log.read_text().count(line)

    # The server writes a request's log line once the response is sent, so it may lag the client a little.
    deadline = time.monotonic() + 5
    while asked() < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # time for any further request's line to appear, were there one
    assert asked() == 2  # the first, and the one answered 429; the provider waited out Retry-After after that
    assert f"{line} 429 " in server.log.read_text()


def test_the_sdks_context_attributes_reach_the_targeting_rules(live, actor):
    set_flag(actor, enabled=True, rollout_percentage=0)
    services.flag_set_rules(flag="patch_mode_enabled", actor=actor, source=Source.CLI, rules=[
        {"id": "staff", "serve": "on",
         "conditions": [{"attribute": "email", "operator": "ends_with", "values": ["@ourcompany.com"]}]},
        {"id": "big-teams", "serve": "on", "conditions": [{"attribute": "seats", "operator": "gte", "values": [50]}]},
    ])
    server, tokens = live
    client = client_for(server.url, tokens["evaluate"])
    staff = client.get_boolean_details("patch_mode_enabled", False,
                                       EvaluationContext(targeting_key="u1", attributes={"email": "a@ourcompany.com"}))
    assert (staff.value, staff.reason, staff.flag_metadata["ruleId"]) == (True, Reason.TARGETING_MATCH, "staff")
    team = client.get_boolean_details("patch_mode_enabled", False,
                                      EvaluationContext(targeting_key="u1", attributes={"seats": 120}))
    assert (team.value, team.flag_metadata["ruleId"]) == (True, "big-teams")
    nobody = client.get_boolean_details("patch_mode_enabled", False,
                                        EvaluationContext(targeting_key="u1", attributes={"seats": "120"}))
    assert (nobody.value, nobody.reason) == (False, Reason.SPLIT)  # a numeric string is no number
