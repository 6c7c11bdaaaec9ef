"""Services: every write validates, bumps the version and writes one audit entry in one transaction."""

from __future__ import annotations

import threading
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.db import connection, connections

from flags import evaluation, selectors, services
from flags.actors import Actor
from flags.models import AuditEntry, Flag, Source, UserOverride
from tests.conftest import requires_postgres

pytestmark = pytest.mark.django_db


def entries(flag: Flag) -> list[AuditEntry]:
    return list(AuditEntry.objects.filter(flag=flag).order_by("id"))


def test_create_writes_one_audit_entry_with_the_initial_state(make_flag):
    flag = make_flag("new_flag", rollout_percentage="12.5", reason="try it")
    (entry,) = entries(flag)
    assert (entry.action, entry.source, entry.actor, entry.actor_kind) == ("create", "cli", "test-suite", "system")
    assert entry.before == {}
    assert entry.after["rollout_percentage"] == "12.50"
    assert entry.after["enabled"] is False
    assert entry.reason == "try it"
    assert flag.salt == "new_flag" and flag.version == 1 and entry.flag_version == 1


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"key": "Bad Key"}, "key"),
        ({"key": ""}, "key"),
        ({"key": "ok", "rollout_percentage": "101"}, "rollout_percentage"),
        ({"key": "ok", "bucketing": "md5"}, "bucketing"),
        ({"key": "ok", "treatment_mode": "same", "baseline_mode": "same"}, "baseline_mode"),
    ],
)
def test_create_rejects_bad_input_naming_the_field_and_writes_nothing(actor, kwargs, field):
    with pytest.raises(ValidationError) as caught:
        services.flag_create(actor=actor, source=Source.CLI, **kwargs)
    assert field in caught.value.message_dict
    assert Flag.objects.count() == 0 and AuditEntry.objects.count() == 0


def test_create_refuses_a_duplicate_key(flag, actor):
    with pytest.raises(ValidationError) as caught:
        services.flag_create(key=flag.key, actor=actor, source=Source.CLI)
    assert "already exists" in caught.value.message_dict["key"][0]


def test_set_rollout_bumps_version_and_audits_before_and_after(flag, actor):
    updated = services.flag_set_rollout(
        flag=flag, percentage="10", enabled=True, actor=actor, source=Source.UI, reason="week 1"
    )
    assert (updated.rollout_percentage, updated.enabled, updated.version) == (Decimal("10.00"), True, 2)
    entry = entries(flag)[-1]
    assert entry.action == "update" and entry.source == "ui" and entry.reason == "week 1"
    assert entry.before == {"rollout_percentage": "0.00", "enabled": False, "version": 1}
    assert entry.after == {"rollout_percentage": "10.00", "enabled": True, "version": 2}
    assert entry.flag_version == 2


def test_single_field_changes_get_specific_action_names(flag, actor):
    services.flag_update(flag=flag, enabled=True, actor=actor, source=Source.CLI)
    services.flag_set_rollout(flag=flag, percentage=20, actor=actor, source=Source.CLI)
    services.flag_update(flag=flag, enabled=False, actor=actor, source=Source.CLI)
    assert [e.action for e in entries(flag)] == ["create", "enable", "set_rollout", "disable"]


def test_a_change_to_the_same_values_writes_nothing(flag, actor):
    services.flag_set_rollout(flag=flag, percentage="0.00", enabled=False, actor=actor, source=Source.CLI)
    flag.refresh_from_db()
    assert flag.version == 1 and len(entries(flag)) == 1


@pytest.mark.parametrize("bad", ["101", "-1", "abc", "NaN", "Infinity", "12.345", "", None, True, [], "1e400"])
def test_bad_percentages_are_refused_with_the_field_named_and_nothing_changes(flag, actor, bad):
    with pytest.raises(ValidationError) as caught:
        services.flag_set_rollout(flag=flag, percentage=bad, actor=actor, source=Source.API)
    assert "rollout_percentage" in caught.value.message_dict
    flag.refresh_from_db()
    assert (flag.rollout_percentage, flag.version, len(entries(flag))) == (Decimal("0.00"), 1, 1)


