"""The ops command line: set_rollout, flag_eval, bootstrap."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from django.core.management import call_command, execute_from_command_line

from flags import evaluation, services
from flags.models import AuditEntry, Flag, Source, UserOverride

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def keep_the_test_connection(monkeypatch):
    # manage.py closes every connection when a command ends; inside a test that would close the
    # connection holding the test's transaction (PostgreSQL).
    monkeypatch.setattr("django.core.management.base.connections.close_all", lambda: None)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """Run manage.py as a shell would, returning (exit code, stdout, stderr)."""
    code = 0
    try:
        execute_from_command_line(["manage.py", *argv])
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_set_rollout_changes_the_flag_and_audits_as_cli(capsys, flag):
    code, out, _ = run(capsys, "set_rollout", "patch_mode_enabled", "10", "--enable", "--reason", "week 1")
    assert code == 0 and "enabled, rollout 10.00%, version 2" in out
    flag.refresh_from_db()
    assert (flag.enabled, flag.rollout_percentage) == (True, Decimal("10.00"))
    entry = AuditEntry.objects.filter(flag=flag).latest("id")
    assert (entry.source, entry.reason, entry.actor_kind) == ("cli", "week 1", "system")
    assert entry.actor.startswith("cli:")


def test_set_rollout_disable_flips_the_kill_switch(capsys, flag, actor):
    services.flag_set_rollout(flag=flag, percentage=50, enabled=True, actor=actor, source=Source.CLI)
    code, _, _ = run(capsys, "set_rollout", "patch_mode_enabled", "50", "--disable")
    flag.refresh_from_db()
    assert code == 0 and flag.enabled is False


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["set_rollout", "no_such_flag", "10"], "unknown flag"),
        (["set_rollout", "patch_mode_enabled", "101"], "between 0 and 100"),
        (["set_rollout", "patch_mode_enabled", "-5"], "between 0 and 100"),
        (["set_rollout", "patch_mode_enabled", "ten"], "must be a number"),
        (["set_rollout", "patch_mode_enabled", "nan"], "must be a number"),
        (["set_rollout", "patch_mode_enabled", "10.555"], "two decimal places"),
        (["set_rollout", "patch_mode_enabled", "10", "--expected-version", "7"], "since version 7"),
        (["flag_eval", "no_such_flag", "u1"], "unknown flag"),
        (["flag_eval", "patch_mode_enabled", "u1", "   "], "must not be blank"),
        (["flag_eval", "patch_mode_enabled", "x" * 300], "at most 255"),
    ],
)
def test_bad_input_exits_non_zero_with_one_line_and_changes_nothing(capsys, flag, argv, expected):
    code, out, err = run(capsys, *argv)
    assert code != 0
    assert expected in err
    assert len(err.strip().splitlines()) == 1, err
    assert out == ""
    flag.refresh_from_db()
    assert (flag.version, flag.enabled, flag.rollout_percentage) == (1, False, Decimal("0.00"))
    assert AuditEntry.objects.count() == 1


def test_enable_and_disable_together_is_refused(capsys, flag):
    code, _, err = run(capsys, "set_rollout", "patch_mode_enabled", "10", "--enable", "--disable")
    assert code != 0 and "not allowed with" in err
    flag.refresh_from_db()
    assert flag.version == 1


def test_flag_eval_prints_one_json_object_per_user_with_the_reason(capsys, flag, actor):
    services.flag_set_rollout(flag=flag, percentage="1.56", enabled=True, actor=actor, source=Source.CLI)
    services.override_add(flag=flag, user_id="user_0", kind="allow", actor=actor, source=Source.CLI)
    services.override_add(flag=flag, user_id="user_1", kind="deny", actor=actor, source=Source.CLI)
    code, out, _ = run(capsys, "flag_eval", "patch_mode_enabled", "user_0", "user_1", "user_2", "user_3")
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 0
    assert [(d["user_id"], d["enabled"], d["reason"]) for d in lines] == [
        ("user_0", True, "ALLOW_LIST"),
        ("user_1", False, "DENY_LIST"),
        ("user_2", False, "OUT_OF_ROLLOUT"),
        ("user_3", False, "OUT_OF_ROLLOUT"),
    ]
    # Buckets from the shared vectors: user_1 is 155 (under 156, but the deny list wins).
    assert [d["bucket"] for d in lines] == [4572, 155, 7434, 1796]
    assert set(lines[0]) == {"flag", "user_id", "enabled", "reason", "bucket"}


def test_flag_eval_reports_the_legacy_cohort_as_bucket(capsys, make_flag):
    make_flag("legacy_flag", bucketing=evaluation.LEGACY, enabled=True, rollout_percentage=25)
    code, out, _ = run(capsys, "flag_eval", "legacy_flag", "user_10", "user_0")
    decisions = [json.loads(line) for line in out.splitlines()]
    assert code == 0
    assert [(d["bucket"], d["enabled"]) for d in decisions] == [(1, True), (76, False)]


def test_flag_eval_takes_context_attributes_for_the_targeting_rules(capsys, flag, actor):
    services.flag_set_rollout(flag=flag, percentage=0, enabled=True, actor=actor, source=Source.CLI)
    services.flag_set_rules(flag=flag, actor=actor, source=Source.CLI, rules=[
        {"id": "pro-teams", "serve": "on",
         "conditions": [{"attribute": "plan", "operator": "equals", "values": ["pro"]},
                        {"attribute": "seats", "operator": "gte", "values": [10]}]},
        {"id": "v2", "serve": "on",
         "conditions": [{"attribute": "app", "operator": "semver_gte", "values": ["2.0.0"]}]},
    ])
    code, out, _ = run(capsys, "flag_eval", "patch_mode_enabled", "user_0", "--attr", "plan=pro", "--attr", "seats=12")
    assert code == 0 and json.loads(out) | {"bucket": None} == {
        "flag": "patch_mode_enabled", "user_id": "user_0", "enabled": True, "reason": "RULE_MATCH",
        "bucket": None, "rule": "pro-teams"}
    # seats="12" (quoted JSON) is a string, which no numeric condition takes; 2.1.0 is not JSON: a string.
    code, out, _ = run(capsys, "flag_eval", "patch_mode_enabled", "user_0", "--attr", "plan=pro",
                       "--attr", 'seats="12"', "--attr", "app=2.1.0")
    assert (json.loads(out)["reason"], json.loads(out)["rule"]) == ("RULE_MATCH", "v2")
    code, out, _ = run(capsys, "flag_eval", "patch_mode_enabled", "user_0")
    assert json.loads(out)["reason"] == "OUT_OF_ROLLOUT" and "rule" not in json.loads(out)


@pytest.mark.parametrize("pair", ["plan", "=pro", " =pro"])
def test_flag_eval_refuses_an_attribute_without_a_name_and_a_value_in_one_line(capsys, flag, pair):
    code, out, err = run(capsys, "flag_eval", "patch_mode_enabled", "user_0", "--attr", pair)
    assert code != 0 and out == ""
    assert len(err.strip().splitlines()) == 1 and "NAME=VALUE" in err


def test_bootstrap_creates_the_flag_and_admin_once(capsys, db, django_user_model):
    call_command("bootstrap")
    first = capsys.readouterr().out
    assert "password:" in first and "patch_mode_enabled" in first
    password = first.split("password: ")[1].split()[0]
    admin = django_user_model.objects.get(username="admin")
    assert admin.is_superuser and admin.check_password(password)
    call_command("bootstrap")
    assert "password" not in capsys.readouterr().out
    flag = Flag.objects.get()
    assert (flag.key, flag.enabled, flag.rollout_percentage) == ("patch_mode_enabled", False, Decimal("0.00"))
    assert not UserOverride.objects.exists()
