"""Targeting rules and segments in the pure core (flags/targeting.py, flags/evaluation.py), from the shared
vectors in tests/data/targeting-vectors.json."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import semver

from flags import evaluation, targeting
from flags.evaluation import FlagConfig, evaluate
from flags.targeting import RuleError, condition, rule_from_json, rules_from_json, segment_from_json

VECTORS = json.loads((Path(__file__).parent.parent / "data" / "targeting-vectors.json").read_text())


def _case_id(case: dict) -> str:
    c = case["condition"]
    return f"{c['attribute']} {c['operator']} {str(c['values'])[:30]} | {str(case['attributes'])[:40]}"


@pytest.mark.parametrize("case", VECTORS["cases"], ids=_case_id)
def test_a_condition_holds_exactly_as_the_vectors_say(case):
    c = case["condition"]
    built = condition(c["attribute"], c["operator"], c["values"])
    assert built.matches(case["attributes"]) is case["expected"], case.get("note", "")


def test_the_vectors_cover_every_operator_with_a_missing_attribute_and_a_wrong_type():
    by_operator: dict[str, list[dict]] = {}
    for case in VECTORS["cases"]:
        by_operator.setdefault(case["condition"]["operator"], []).append(case)
    assert set(by_operator) == set(targeting.OPERATORS)
    for op, cases in by_operator.items():
        assert any(True for case in cases if case["expected"]), f"{op}: no case that holds"
        assert any(True for case in cases if not case["expected"]), f"{op}: no case that fails"
    missing = {case["condition"]["operator"] for case in VECTORS["cases"]
               if case["condition"]["attribute"] not in case["attributes"]}
    assert missing == set(targeting.OPERATORS)


@pytest.mark.parametrize("case", VECTORS["invalid"], ids=lambda case: str(case["condition"])[:70])
def test_a_condition_that_cannot_be_saved_is_refused_naming_its_field(case):
    c = case["condition"]
    with pytest.raises(RuleError) as refused:
        condition(c["attribute"], c["operator"], c["values"])
    assert refused.value.field == case["field"]
    assert refused.value.message and "\n" not in refused.value.message


def test_a_bad_regular_expression_is_refused_quietly_with_re2s_reason(capfd):
    with pytest.raises(RuleError, match=r"not a valid RE2 regular expression: .*missing \)"):
        condition("e", "matches", ["(unclosed"])
    assert capfd.readouterr().err == ""  # RE2 logs refused patterns to stderr unless told not to


def test_a_catastrophic_pattern_for_backtracking_engines_stays_fast_in_re2():
    # ^(a+)+$ on "aaa...ab" takes exponential time in Python's re; RE2 is linear in the input.
    built = condition("name", "matches", ["^(a+)+$"])
    started = time.perf_counter()
    assert built.matches({"name": "a" * 4000 + "b"}) is False
    assert time.perf_counter() - started < 1.0  # exponential would be astronomically longer, not 2x


@pytest.mark.parametrize(("low", "high"), [
    ("1.0.0-alpha", "1.0.0-alpha.1"), ("1.0.0-alpha.1", "1.0.0-alpha.beta"), ("1.0.0-alpha.beta", "1.0.0-beta"),
    ("1.0.0-beta", "1.0.0-beta.2"), ("1.0.0-beta.2", "1.0.0-beta.11"), ("1.0.0-beta.11", "1.0.0-rc.1"),
    ("1.0.0-rc.1", "1.0.0"), ("1.0.0", "1.0.1"), ("1.9.0", "1.10.0"), ("1.0.0+zzz", "1.0.1+aaa"),
])
def test_the_semver_key_orders_as_the_semver_library_and_the_specification_do(low, high):
    # The chain from semver.org section 11, plus build metadata (ignored for precedence).
    assert targeting.semver_key(low) < targeting.semver_key(high)
    assert semver.Version.parse(low).compare(high) == -1


def test_build_metadata_does_not_change_precedence():
    assert targeting.semver_key("1.0.0+build.1") == targeting.semver_key("1.0.0+build.2")
    assert condition("v", "semver_gte", ["1.0.0"]).matches({"v": "1.0.0+exp.sha.5114f85"})


def _flag(spec: dict) -> FlagConfig:
    return FlagConfig(
        key="k", enabled=spec["enabled"],
        rollout_basis_points=evaluation.percentage_to_basis_points(spec["rollout_percentage"]),
        allow=frozenset(spec["allow"]), deny=frozenset(spec["deny"]), rules=rules_from_json(spec["rules"]),
    )


@pytest.mark.parametrize("scenario", VECTORS["flags"], ids=lambda s: s["about"][:60])
def test_a_flag_decides_in_order_kill_switch_lists_rules_then_the_default(scenario):
    flag = _flag(scenario["flag"])
    for expected in scenario["decisions"]:
        decision = evaluate(flag, expected["user"], expected["attributes"])
        assert (decision.enabled, decision.reason.value, decision.rule) == (
            expected["enabled"], expected["reason"], expected["rule"]), expected
        assert decision.bucket == evaluation.bucket_for(flag, expected["user"])


def test_without_rules_or_attributes_the_decision_is_what_it_always_was():
    flag = FlagConfig(key="k", enabled=True, rollout_basis_points=5000)
    for i in range(200):
        user = f"user-{i}"
        assert evaluate(flag, user) == evaluate(flag, user, {"plan": "pro"})
        assert evaluate(flag, user).rule is None


@pytest.mark.parametrize("bucketing", evaluation.BUCKETINGS)
def test_raising_a_rules_percentage_only_adds_users_and_matches_the_flags_own_cohorts(bucketing):
    users = [f"user-{i}" for i in range(2000)]
    context = {"plan": "pro"}
    previous: set[str] = set()
    for percentage in (0, 5, 10, 25, 50, 75, 100):
        rule = rule_from_json({"id": "pro", "serve": "percentage", "percentage": percentage,
                               "conditions": [{"attribute": "plan", "operator": "equals", "values": ["pro"]}]})
        flag = FlagConfig(key="k", enabled=True, rollout_basis_points=0, bucketing=bucketing, rules=(rule,))
        plain = FlagConfig(key="k", enabled=True, bucketing=bucketing,
                           rollout_basis_points=evaluation.percentage_to_basis_points(percentage))
        on = {u for u in users if evaluate(flag, u, context).enabled}
        assert on >= previous
        assert on == {u for u in users if evaluate(plain, u).enabled}  # same buckets, same salt
        previous = on
    assert len(previous) == len(users)


def test_a_segment_excludes_before_it_includes_and_needs_all_of_its_conditions():
    segment = segment_from_json({"key": "staff", "included": ["contractor", "both"], "excluded": ["both", "ex"],
                                 "conditions": [{"attribute": "email", "operator": "ends_with",
                                                 "values": ["@ourcompany.com"]},
                                                {"attribute": "verified", "operator": "equals", "values": [True]}]})
    staff = {"email": "a@ourcompany.com", "verified": True}
    assert segment.matches("anyone", staff)
    assert not segment.matches("anyone", {**staff, "verified": False})
    assert not segment.matches("anyone", {"email": "a@ourcompany.com"})
    assert segment.matches("contractor", {})
    assert not segment.matches("both", staff)
    assert not segment.matches("ex", staff)


def test_a_rule_can_name_a_shared_segment_and_add_conditions_of_its_own():
    beta = segment_from_json({"key": "beta", "included": ["b1", "b2"]})
    rule = rule_from_json({"id": "beta-de", "serve": "on", "segment": "beta",
                           "conditions": [{"attribute": "country", "operator": "equals", "values": ["DE"]}]},
                          {"beta": beta})
    assert rule.segment is beta
    assert rule.matches("b1", {"country": "DE"})
    assert not rule.matches("b1", {"country": "FR"})
    assert not rule.matches("x", {"country": "DE"})
    with pytest.raises(RuleError) as refused:
        rule_from_json({"id": "r", "serve": "on", "segment": "gamma"}, {"beta": beta})
    assert refused.value.field == "segment" and "gamma" in refused.value.message


@pytest.mark.parametrize(("conditions", "why"), [
    ([("age", "gt", [30]), ("age", "lt", [20])], "lower bound"),
    ([("age", "gte", [30]), ("age", "lt", [30])], "lower bound"),
    ([("age", "gt", [30]), ("age", "lte", [30])], "lower bound"),
    ([("v", "semver_gte", ["2.0.0"]), ("v", "semver_lt", ["2.0.0"])], "lower bound"),
    ([("d", "after", ["2026-06-01"]), ("d", "before", ["2026-01-01"])], "lower bound"),
    ([("plan", "equals", ["pro"]), ("plan", "equals", ["team"])], "share no value"),
    ([("plan", "in", ["pro"]), ("plan", "not_in", ["pro", "team"])], "not_in"),
    ([("x", "gt", [1]), ("x", "after", ["2026-01-01"])], "more than one kind"),
])
def test_a_rule_that_can_never_match_is_refused_naming_the_rule_and_field(conditions, why):
    rules = [{"id": "fine", "serve": "on", "conditions": [{"attribute": "a", "operator": "equals", "values": [1]}]},
             {"id": "never", "serve": "on",
              "conditions": [{"attribute": a, "operator": op, "values": v} for a, op, v in conditions]}]
    with pytest.raises(RuleError) as refused:
        rules_from_json(rules)
    assert refused.value.field == "rules[1].conditions"
    assert why in refused.value.message and "can never match" in refused.value.message


@pytest.mark.parametrize("conditions", [
    [("age", "gte", [30]), ("age", "lte", [30])],
    [("age", "gt", [20]), ("age", "lt", [30])],
    [("plan", "in", ["pro", "team"]), ("plan", "not_in", ["team"])],
    [("plan", "in", ["pro"]), ("region", "not_in", ["pro"])],
    [("v", "semver_gte", ["1.0.0"]), ("v", "semver_lt", ["2.0.0"])],
])
def test_conditions_that_can_hold_together_are_accepted(conditions):
    rule = rule_from_json({"id": "r", "serve": "on",
                           "conditions": [{"attribute": a, "operator": op, "values": v} for a, op, v in conditions]})
    assert len(rule.conditions) == len(conditions)


@pytest.mark.parametrize(("rules", "field"), [
    ([{"id": "r", "serve": "on"}], "rules[0].conditions"),  # matches everyone: that is the default rollout
    ([{"id": "r", "serve": "maybe", "conditions": []}], "rules[0].serve"),
    ([{"id": "r", "serve": "percentage", "percentage": 101, "segment": {"key": "s", "included": ["u"]}}],
     "rules[0].percentage"),
    ([{"id": "r", "serve": "percentage", "percentage": 10.001, "segment": {"key": "s", "included": ["u"]}}],
     "rules[0].percentage"),
    ([{"id": "r", "serve": "on", "percentage": 10, "segment": {"key": "s", "included": ["u"]}}],
     "rules[0].percentage"),
    ([{"id": "r", "serve": "on", "segment": {"key": "s"}}], "rules[0].segment.conditions"),
    ([{"id": "r", "serve": "on", "conditions": [{"attribute": "a", "operator": "nope", "values": [1]}]}],
     "rules[0].conditions[0].operator"),
    ([{"id": "r", "serve": "on", "conditions": [{"attribute": "a", "operator": "in", "values": [1], "x": 1}]}],
     "rules[0].conditions[0].x"),
    ([{"id": "r", "serve": "on", "colour": "red", "conditions": []}], "rules[0].colour"),
    ([{"id": "a", "serve": "on", "segment": {"key": "s", "included": ["u"]}},
      {"id": "a", "serve": "off", "segment": {"key": "s", "included": ["v"]}}], "rules[1].id"),
    ("not a list", "rules"),
])
def test_a_malformed_rule_set_is_refused_naming_the_rule_and_the_field(rules, field):
    with pytest.raises(RuleError) as refused:
        rules_from_json(rules)
    assert refused.value.field == field, refused.value


def test_evaluation_never_raises_whatever_the_context_holds():
    rules = rules_from_json([
        {"id": f"r{op}", "serve": "on", "conditions": [{"attribute": "a", "operator": op, "values": [value]}]}
        for op, value in [("in", "x"), ("not_in", "x"), ("equals", 1), ("starts_with", "x"), ("ends_with", "x"),
                          ("contains", "x"), ("lt", 1), ("lte", 1), ("gt", 1), ("gte", 1), ("semver_lt", "1.0.0"),
                          ("semver_gte", "1.0.0"), ("before", "2026-01-01"), ("after", "2026-01-01"),
                          ("matches", "x")]])
    flag = FlagConfig(key="k", enabled=True, rollout_basis_points=0, rules=rules)
    for value in [None, True, 0, -0.0, 10**400, float("nan"), float("inf"), "", "\ud800", "x" * 100_000,
                  [], [1], {}, {"a": 1}, "9999-99-99", "1.0.0-", "\x00"]:
        evaluate(flag, "u", {"a": value})
    assert evaluate(flag, "u", {"a": "x"}).rule == "rin"