def test_unknown_flag_raises_flag_not_found(db, actor):
    with pytest.raises(services.FlagNotFound):
        services.flag_set_rollout(flag="nope", percentage=10, actor=actor, source=Source.CLI)


def test_key_cannot_be_changed(flag, actor):
    with pytest.raises(ValidationError) as caught:
        services.flag_update(flag=flag, actor=actor, source=Source.API, key="other")
    assert "key" in caught.value.message_dict


def test_stale_version_is_a_conflict_naming_who_changed_it_and_nothing_changes(flag, actor):
    alice = Actor.system("alice")
    services.flag_set_rollout(flag=flag, percentage=20, actor=alice, source=Source.UI, reason="test",
                              expected_version=1)
    with pytest.raises(services.VersionConflict) as caught:
        services.flag_set_rollout(flag=flag, percentage=50, actor=actor, source=Source.UI, reason="test",
                                  expected_version=1)
    conflict = caught.value
    assert conflict.current_version == 2 and conflict.expected_version == 1
    assert "alice" in str(conflict) and "20.00" in str(conflict)
    assert conflict.current_state()["rollout_percentage"] == "20.00"
    flag.refresh_from_db()
    assert flag.rollout_percentage == Decimal("20.00") and flag.version == 2
    assert len(entries(flag)) == 2


def test_matching_version_is_accepted(flag, actor):
    services.flag_set_rollout(flag=flag, percentage=5, actor=actor, source=Source.UI, reason="test", expected_version=1)
    flag.refresh_from_db()
    assert flag.version == 2


@pytest.mark.parametrize("field", ["salt", "bucketing"])
def test_reshuffling_changes_need_explicit_confirmation(flag, actor, field):
    value = "new-salt" if field == "salt" else "legacy"
    with pytest.raises(ValidationError) as caught:
        services.flag_update(flag=flag, actor=actor, source=Source.ADMIN, **{field: value})
    assert field in caught.value.message_dict
    services.flag_update(flag=flag, actor=actor, source=Source.ADMIN, confirm_reshuffle=True, **{field: value})
    flag.refresh_from_db()
    assert getattr(flag, field) == value


def test_only_reduce_refuses_more_exposure(flag, actor):
    services.flag_set_rollout(flag=flag, percentage=10, enabled=True, actor=actor, source=Source.UI, reason="test")
    with pytest.raises(ValidationError):
        services.flag_update(flag=flag, rollout_percentage=50, only_reduce=True, actor=actor, source=Source.ALERT)
    services.flag_update(flag=flag, rollout_percentage=5, only_reduce=True, actor=actor, source=Source.ALERT)
    flag.refresh_from_db()
    assert flag.rollout_percentage == Decimal("5.00")


def test_override_add_and_remove_are_audited_and_bump_version(flag, actor):
    services.override_add(flag=flag, user_id="vip", kind="allow", note="beta tester", actor=actor, source=Source.ADMIN)
    services.override_remove(flag=flag, user_id="vip", actor=actor, source=Source.ADMIN, reason="done")
    log = entries(flag)
    assert [e.action for e in log] == ["create", "override_add", "override_remove"]
    assert log[1].after == {"user_id": "vip", "kind": "allow", "note": "beta tester"}
    assert log[2].before["user_id"] == "vip" and log[2].reason == "done"
    flag.refresh_from_db()
    assert flag.version == 3 and not UserOverride.objects.exists()


def test_adding_a_user_already_on_that_list_changes_nothing(flag, actor):
    services.override_add(flag=flag, user_id="u", kind="deny", actor=actor, source=Source.ADMIN)
    services.override_add(flag=flag, user_id="u", kind="deny", actor=actor, source=Source.ADMIN)
    assert UserOverride.objects.count() == 1 and len(entries(flag)) == 2


def test_a_user_on_the_other_list_is_refused_not_moved(flag, actor):
    services.override_add(flag=flag, user_id="u", kind="deny", actor=actor, source=Source.ADMIN)
    with pytest.raises(ValidationError) as caught:
        services.override_add(flag=flag, user_id="u", kind="allow", actor=actor, source=Source.ADMIN)
    assert "deny list" in caught.value.message_dict["user_id"][0]
    assert UserOverride.objects.get().kind == "deny"


