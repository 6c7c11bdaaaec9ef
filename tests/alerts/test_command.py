"""`manage.py check_alerts`: one check now, printing every rule's state and every action; --dry-run changes nothing."""

from __future__ import annotations

import re
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from alerts import plans
from alerts.models import Alert, AlertRule, Notification
from flags import services
from flags.actors import Actor
from flags.models import AuditEntry, Flag, Source
from tests.alerts import feed

pytestmark = pytest.mark.django_db

ERROR_RULE = "Patch Mode error rate above 5%"
LATENCY_RULE = "Latency above 1.5x baseline"
TOKENS_RULE = "Token savings low (tokens above 0.8x baseline)"
SUCCESS_RULE = "Success rate below 95%"
ACTOR = Actor.system("test-suite")


def run(*args: str) -> str:
    out = StringIO()
    call_command("check_alerts", *args, stdout=out)
    return out.getvalue()


def states(output: str, flag_key: str = "patch_mode_enabled") -> dict[str, str]:
    """Rule name -> printed state, from the block of lines under `flag_key:`."""
    lines = output.splitlines()
    found: dict[str, str] = {}
    for line in lines[lines.index(f"{flag_key}:") + 1:]:
        if not line.startswith(" "):
            break  # the next flag, a plan, or the dry-run note
        match = re.match(r"  \[\s*(?P<state>firing|ok|no data)\] (?P<name>[^:]+): ", line)
        if match:
            found[match["name"]] = match["state"]
    return found


@pytest.fixture
def troubled(flag, settings):
    """patch_mode_enabled at 80%: 20% errors (error and success rules fire), half the baseline's tokens (ok),
    and a latency rule needing more calls than there are (no data)."""
    settings.ALERT_EMAILS, settings.ALERT_WEBHOOK_URL = ["ops@example.com"], ""
    services.flag_set_rollout(flag=flag, percentage=80, enabled=True, actor=ACTOR, source=Source.UI)
    AlertRule.objects.filter(flag=flag, name=LATENCY_RULE).update(min_samples=1000)
    feed(calls=20, failures=4, tokens=500)
    feed(calls=20, mode="single", tokens=1000)
    return flag


def test_check_alerts_prints_each_rules_state_and_the_actions_taken(troubled):
    output = run("--flag", "patch_mode_enabled")
    assert states(output) == {ERROR_RULE: "firing", LATENCY_RULE: "no data", TOKENS_RULE: "ok",
                              SUCCESS_RULE: "firing"}
    assert "did: alert opened" in output
    assert re.search(r"did: rollout reduced from 80\.00% to 50(\.00)?%", output)
    assert "Dry run" not in output
    troubled.refresh_from_db()
    assert troubled.rollout_percentage == Decimal("50")
    assert sorted(Alert.objects.values_list("rule__name", flat=True)) == [ERROR_RULE, SUCCESS_RULE]
    assert Notification.objects.count() == 2
    (entry,) = AuditEntry.objects.filter(flag=troubled, source=Source.ALERT)
    assert entry.actor.startswith("alert-rule:")


def test_a_second_run_reports_the_cooldown_and_opens_nothing_new(troubled):
    run("--flag", "patch_mode_enabled")
    output = run("--flag", "patch_mode_enabled")
    assert states(output)[ERROR_RULE] == "firing"
    assert "did: in cooldown (30 min since the last action): no action" in output
    assert "alert opened" not in output
    assert Alert.objects.count() == 2
    assert AuditEntry.objects.filter(source=Source.ALERT).count() == 1


def test_dry_run_says_what_it_would_do_changes_nothing_and_says_so(troubled):
    troubled.refresh_from_db()
    version, audits = troubled.version, AuditEntry.objects.count()
    output = run("--flag", "patch_mode_enabled", "--dry-run")
    assert states(output)[ERROR_RULE] == "firing"
    assert "would: alert opened" in output and "did:" not in output
    assert re.search(r"would: rollout reduced from 80\.00% to 50(\.00)?%", output)
    assert output.rstrip().endswith("Dry run: nothing was changed and nothing was sent.")
    troubled.refresh_from_db()
    assert (troubled.rollout_percentage, troubled.version) == (Decimal("80"), version)
    assert Alert.objects.count() == 0 and Notification.objects.count() == 0
    assert AuditEntry.objects.count() == audits


def test_an_unknown_flag_is_a_command_error(flag):
    with pytest.raises(CommandError, match="unknown flag 'nope'"):
        run("--flag", "nope")


def test_without_flag_every_flag_is_checked(make_flag):
    make_flag("alpha_flag")
    make_flag("beta_flag")
    output = run()
    assert output.index("alpha_flag:") < output.index("beta_flag:")
    assert set(states(output, "alpha_flag").values()) == set(states(output, "beta_flag").values()) == {"no data"}
    assert len(states(output, "beta_flag")) == 4


def test_a_flag_without_enabled_rules_says_so(flag):
    AlertRule.objects.filter(flag=flag).update(enabled=False)
    assert "patch_mode_enabled:\n  (no enabled rules)" in run("--flag", "patch_mode_enabled")


def test_running_plans_are_ticked_and_printed_and_dry_run_only_says_would(make_flag):
    other = make_flag("other_flag", treatment_mode="v2", baseline_mode="v1")  # no calls of these modes
    plan = plans.plan_start(plan=plans.plan_create(flag=other, created_by="alice"), actor=ACTOR)
    assert f"plan {plan.pk}: would hold: 0 of 100 treatment calls needed" in run("--dry-run")
    plan.refresh_from_db()
    assert plan.status_note == "started by test-suite"
    assert f"plan {plan.pk}: did hold: 0 of 100 treatment calls needed" in run()
    plan.refresh_from_db()
    assert plan.status_note == "holding: 0 of 100 treatment calls needed"


def test_with_flag_only_that_flags_plans_are_printed(make_flag):
    make_flag("quiet_flag")
    other = make_flag("other_flag", treatment_mode="v2", baseline_mode="v1")
    plan = plans.plan_start(plan=plans.plan_create(flag=other, created_by="alice"), actor=ACTOR)
    output = run("--flag", "quiet_flag")
    assert "quiet_flag:" in output and "other_flag:" not in output
    assert f"plan {plan.pk}:" not in output


def test_with_flag_other_flags_plans_are_not_ticked(make_flag):
    make_flag("quiet_flag")
    other = make_flag("other_flag", treatment_mode="v2", baseline_mode="v1")
    plan = plans.plan_start(plan=plans.plan_create(flag=other, created_by="alice", stages=[(10, 0), (20, 0)],
                                                   min_samples=5), actor=ACTOR)
    feed(calls=5, mode="v2")  # healthy and the stage time is up: a tick of this plan would advance it
    assert plans.gate(plan, timezone.now())["decision"] == "advance"
    output = run("--flag", "quiet_flag")
    assert "other_flag" not in output
    plan.refresh_from_db()
    assert plan.current_stage == 0
    assert Flag.objects.get(key="other_flag").rollout_percentage == 10
