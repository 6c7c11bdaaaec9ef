"""Alerts and rollout plans on the dashboard, through Django's test client."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.test import Client

from alerts import services as alert_services
from alerts.models import DEFAULT_RULES, Alert, AlertRule, PlanState, RolloutPlan
from flags import services as flag_services
from flags.actors import Actor
from flags.models import AuditEntry, Flag, Source
from tests.alerts import begin_stage, feed, minute_ago

pytestmark = pytest.mark.django_db


@pytest.fixture
def firing(flag):
    """A rollout stage begun three hours ago, then a minute of Patch Mode calls half failing and using as many
    tokens as Single Mode: the critical error-rate and error-delta rules and the warning tokens rule fire."""
    t = minute_ago()
    begin_stage(flag, t, 20)
    feed(calls=40, failures=20, at=t + timedelta(minutes=1), tokens=800)
    feed(calls=40, mode="single", at=t + timedelta(minutes=1), tokens=800)
    alert_services.check_flag(flag.key, now=t + timedelta(minutes=3))
    return Alert.objects.get(flag=flag, rule__metric="error_rate")


def test_new_flags_get_the_five_default_rules(flag):
    assert AlertRule.objects.filter(flag=flag).count() == 5
    assert sorted(AlertRule.objects.filter(flag=flag).values_list("name", flat=True)) == sorted(
        rule["name"] for rule in DEFAULT_RULES)


def test_open_alerts_panel_lists_firing_alerts_and_a_manager_acknowledges(client_in, firing):
    manager = client_in("Rollout managers")
    panel = manager.get("/flags/patch_mode_enabled/alerts", HTTP_HX_REQUEST="true").content.decode()
    assert "Patch Mode error rate above 5%" in panel and "Acknowledge" in panel
    response = manager.post(f"/flags/patch_mode_enabled/alerts/{firing.pk}/acknowledge", HTTP_HX_REQUEST="true")
    assert response.status_code == 200 and b"Acknowledged by user-managers" in response.content
    firing.refresh_from_db()
    assert (firing.state, firing.acknowledged_by) == ("acknowledged", "user-managers")


def test_viewers_see_alerts_but_cannot_acknowledge(client_in, firing):
    viewer = client_in("Rollout viewers")
    panel = viewer.get("/flags/patch_mode_enabled/alerts").content.decode()
    assert "Patch Mode error rate above 5%" in panel and "Acknowledge</button>" not in panel
    assert viewer.post(f"/flags/patch_mode_enabled/alerts/{firing.pk}/acknowledge").status_code == 403
    firing.refresh_from_db()
    assert firing.state == "firing"


def test_alert_history_filters_by_flag_state_and_severity(client_in, firing, make_flag):
    viewer = client_in("Rollout viewers")
    page = viewer.get("/alerts/", {"flag": "patch_mode_enabled", "severity": "critical"}).content.decode()
    assert page.count('class="alert-row"') == 2 and "Patch Mode error rate above 5%" in page
    assert "Patch Mode errors more than 1 point above Single Mode" in page and "Token savings low" not in page
    assert 'class="alert-row"' not in viewer.get("/alerts/", {"state": "resolved"}).content.decode()
    warnings = viewer.get("/alerts/", {"severity": "warning"}).content.decode()
    assert warnings.count('class="alert-row"') == 1 and "Token savings low" in warnings
    assert "error rate above 5%" not in warnings and "Success rate below 95%" not in warnings


def test_alert_history_shows_values_with_their_units(client_in, firing):
    page = client_in("Rollout viewers").get("/alerts/").content.decode()
    for alert in Alert.objects.select_related("rule"):
        unit = {"error_rate": "%", "error_rate_delta": " points", "tokens_ratio": "x baseline"}[alert.rule.metric]
        number = f"{alert.value:+.2f}" if unit == " points" else f"{alert.value:.2f}"
        assert f"<td>{number}{unit}</td>" in page


def plan_post(client: Client, action: str):
    return client.post("/flags/patch_mode_enabled/plan/action", {"action": action}, HTTP_HX_REQUEST="true")


def test_a_manager_creates_starts_pauses_resumes_advances_and_aborts_a_plan(client_in, flag):
    manager = client_in("Rollout managers")
    assert plan_post(manager, "create").status_code == 200
    plan = RolloutPlan.objects.get(flag=flag)
    assert [s.percentage for s in plan.stages.order_by("order")] == [10, 20, 50, 100]
    response = plan_post(manager, "start")
    assert response.status_code == 200 and response["HX-Trigger"].startswith('{"plan-changed"')
    flag.refresh_from_db()
    assert (flag.enabled, flag.rollout_percentage) == (True, Decimal("10.00"))
    assert plan_post(manager, "pause").status_code == 200
    assert RolloutPlan.objects.get(pk=plan.pk).state == PlanState.PAUSED
    assert plan_post(manager, "resume").status_code == 200
    assert plan_post(manager, "advance").status_code == 200
    flag.refresh_from_db()
    assert flag.rollout_percentage == Decimal("20.00")
    assert plan_post(manager, "abort").status_code == 200
    flag.refresh_from_db()
    assert flag.rollout_percentage == 0 and RolloutPlan.objects.get(pk=plan.pk).state == PlanState.ROLLED_BACK
    sources = list(AuditEntry.objects.filter(flag=flag).order_by("id").values_list("source", "actor"))
    assert ("ui", "user-managers") in sources


def test_unknown_plan_action_is_400_and_viewers_get_403(client_in, flag):
    assert plan_post(client_in("Rollout managers"), "launch-rockets").status_code == 400
    assert plan_post(client_in("Rollout viewers"), "create").status_code == 403
    assert not RolloutPlan.objects.exists()


@pytest.mark.parametrize("then", ["", "start", "pause"])
def test_a_second_plan_is_refused_while_one_is_draft_running_or_paused(client_in, flag, then):
    manager = client_in("Rollout managers")
    plan_post(manager, "create")
    for action in {"": [], "start": ["start"], "pause": ["start", "pause"]}[then]:
        assert plan_post(manager, action).status_code == 200
    response = plan_post(manager, "create")
    assert response.status_code == 400 and "HX-Trigger" not in response
    assert "this flag already has a plan in draft, running or paused" in response.content.decode()
    assert RolloutPlan.objects.filter(flag=flag).count() == 1


def test_moving_the_slider_pauses_a_running_plan_and_says_so(client_in, flag):
    manager = client_in("Rollout managers")
    plan_post(manager, "create")
    plan_post(manager, "start")
    flag.refresh_from_db()
    response = manager.post("/flags/patch_mode_enabled/rollout",
                            {"rollout_percentage": "5", "expected_version": str(flag.version), "reason": "too hot"})
    assert response.status_code == 200
    plan = RolloutPlan.objects.get(flag=flag)
    assert plan.state == PlanState.PAUSED and "user-managers" in plan.status_note and "too hot" in plan.status_note
    assert "(dashboard)" in plan.status_note  # sources read the same on every page
    panel = manager.get("/flags/patch_mode_enabled/plan").content.decode()
    assert 'id="plan-state">paused<' in panel and "too hot" in panel


def test_flag_list_shows_the_plan_stage(client_in, flag):
    manager = client_in("Rollout managers")
    plan_post(manager, "create")
    plan_post(manager, "start")
    assert "stage 1 of 4 (10%), running" in manager.get("/").content.decode()


def test_the_plan_panel_shows_the_timeline_and_gate(client_in, flag):
    manager = client_in("Rollout managers")
    plan_post(manager, "create")
    plan_post(manager, "start")
    panel = manager.get("/flags/patch_mode_enabled/plan").content.decode()
    assert panel.count('class="stage') == 4 and 'class="stage current"' in panel
    assert "Stage 1 of 4 (10%)" in panel and "gate: <strong>hold</strong>" in panel and "time left 6d 23h" in panel
    assert Flag.objects.get(pk=flag.pk).rollout_percentage == Decimal("10.00")


def test_turning_a_flag_on_while_a_critical_guardrail_fires_needs_the_confirmation(client_in, firing, flag):
    manager = client_in("Rollout managers")
    flag.refresh_from_db()
    assert flag.rollout_percentage == 0  # rolled back by the firing rules
    flag_services.flag_update(flag=flag, enabled=False, actor=Actor.system("ops"), source=Source.CLI)
    flag.refresh_from_db()
    version = flag.version
    refused = manager.post(f"/flags/{flag.key}/enabled", {"enabled": "on", "reason": "test"}, HTTP_HX_REQUEST="true")
    assert refused.status_code == 400
    assert "Patch Mode error rate above 5%" in refused.content.decode()
    flag.refresh_from_db()
    assert (flag.enabled, flag.version) == (False, version)
    page = manager.get(f"/flags/{flag.key}/").content.decode()
    assert "Turn patch_mode_enabled on anyway?" in page  # the dialog that is the confirmation names why
    confirmed = manager.post(f"/flags/{flag.key}/enabled", {"enabled": "on", "confirmed": "yes", "reason": "test"},
                             HTTP_HX_REQUEST="true")
    assert confirmed.status_code == 200
    flag.refresh_from_db()
    assert flag.enabled


def test_the_episode_of_a_disabled_rule_resolves_and_stops_asking_for_confirmation(client_in, firing, flag):
    AlertRule.objects.filter(flag=flag, severity="critical").update(enabled=False)
    t = firing.opened_at
    alert_services.check_all(now=t + timedelta(minutes=5))
    assert not Alert.objects.filter(flag=flag, severity="critical", state__in=["firing", "acknowledged"]).exists()
    resolved = Alert.objects.get(pk=firing.pk)
    assert resolved.resolved_at == t + timedelta(minutes=5) and "rule was disabled" in resolved.message
    response = client_in("Rollout managers").post(f"/flags/{flag.key}/rollout",
                                                  {"rollout_percentage": "1", "reason": "test"},
                                                  HTTP_HX_REQUEST="true")
    assert response.status_code == 200