def test_moving_between_lists_is_explicit_and_audited(flag, actor):
    override = services.override_add(flag=flag, user_id="u", kind="deny", actor=actor, source=Source.ADMIN)
    services.override_update(override=override, kind="allow", actor=actor, source=Source.ADMIN)
    assert UserOverride.objects.get().kind == "allow"
    last = entries(flag)[-1]
    assert (last.action, last.before["kind"], last.after["kind"]) == ("override_change", "deny", "allow")


@pytest.mark.parametrize("user_id", ["", "   ", "x" * 256, None, 42])
def test_invalid_user_ids_are_refused(flag, actor, user_id):
    with pytest.raises(ValidationError) as caught:
        services.override_add(flag=flag, user_id=user_id, kind="allow", actor=actor, source=Source.ADMIN)
    assert "user_id" in caught.value.message_dict
    assert not UserOverride.objects.exists()


def test_removing_a_user_on_no_list_is_an_error(flag, actor):
    with pytest.raises(ValidationError):
        services.override_remove(flag=flag, user_id="ghost", actor=actor, source=Source.ADMIN)


def test_lists_feed_the_evaluation_snapshot(flag, actor):
    services.flag_set_rollout(flag=flag, percentage=0, enabled=True, actor=actor, source=Source.CLI)
    services.override_add(flag=flag, user_id="whitelisted_user", kind="allow", actor=actor, source=Source.CLI)
    services.override_add(flag=flag, user_id="blacklisted_user", kind="deny", actor=actor, source=Source.CLI)
    config = selectors.all_flag_configs()[flag.key]
    assert evaluation.evaluate(config, "whitelisted_user").reason == evaluation.Reason.ALLOW_LIST
    assert evaluation.evaluate(config, "blacklisted_user").reason == evaluation.Reason.DENY_LIST
    flag.refresh_from_db()
    assert config.version == 4 and config == selectors.flag_config(flag)


# --- bulk -----------------------------------------------------------------------------------------


def test_import_skips_blanks_duplicates_and_header_and_writes_one_entry(flag, actor):
    text = "user_id\nalice\n\n  bob  \nalice\ncarol,extra column\n"
    report = services.overrides_import(flag=flag, kind="allow", text=text, actor=actor, source=Source.ADMIN,
                                       reason="beta cohort")
    assert report.applied and report.changed == 3
    assert (report.blank_lines, report.duplicates, report.invalid, report.conflicts) == (1, 1, [], [])
    assert set(UserOverride.objects.values_list("user_id", flat=True)) == {"alice", "bob", "carol"}
    (entry,) = [e for e in entries(flag) if e.action == "overrides_import"]
    assert entry.after["added"] == ["alice", "bob", "carol"] and entry.after["allow_count"] == 3
    assert entry.before == {"allow_count": 0} and entry.reason == "beta cohort"


def test_import_with_an_invalid_id_reports_line_numbers_and_changes_nothing(flag, actor):
    text = "ok_1\n" + "x" * 300 + "\nok_2\n\u0000bad\n"
    report = services.overrides_import(flag=flag, kind="allow", text=text, actor=actor, source=Source.ADMIN)
    assert not report.applied and report.changed == 0
    assert [line for line, _value, _msg in report.invalid] == [2, 4]
    assert not UserOverride.objects.exists() and len(entries(flag)) == 1
    flag.refresh_from_db()
    assert flag.version == 1


def test_import_reports_users_on_the_other_list_and_leaves_them(flag, actor):
    services.override_add(flag=flag, user_id="bob", kind="deny", actor=actor, source=Source.ADMIN)
    services.override_add(flag=flag, user_id="amy", kind="allow", actor=actor, source=Source.ADMIN)
    report = services.overrides_import(flag=flag, kind="allow", text="amy\nbob\ncat\n", actor=actor,
                                       source=Source.ADMIN)
    assert report.changed == 1 and report.unchanged == 1
    assert report.conflicts == [(2, "bob", "deny")]
    assert UserOverride.objects.get(user_id="bob").kind == "deny"


def test_import_of_nothing_new_writes_no_entry(flag, actor):
    services.overrides_import(flag=flag, kind="deny", text="a\nb\n", actor=actor, source=Source.ADMIN)
    before = len(entries(flag))
    report = services.overrides_import(flag=flag, kind="deny", text="a\nb\n", actor=actor, source=Source.ADMIN)
    assert report.changed == 0 and report.unchanged == 2 and len(entries(flag)) == before


