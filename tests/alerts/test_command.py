"""`manage.py check_alerts`: one check now, printing every rule's state and every action; --dry-run changes nothing."""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from alerts import plans
from alerts import services as alert_services
from alerts.models import DEFAULT_RULES, Alert, AlertRule, Notification
from flags.actors import Actor
from flags.models import AuditEntry, Flag, Source
from tests.alerts import begin_stage, feed

pytestmark = pytest.mark.django_db

ERROR_RULE = "Patch Mode error rate above 5%"
LATENCY_RULE = "Latency above 1.5x baseline"
TOKENS_RULE = "Token savings low (tokens above 0.8x baseline)"
SUCCESS_RULE = "Success rate below 95%"
DELTA_RULE = "Patch Mode errors more than 1 point above Single Mode"
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
        match = re.match(r"  \[\s*(?P<state>regressing|healthy|not enough data|covered)\] (?P<name>[^:]+): ", line)
        if match:
            found[match["name"]] = match["state"]
    return found


@pytest.fixture
def make_old_flag(make_flag, monkeypatch):
    """make_flag, but the flag is created (and its creation audited) an hour ago. The command checks at the
    wall clock, and a flag's stage begins at its latest exposure change: a stage begun a few minutes ago
    needs a flag that existed before it."""

    def make(*args, **kwargs):  # type: ignore[no-untyped-def]
        created = timezone.now() - timedelta(hours=1)
        with monkeypatch.context() as patched:
            patched.setattr(timezone, "now", lambda: created)
            return make_flag(*args, **kwargs)

    return make


@pytest.fixture
def flag(make_old_flag):
    return make_old_flag()


def fail_patch_mode(at, *, single: bool = True) -> None:  # type: ignore[no-untyped-def]
    """A minute of Patch Mode calls all failing at `at`, with half the baseline's tokens (healthy) and a
    latency whose geometric mean is exactly 1.5x the baseline's (the threshold: never decided either way),
    beside healthy Single Mode calls."""
    # ln(1 + ms) averages to ln(1.5 x 101) over these two halves: (1 + 100)(1 + 226.25) = (1.5 x 101)^2.
    feed(calls=20, failures=20, tokens=500, latency_ms=100.0, at=at)
    feed(calls=20, failures=20, tokens=500, latency_ms=226.25, at=at)
    if single:
        feed(calls=40, mode="single", tokens=1000, latency_ms=100.0, at=at)


@pytest.fixture
def troubled(flag, settings):
    """patch_mode_enabled at 80% since a few minutes ago (a rollout stage), then a complete minute of Patch
    Mode failing: the error and delta rules regress, the success rule is covered by the error rule, the tokens
    rule is healthy (half the baseline's tokens), the latency rule has not enough data (right at 1.5x)."""
    settings.ALERT_EMAILS, settings.ALERT_WEBHOOK_URL = ["ops@example.com"], ""
    at = timezone.now().replace(second=0, microsecond=0) - timedelta(minutes=3)
    begin_stage(flag, at, 80)
    fail_patch_mode(at + timedelta(minutes=1))
    return flag


def test_check_alerts_prints_each_rules_state_and_the_actions_taken(troubled):
    output = run("--flag", "patch_mode_enabled")
    assert states(output) == {ERROR_RULE: "regressing", LATENCY_RULE: "not enough data", TOKENS_RULE: "healthy",
                              SUCCESS_RULE: "covered", DELTA_RULE: "regressing"}
    assert re.search(r"^  \[     regressing\] Patch Mode error rate above 5%: ", output, re.M)
    assert re.search(r"^ {20}did: alert opened$", output, re.M)
    assert re.search(r"^ {20}did: rollout reduced from 80\.00% to 0(\.00)?%$", output, re.M)
    assert "Dry run" not in output
    troubled.refresh_from_db()
    assert troubled.rollout_percentage == Decimal("0")
    assert sorted(Alert.objects.values_list("rule__name", flat=True)) == sorted([ERROR_RULE, DELTA_RULE])
    assert Notification.objects.count() == 2
    (entry,) = AuditEntry.objects.filter(flag=troubled, source=Source.ALERT)
    assert entry.actor.startswith("alert-rule:")


