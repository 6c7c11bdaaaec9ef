"""The "Why does this user get it?" box: the explanation (pure) and its view, through Django's test client."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from dashboard.views.explain import explain, smallest_rollout_basis_points
from flags import evaluation, services
from flags.evaluation import FlagConfig, Reason
from flags.models import Source
from tests.conftest import shared_data

MURMUR = shared_data("murmur3-bucket-vectors.json")["vectors"]
LEGACY = shared_data("legacy-cohort-vectors.json")["vectors"]
# Known answers (tests/data): for salt patch_mode_enabled, user_1 -> bucket 155 and user_0 -> 4572; legacy cohorts
# user_0 -> 76, user_1 -> 75.
EXPLAIN = "/flags/patch_mode_enabled/explain"


def config(**kwargs) -> FlagConfig:
    return FlagConfig(**{"key": "patch_mode_enabled", "enabled": True, "rollout_basis_points": 1000, **kwargs})


# --- the explanation, without a database -------------------------------------------------------------


@pytest.mark.parametrize("bucketing", [evaluation.MURMUR3, evaluation.LEGACY])
def test_the_smallest_rollout_is_exactly_where_evaluation_starts_including_the_bucket(bucketing):
    buckets = evaluation.MURMUR3_BUCKETS if bucketing == evaluation.MURMUR3 else evaluation.LEGACY_COHORTS
    base = config(bucketing=bucketing)
    for bucket in range(buckets):
        points = smallest_rollout_basis_points(base, bucket)
        assert evaluation.in_rollout(replace(base, rollout_basis_points=points), bucket)
        assert not evaluation.in_rollout(replace(base, rollout_basis_points=points - 1), bucket)


@pytest.mark.parametrize("vector", MURMUR[:20])
def test_murmur3_buckets_come_from_the_production_hash(vector):
    e = explain(config(salt=vector["salt"], key=vector["salt"]), vector["user_id"])
    assert e.bucket == vector["bucket"]
    assert f"bucket {vector['bucket']} of 0..9999 ({vector['bucket'] / 100:.2f}%)" in e.bucket_text
    assert str(e.threshold) == f"{(vector['bucket'] + 1) / 100:.2f}"


@pytest.mark.parametrize("vector", LEGACY[:20])
def test_legacy_cohorts_come_from_the_production_hash(vector):
    e = explain(config(bucketing=evaluation.LEGACY), vector["user_id"])
    assert e.bucket == vector["cohort"]
    assert e.bucket_text.startswith(f"cohort {vector['cohort']} of 0..99")
    # cohort < percentage: in from c + 0.01 %, which is c + 1 in whole percents
    assert str(e.threshold) == f"{vector['cohort']}.01"
    cohort = vector["cohort"]
    assert e.threshold_text == f"a rollout of {cohort}.01% or more ({cohort + 1}% in whole percents)"


@pytest.mark.parametrize(("flag", "user_id", "gets_it", "reason", "text", "override"), [
    (config(), "user_1", True, Reason.IN_ROLLOUT, "bucket 155 is below the rollout 10.00% (IN_ROLLOUT)", ""),
    (config(), "user_0", False, Reason.OUT_OF_ROLLOUT, "bucket 4572 is not below the rollout 10.00% (OUT_OF_ROLLOUT)",
     ""),
    (config(rollout_basis_points=156), "user_1", True, Reason.IN_ROLLOUT,
     "bucket 155 is below the rollout 1.56% (IN_ROLLOUT)", ""),
    (config(rollout_basis_points=155), "user_1", False, Reason.OUT_OF_ROLLOUT,
     "bucket 155 is not below the rollout 1.55% (OUT_OF_ROLLOUT)", ""),
    (config(allow=frozenset({"user_0"})), "user_0", True, Reason.ALLOW_LIST, "on the allow list (ALLOW_LIST)",
     "The allow list overrides the rollout"),
    (config(deny=frozenset({"user_1"})), "user_1", False, Reason.DENY_LIST, "on the deny list (DENY_LIST)",
     "The deny list overrides the rollout"),
    (config(enabled=False), "user_1", False, Reason.DISABLED, "the kill switch is off (DISABLED)",
     "nobody gets it at any percentage until the flag is enabled."),
    (config(enabled=False, allow=frozenset({"user_1"})), "user_1", False, Reason.DISABLED,
     "the kill switch is off (DISABLED)", "then the allow list gives it to this user"),
    (config(enabled=False, deny=frozenset({"user_1"})), "user_1", False, Reason.DISABLED,
     "the kill switch is off (DISABLED)", "even then the deny list keeps it from this user"),
    (config(bucketing=evaluation.LEGACY, rollout_basis_points=7600), "user_0", False, Reason.OUT_OF_ROLLOUT,
     "cohort 76 is not below the rollout 76.00% (OUT_OF_ROLLOUT)", ""),
    (config(bucketing=evaluation.LEGACY, rollout_basis_points=7650), "user_0", True, Reason.IN_ROLLOUT,
     "cohort 76 is below the rollout 76.50% (IN_ROLLOUT)", ""),
])
def test_each_reason_is_told_in_words_with_its_code(flag, user_id, gets_it, reason, text, override):
    e = explain(flag, user_id)
    decision = evaluation.evaluate(flag, user_id)
    assert (e.gets_it, e.reason, e.bucket) == (decision.enabled, decision.reason, decision.bucket)
    assert (e.gets_it, e.reason, e.reason_text) == (gets_it, reason, text)
    assert override in e.override and (override or e.override == "")


# --- the view ----------------------------------------------------------------------------------------


@pytest.fixture
def patch_flag(flag, actor):
    return services.flag_set_rollout(flag=flag, percentage=10, enabled=True, actor=actor, source=Source.CLI)


@pytest.fixture
def viewer(client_in):
    return client_in("Rollout viewers")


def result(html: str, element: str) -> str:
    match = re.search(rf'id="explain-{element}">(.*?)</(?:dd|p)>', html, re.S)
    assert match, html
    return " ".join(match.group(1).split())


@pytest.mark.django_db
def test_a_viewer_gets_the_decision_reason_bucket_and_threshold(viewer, patch_flag):
    response = viewer.get(EXPLAIN, {"user_id": "user_1"}, HTTP_HX_REQUEST="true")
    html = response.content.decode()
    assert response.status_code == 200 and html.lstrip().startswith('<div id="explain-result"')
    assert "gets the feature" in result(html, "verdict") and "does not" not in result(html, "verdict")
    assert result(html, "reason") == "bucket 155 is below the rollout 10.00% (IN_ROLLOUT)"
    assert result(html, "bucket") == "bucket 155 of 0..9999 (1.55%), murmur3"
    assert result(html, "threshold") == "a rollout of 1.56% or more (now 10.00%)"


@pytest.mark.django_db
def test_the_lists_count_as_in_production(viewer, patch_flag, actor):
    services.override_add(flag=patch_flag.key, user_id="user_0", kind="allow", actor=actor, source=Source.CLI)
    services.override_add(flag=patch_flag.key, user_id="user_1", kind="deny", actor=actor, source=Source.CLI)
    allowed = viewer.post(EXPLAIN, {"user_id": "user_0"}, HTTP_HX_REQUEST="true").content.decode()
    assert result(allowed, "reason") == "on the allow list (ALLOW_LIST)"
    denied = viewer.get(EXPLAIN, {"user_id": "user_1"}, HTTP_HX_REQUEST="true").content.decode()
    assert result(denied, "reason") == "on the deny list (DENY_LIST)"
    assert "does not get the feature" in result(denied, "verdict")


@pytest.mark.django_db
def test_it_follows_the_flag_as_it_changes(viewer, patch_flag, actor):
    services.flag_set_rollout(flag=patch_flag.key, percentage=50, actor=actor, source=Source.CLI)
    html = viewer.get(EXPLAIN, {"user_id": "user_0"}, HTTP_HX_REQUEST="true").content.decode()
    assert result(html, "reason") == "bucket 4572 is below the rollout 50.00% (IN_ROLLOUT)"
    services.flag_update(flag=patch_flag.key, enabled=False, actor=actor, source=Source.CLI, reason="stop")
    html = viewer.get(EXPLAIN, {"user_id": "user_0"}, HTTP_HX_REQUEST="true").content.decode()
    assert result(html, "reason") == "the kill switch is off (DISABLED)"


@pytest.mark.django_db
@pytest.mark.parametrize(("user_id", "message"), [
    ("", "A user id must not be blank."),
    ("   ", "A user id must not be blank."),
    ("u" * 256, "A user id has at most 255 characters."),
    ("user\x00", "A user id must not contain NUL characters."),
])
@pytest.mark.parametrize("method", ["get", "post"])
def test_a_bad_user_id_is_a_400_with_the_message_in_the_box(viewer, patch_flag, user_id, message, method):
    response = getattr(viewer, method)(EXPLAIN, {"user_id": user_id}, HTTP_HX_REQUEST="true")
    html = response.content.decode()
    assert response.status_code == 400 and html.lstrip().startswith('<div id="explain-result"')
    assert f'<p class="alert error" role="alert">{message}' in html and "explain-reason" not in html


@pytest.mark.django_db
def test_the_box_is_on_the_flag_page_between_the_rollout_and_the_alerts(viewer, patch_flag):
    html = viewer.get("/flags/patch_mode_enabled/").content.decode()
    assert html.index('id="controls"') < html.index("Why does this user get it?") < html.index('id="alerts"')
    assert '<label for="explain-user-id">User id</label>' in html
    assert 'hx-get="/flags/patch_mode_enabled/explain" hx-target="#explain-result"' in html


@pytest.mark.django_db
def test_without_htmx_the_whole_box_answers_and_keeps_the_user_id(viewer, patch_flag):
    html = viewer.get(EXPLAIN, {"user_id": "user_0"}).content.decode()
    assert html.lstrip().startswith('<section id="explain"') and 'value="user_0"' in html
    assert "OUT_OF_ROLLOUT" in html
    empty = viewer.get(EXPLAIN)
    assert empty.status_code == 200 and b"Type a user id" in empty.content


@pytest.mark.django_db
def test_unknown_flags_are_404_and_outsiders_403(client_in, viewer, patch_flag):
    assert viewer.get("/flags/nope/explain", {"user_id": "u"}).status_code == 404
    assert viewer.get("/flags/nul%00/explain", {"user_id": "u"}).status_code == 404
    assert client_in(None).get(EXPLAIN, {"user_id": "u"}).status_code == 403
    assert viewer.put(EXPLAIN).status_code == 405


@pytest.mark.django_db
def test_an_anonymous_htmx_request_is_told_the_session_ended(client, patch_flag):
    response = client.get(EXPLAIN, {"user_id": "u"}, HTTP_HX_REQUEST="true")
    assert response.status_code == 401 and b"session has ended" in response.content


@pytest.mark.django_db
def test_explaining_takes_a_fixed_number_of_queries(viewer, patch_flag, actor, django_assert_max_num_queries):
    for i in range(20):
        services.override_add(flag=patch_flag.key, user_id=f"vip{i}", kind="allow", actor=actor, source=Source.CLI)
    viewer.get(EXPLAIN, {"user_id": "x"})
    # session, user, groups; the flag, its lists
    with django_assert_max_num_queries(5):
        assert viewer.get(EXPLAIN, {"user_id": "vip3"}, HTTP_HX_REQUEST="true").status_code == 200


@pytest.mark.django_db
def test_a_shown_explanation_asks_again_for_the_same_user_when_the_flag_changes(viewer, patch_flag):
    html = viewer.get(EXPLAIN, {"user_id": 'a"b<c'}, HTTP_HX_REQUEST="true").content.decode()
    assert 'hx-trigger="flag-changed from:body"' in html
    assert """hx-vals='{"user_id": "a\\u0022b\\u003Cc", "attributes": ""}'""" in html
    assert "flag-changed" not in viewer.get(EXPLAIN, {"user_id": ""}, HTTP_HX_REQUEST="true").content.decode()


@pytest.mark.django_db
def test_attributes_reach_the_targeting_rules_and_the_rule_is_told_in_words(viewer, patch_flag, actor):
    services.flag_set_rules(flag=patch_flag.key, actor=actor, source=Source.CLI, rules=[
        {"id": "staff", "serve": "on",
         "conditions": [{"attribute": "email", "operator": "ends_with", "values": ["@ourcompany.com"]}]},
        {"id": "pro", "serve": "percentage", "percentage": 1,
         "conditions": [{"attribute": "plan", "operator": "equals", "values": ["pro"]}]}])
    html = viewer.post(EXPLAIN, {"user_id": "user_0", "attributes": '{"email": "ana@ourcompany.com"}'},
                       HTTP_HX_REQUEST="true").content.decode()
    assert result(html, "reason") == "targeting rule staff matched and serves it (RULE_MATCH)"
    assert "gets the feature" in result(html, "verdict")
    assert "targeting rule staff decides before the flag&#x27;s rollout" in html
    asked_again = '"attributes": "{\\u0022email\\u0022: \\u0022ana@ourcompany.com\\u0022}"'
    assert asked_again in html  # with the same attributes when the flag changes
    html = viewer.get(EXPLAIN, {"user_id": "user_0", "attributes": '{"plan": "pro"}'},
                      HTTP_HX_REQUEST="true").content.decode()
    assert result(html, "reason") == ("targeting rule pro matched and serves 1.00%: bucket 4572 is not below it "
                                      "(RULE_MATCH)")
    assert "does not get the feature" in result(html, "verdict")
    html = viewer.get(EXPLAIN, {"user_id": "user_0"}, HTTP_HX_REQUEST="true").content.decode()
    assert result(html, "reason") == "bucket 4572 is not below the rollout 10.00% (OUT_OF_ROLLOUT)"


@pytest.mark.django_db
@pytest.mark.parametrize("attributes", ["{plan: pro}", '["pro"]', '"pro"', "12"])
def test_attributes_that_are_no_json_object_are_a_400_in_the_box(viewer, patch_flag, attributes):
    response = viewer.get(EXPLAIN, {"user_id": "user_0", "attributes": attributes}, HTTP_HX_REQUEST="true")
    html = response.content.decode()
    assert response.status_code == 400 and "Attributes must be a JSON object" in html
    assert "explain-reason" not in html


@pytest.mark.django_db
def test_the_box_has_an_attributes_field(viewer, patch_flag):
    html = viewer.get("/flags/patch_mode_enabled/").content.decode()
    assert '<label for="explain-attributes">Attributes' in html and 'name="attributes"' in html