def test_bulk_remove_takes_users_off_one_list_and_reports_the_rest(flag, actor):
    services.overrides_import(flag=flag, kind="allow", text="a\nb\nc\n", actor=actor, source=Source.ADMIN)
    services.override_add(flag=flag, user_id="d", kind="deny", actor=actor, source=Source.ADMIN)
    report = services.overrides_bulk_remove(flag=flag, kind="allow", text="a\nb\nd\nzz\n", actor=actor,
                                            source=Source.ADMIN)
    assert report.changed == 2 and report.unchanged == 1 and report.conflicts == [(3, "d", "deny")]
    assert set(UserOverride.objects.values_list("user_id", flat=True)) == {"c", "d"}
    entry = entries(flag)[-1]
    assert entry.action == "overrides_bulk_remove"
    assert entry.before["removed"] == [{"user_id": "a", "kind": "allow"}, {"user_id": "b", "kind": "allow"}]


def test_bulk_remove_from_either_list(flag, actor):
    services.override_add(flag=flag, user_id="a", kind="allow", actor=actor, source=Source.ADMIN)
    services.override_add(flag=flag, user_id="b", kind="deny", actor=actor, source=Source.ADMIN)
    report = services.overrides_bulk_remove(flag=flag, user_ids=["a", "b"], actor=actor, source=Source.ADMIN)
    assert report.changed == 2 and not UserOverride.objects.exists()


def test_ids_with_commas_survive_when_given_as_a_list(flag, actor):
    services.overrides_import(flag=flag, kind="allow", user_ids=['a,b', 'say "hi"'], actor=actor,
                              source=Source.API)
    assert set(UserOverride.objects.values_list("user_id", flat=True)) == {"a,b", 'say "hi"'}


def test_quoted_csv_values_are_read_as_one_id(flag, actor):
    services.overrides_import(flag=flag, kind="allow", text='"a,b",2024-01-01\nplain\n', actor=actor,
                              source=Source.ADMIN)
    assert set(UserOverride.objects.values_list("user_id", flat=True)) == {"a,b", "plain"}


# --- append-only audit ----------------------------------------------------------------------------------


def test_audit_entries_refuse_update_and_delete_through_the_orm(flag):
    entry = AuditEntry.objects.filter(flag=flag).get()
    entry.reason = "rewritten"
    with pytest.raises(Exception, match="append-only"):
        entry.save()
    with pytest.raises(Exception, match="append-only"):
        entry.delete()
    with pytest.raises(Exception, match="append-only"):
        AuditEntry.objects.filter(pk=entry.pk).update(reason="x")
    with pytest.raises(Exception, match="append-only"):
        AuditEntry.objects.all().delete()
    assert AuditEntry.objects.get(pk=entry.pk).reason == ""


def test_flags_with_history_cannot_be_deleted(flag):
    from django.db.models import ProtectedError

    with pytest.raises(ProtectedError):
        flag.delete()


@requires_postgres
@pytest.mark.parametrize("statement", ["UPDATE flags_auditentry SET reason = 'x'", "DELETE FROM flags_auditentry"])
def test_postgres_trigger_rejects_raw_update_and_delete(flag, statement):
    from django.db import DatabaseError, transaction

    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(statement)
    assert AuditEntry.objects.filter(flag=flag).count() == 1


# --- concurrency: two people moving the same slider ---------------------------------------------------