def test_a_second_run_reports_the_cooldown_and_opens_nothing_new(flag, settings):
    # The first check acted ten minutes ago (its rollback began a new stage); the new stage's complete minutes
    # fail again, so the rules regress again within the 30-minute cooldown.
    settings.ALERT_EMAILS, settings.ALERT_WEBHOOK_URL = ["ops@example.com"], ""
    at = timezone.now().replace(second=0, microsecond=0) - timedelta(minutes=12)
    begin_stage(flag, at, 80)
    fail_patch_mode(at + timedelta(minutes=1))
    alert_services.check_all(now=at + timedelta(minutes=2, seconds=30))
    flag.refresh_from_db()
    assert flag.rollout_percentage == 0 and Alert.objects.count() == 2
    fail_patch_mode(at + timedelta(minutes=4))
    output = run("--flag", "patch_mode_enabled")
    assert states(output)[ERROR_RULE] == "regressing"
    assert re.search(r"^ {20}did: in cooldown \(30 min since the last action\): no action$", output, re.M)
    assert "alert opened" not in output
    assert Alert.objects.count() == 2
    assert AuditEntry.objects.filter(source=Source.ALERT).count() == 1


def test_dry_run_says_what_it_would_do_changes_nothing_and_says_so(troubled):
    troubled.refresh_from_db()
    version, audits = troubled.version, AuditEntry.objects.count()
    output = run("--flag", "patch_mode_enabled", "--dry-run")
    assert states(output)[ERROR_RULE] == "regressing"
    assert re.search(r"^ {20}would: alert opened$", output, re.M) and "did:" not in output
    assert re.search(r"^ {20}would: rollout reduced from 80\.00% to 0(\.00)?%$", output, re.M)
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
    assert set(states(output, "alpha_flag").values()) == set(states(output, "beta_flag").values()) == {
        "not enough data"}
    assert set(states(output, "beta_flag")) == {rule["name"] for rule in DEFAULT_RULES}
    assert len(states(output, "beta_flag")) == 5


def test_a_flag_without_enabled_rules_says_so(flag):
    AlertRule.objects.filter(flag=flag).update(enabled=False)
    assert "patch_mode_enabled:\n  (no enabled rules)" in run("--flag", "patch_mode_enabled")


def test_running_plans_are_ticked_and_printed_and_dry_run_only_says_would(make_flag):
    other = make_flag("other_flag", treatment_mode="v2", baseline_mode="v1")  # no calls of these modes
    plan = plans.plan_start(plan=plans.plan_create(flag=other, created_by="alice"), actor=ACTOR)
    ends_at = plan.stage_started_at + timedelta(days=7)  # the first of the default one-week stages
    why = f"stage runs until {ends_at:%Y-%m-%d %H:%M} UTC"
    assert f"plan {plan.pk}: would hold: {why}" in run("--dry-run")
    plan.refresh_from_db()
    assert plan.status_note == "started by test-suite"
    assert f"plan {plan.pk}: did hold: {why}" in run()
    plan.refresh_from_db()
    assert plan.status_note == f"holding: {why}"


def test_with_flag_only_that_flags_plans_are_printed(make_flag):
    make_flag("quiet_flag")
    other = make_flag("other_flag", treatment_mode="v2", baseline_mode="v1")
    plan = plans.plan_start(plan=plans.plan_create(flag=other, created_by="alice"), actor=ACTOR)
    output = run("--flag", "quiet_flag")
    assert "quiet_flag:" in output and "other_flag:" not in output
    assert f"plan {plan.pk}:" not in output


def test_with_flag_other_flags_plans_are_not_ticked(make_flag, make_old_flag):
    make_flag("quiet_flag")
    other = make_old_flag("other_flag", treatment_mode="v2", baseline_mode="v1")
    at = timezone.now().replace(second=0, microsecond=0) - timedelta(minutes=3)
    plan = plans.plan_start(plan=plans.plan_create(flag=other, created_by="alice", stages=[(10, 0), (20, 0)],
                                                   min_samples=5), actor=ACTOR, now=at)
    # A complete minute of the stage failing: a tick of this plan would roll it back.
    feed(calls=40, failures=40, mode="v2", at=at + timedelta(minutes=1))
    assert plans.gate(plan, timezone.now())["decision"] == "rollback"
    output = run("--flag", "quiet_flag")
    assert "other_flag" not in output
    plan.refresh_from_db()
    assert (plan.state, plan.current_stage) == ("running", 0)
    assert Flag.objects.get(key="other_flag").rollout_percentage == 10
