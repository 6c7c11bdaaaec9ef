"""The alerts admin: a rollout plan made there goes through alerts.plans.plan_create, with its checks."""

from __future__ import annotations

import pytest
from django.urls import reverse

from alerts import plans
from alerts.models import PlanState, RolloutPlan

pytestmark = pytest.mark.django_db


def plan_form(flag, stages, **overrides):  # type: ignore[no-untyped-def]
    data = {"flag": str(flag.pk), "advance_below": "2", "rollback_above": "5", "min_samples": "100",
            "stages-TOTAL_FORMS": str(len(stages)), "stages-INITIAL_FORMS": "0",
            "stages-MIN_NUM_FORMS": "0", "stages-MAX_NUM_FORMS": "1000",
            "updated_at_0": "2026-11-27", "updated_at_1": "12:00:00"}  # the admin shows it, filled in
    for index, (order, percentage, minutes) in enumerate(stages):
        data |= {f"stages-{index}-order": str(order), f"stages-{index}-percentage": str(percentage),
                 f"stages-{index}-min_duration_minutes": str(minutes)}
    return data | overrides


def test_a_plan_added_in_the_admin_is_made_by_plan_create(admin_client, admin_user, flag):
    response = admin_client.post(reverse("admin:alerts_rolloutplan_add"),
                                 plan_form(flag, [(1, 50, 60), (0, 10, 30)]))
    assert response.status_code == 302
    plan = RolloutPlan.objects.get(flag=flag)
    assert plan.state == PlanState.DRAFT
    assert plan.created_by == admin_user.get_username()
    assert [(s.order, s.percentage, s.min_duration_minutes) for s in plan.stages.order_by("order")] == [
        (0, 10, 30), (1, 50, 60)]


def test_the_admin_refuses_falling_stages_as_plan_create_does(admin_client, flag):
    response = admin_client.post(reverse("admin:alerts_rolloutplan_add"),
                                 plan_form(flag, [(0, 50, 60), (1, 10, 60)]), follow=True)
    assert "stages must rise" in response.content.decode().lower()
    assert not RolloutPlan.objects.exists()


def test_the_admin_refuses_a_second_open_plan_for_a_flag(admin_client, flag):
    plans.plan_create(flag=flag, created_by="alice")
    response = admin_client.post(reverse("admin:alerts_rolloutplan_add"), plan_form(flag, [(0, 10, 60)]),
                                 follow=True)
    assert "already has a plan in draft, running or paused" in response.content.decode().lower()
    assert RolloutPlan.objects.filter(flag=flag).count() == 1