@requires_postgres
@pytest.mark.django_db(transaction=True)
def test_two_concurrent_changes_from_the_same_version_one_wins_one_conflicts(make_flag):
    flag = make_flag("race")
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def move(percentage: int, who: str) -> None:
        try:
            barrier.wait()
            services.flag_set_rollout(
                flag="race", percentage=percentage, actor=Actor.system(who), source=Source.UI, reason="test",
                expected_version=1,
            )
            outcomes.append("ok")
        except services.VersionConflict:
            outcomes.append("conflict")
        finally:
            connections.close_all()

    threads = [threading.Thread(target=move, args=(p, f"pm{p}")) for p in (20, 70)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["conflict", "ok"]
    flag.refresh_from_db()
    assert flag.version == 2
    assert AuditEntry.objects.filter(flag=flag).count() == 2


def test_ensure_default_flag_creates_patch_mode_once_disabled_at_zero(db):
    created = services.ensure_default_flag()
    assert created is not None and created.key == "patch_mode_enabled"
    assert (created.enabled, created.rollout_percentage) == (False, Decimal("0.00"))
    assert services.ensure_default_flag() is None
    assert Flag.objects.count() == 1


# --- the rollout confirmation rule (the slider asks first; the dashboard view refuses without it) ---------


@pytest.mark.parametrize(
    ("current", "target"),
    [("10", "35"), ("0", "25"), ("74.99", "99.99"), ("50", "50"), ("50", "10"), ("100", "0"), ("0", "0.01")],
)
def test_a_raise_of_at_most_25_points_below_100_or_any_lowering_needs_no_confirmation(current, target):
    assert services.rollout_needs_confirmation(current=Decimal(current), target=Decimal(target)) is None


@pytest.mark.parametrize(("current", "target"), [("10", "35.01"), ("0", "25.01"), ("0", "50"), ("99", "100"),
                                                 ("99.99", "100"), ("75", "100"), ("0", "100")])
def test_a_raise_of_more_than_25_points_or_to_100_needs_confirmation(current, target):
    why = services.rollout_needs_confirmation(current=Decimal(current), target=Decimal(target))
    assert why == f"Raising the rollout from {current}% to {target}% needs confirmation."


@pytest.mark.parametrize(("current", "target"), [("10", "10.01"), ("0", "1"), ("40", "60")])
def test_any_raise_while_a_critical_guardrail_fires_needs_confirmation_naming_it(current, target):
    firing = "critical guardrail firing: Patch Mode error rate above 5%"
    why = services.rollout_needs_confirmation(current=Decimal(current), target=Decimal(target), firing=firing)
    assert why == f"Raising the rollout from {current}% to {target}% needs confirmation ({firing})."


@pytest.mark.parametrize(("current", "target"), [("50", "10"), ("50", "50"), ("100", "0")])
def test_lowering_or_keeping_never_needs_confirmation_even_while_a_guardrail_fires(current, target):
    assert services.rollout_needs_confirmation(current=Decimal(current), target=Decimal(target),
                                               firing="critical guardrail firing") is None


# --- bulk list changes report the flag as they left it ------------------------------------------------------


def test_bulk_import_and_removal_report_the_flags_new_version(flag, actor):
    report = services.overrides_import(flag=flag.key, kind="allow", user_ids=["u1", "u2"], actor=actor,
                                       source=Source.CLI)
    assert report.flag is not None and report.flag.version == Flag.objects.get(pk=flag.pk).version == flag.version + 1
    again = services.overrides_import(flag=flag.key, kind="allow", user_ids=["u1"], actor=actor, source=Source.CLI)
    assert again.changed == 0 and again.flag is not None and again.flag.version == flag.version + 1
    removed = services.overrides_bulk_remove(flag=flag.key, user_ids=["u1"], actor=actor, source=Source.CLI)
    assert removed.flag is not None and removed.flag.version == Flag.objects.get(pk=flag.pk).version == flag.version + 2


def test_override_counts_count_each_list_and_every_flag_in_one_query(make_flag, actor, django_assert_num_queries):
    one, two, empty = make_flag("one_flag"), make_flag("two_flag"), make_flag("empty_flag")
    services.overrides_import(flag=one.key, kind="allow", user_ids=["a", "b"], actor=actor, source=Source.CLI)
    services.overrides_import(flag=one.key, kind="deny", user_ids=["c"], actor=actor, source=Source.CLI)
    services.overrides_import(flag=two.key, kind="deny", user_ids=["d", "e", "f"], actor=actor, source=Source.CLI)
    with django_assert_num_queries(1):
        counts = selectors.override_counts_by_flag([one, two, empty])
    assert counts == {one.pk: {"allow": 2, "deny": 1}, two.pk: {"allow": 0, "deny": 3},
                      empty.pk: {"allow": 0, "deny": 0}}
    with django_assert_num_queries(1):
        assert selectors.override_counts(two) == {"allow": 0, "deny": 3}
