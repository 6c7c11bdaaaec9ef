"""Targeting: conditions on the attributes of an evaluation context, segments and a flag's rules.

Pure, like flags/evaluation.py, which applies them: no Django import, so the API, the dashboard, the CLI
and the benchmarks share one definition, tested without a database.

A condition is (attribute, operator, values). It never raises while deciding: an attribute that is missing,
null, of the wrong type, or unparseable for the operator makes the condition false. That holds for the
negative operator too (`not_in` is false for a missing attribute), so that a client that forgets to send
an attribute never lands in a rule by accident. Strings compare exactly (case-sensitive, no normalisation).

    in, not_in          the attribute (a string, number or boolean) equals one of the values / none of
                        them. Types do not mix: "1" is not 1, true is not 1; 1 equals 1.0.
    equals              in, with exactly one value.
    starts_with, ends_with, contains
                        a string attribute starts with / ends with / contains one of the values.
    lt, lte, gt, gte    a numeric attribute (not a boolean, not a numeric string) against one finite number.
    semver_lt, semver_gte
                        a string attribute that is a semantic version (semver.org 2.0.0, precedence rules
                        included: 1.0.0-beta < 1.0.0) against one version.
    before, after       a string attribute that is an ISO 8601 date or date-time (no offset means UTC)
                        strictly before / after one such value.
    matches             a string attribute of at most MATCH_INPUT_MAX characters in which one pattern of at
                        most PATTERN_MAX_LENGTH characters is found. Patterns are RE2 (google-re2): time
                        linear in the input, so no pattern can hang a worker; RE2 has no backreferences or
                        lookaround, and such patterns are refused when saved.

Validation happens once, when a condition is built (`condition()`); a RuleError names the field. The
checks on whole rules (a rule that can never match) live here too, so that every caller refuses the same.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeGuard

import re2
import semver

ATTRIBUTE_MAX_LENGTH = 100
RULE_ID_MAX_LENGTH = 100
CONDITIONS_MAX = 20  # of one rule or segment
VALUES_MAX = 1_000  # values of one condition; a larger set of users belongs in a segment's id list
VALUE_MAX_LENGTH = 1_000
PATTERN_MAX_LENGTH = 256
MATCH_INPUT_MAX = 4_096
RE2_MAX_MEMORY = 1 << 20
SHORT_TEXT_MAX = 64  # longer is no version and no date: false at once, never parsed or cached


class Operator(StrEnum):
    IN = "in"
    NOT_IN = "not_in"
    EQUALS = "equals"
    STARTS_WITH = "starts_with"
    ENDS_WITH = "ends_with"
    CONTAINS = "contains"
    LT = "lt"
    LTE = "lte"
    GT = "gt"
    GTE = "gte"
    SEMVER_LT = "semver_lt"
    SEMVER_GTE = "semver_gte"
    BEFORE = "before"
    AFTER = "after"
    MATCHES = "matches"


OPERATORS = tuple(op.value for op in Operator)
_SINGLE = {Operator.EQUALS, Operator.LT, Operator.LTE, Operator.GT, Operator.GTE, Operator.SEMVER_LT,
           Operator.SEMVER_GTE, Operator.BEFORE, Operator.AFTER, Operator.MATCHES}
_STRINGS = {Operator.STARTS_WITH, Operator.ENDS_WITH, Operator.CONTAINS}
_NUMERIC = {Operator.LT, Operator.LTE, Operator.GT, Operator.GTE}

Scalar = str | int | float | bool


class RuleError(ValueError):
    """A condition, segment or rule that cannot be saved: `field` names what is wrong, `message` why."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message

    def within(self, prefix: str) -> RuleError:
        """The same error, its field placed inside a larger structure ("rules[2].conditions[0].values")."""
        return RuleError(f"{prefix}.{self.field}" if self.field else prefix, self.message)


# --- typed readings of an attribute, cheap enough for every decision -----------------------------------------


def _is_number(value: object) -> TypeGuard[int | float]:
    return type(value) is int or (type(value) is float and math.isfinite(value))  # bool is not a number here


def semver_key(text: str) -> tuple[Any, ...]:
    """A sort key with semver 2.0.0 precedence (build metadata ignored). ValueError if not a version."""
    if len(text) > SHORT_TEXT_MAX:
        raise ValueError("too long for a version")
    version = semver.Version.parse(text)
    pre: tuple[tuple[int, int | str], ...] = ()
    if version.prerelease:
        # Numeric identifiers sort before alphanumeric ones, and numerically among themselves.
        pre = tuple((0, int(part)) if part.isdigit() else (1, part) for part in version.prerelease.split("."))
    # A release sorts after every pre-release of the same version: (1,) > (0, ...).
    return (version.major, version.minor, version.patch, (1,) if not pre else (0, *pre))


def _semver_or_none(text: str) -> tuple[Any, ...] | None:
    return _cached_semver(text) if len(text) <= SHORT_TEXT_MAX else None


@functools.lru_cache(maxsize=4096)
def _cached_semver(text: str) -> tuple[Any, ...] | None:
    # App versions are few and repeat in every request: parse each once (short texts only, so the cache
    # stays small whatever clients send).
    try:
        return semver_key(text)
    except ValueError:
        return None


def parse_instant(text: str) -> datetime:
    """An ISO 8601 date ("2026-12-01", midnight UTC) or date-time (no offset means UTC). ValueError if not."""
    if len(text) > SHORT_TEXT_MAX:
        raise ValueError("too long for a date")
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _instant_or_none(text: str) -> datetime | None:
    return _cached_instant(text) if len(text) <= SHORT_TEXT_MAX else None


@functools.lru_cache(maxsize=4096)
def _cached_instant(text: str) -> datetime | None:
    try:
        return parse_instant(text)
    except ValueError:
        return None


def compile_pattern(pattern: str) -> Any:
    """The RE2 program for a `matches` value; RuleError if it is too long or not a valid RE2 pattern."""
    if len(pattern) > PATTERN_MAX_LENGTH:
        raise RuleError("values", f"a pattern has at most {PATTERN_MAX_LENGTH} characters")
    options = re2.Options()
    options.log_errors = False  # a refused pattern is the caller's error, not a line on the server's stderr
    options.never_capture = True
    options.max_mem = RE2_MAX_MEMORY
    try:
        return re2.compile(pattern, options)
    except re2.error as exc:
        detail = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise RuleError("values", f"not a valid RE2 regular expression: {detail}") from None


# --- conditions ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Condition:
    attribute: str
    operator: str
    values: tuple[Scalar, ...]
    test: Callable[[object], bool] = field(compare=False, repr=False, hash=False)

    def matches(self, attributes: Mapping[str, object]) -> bool:
        value = attributes.get(self.attribute)
        return value is not None and self.test(value)

    def as_json(self) -> dict[str, object]:
        return {"attribute": self.attribute, "operator": self.operator, "values": list(self.values)}


def _scalar_key(value: object) -> tuple[str, object] | None:
    """What `in` compares: the value's kind and value (1 and 1.0 alike, "1" and true apart); None if the
    value is not a string, finite number or boolean."""
    if type(value) is str:
        return ("s", value)
    if type(value) is bool:
        return ("b", value)
    if _is_number(value):
        return ("n", value)
    return None


def _test(op: Operator, values: tuple[Scalar, ...]) -> Callable[[object], bool]:
    """The predicate for an attribute value that is present (not None); every branch is total."""
    if op in (Operator.IN, Operator.EQUALS, Operator.NOT_IN):
        keys = frozenset(key for value in values if (key := _scalar_key(value)) is not None)
        strings = frozenset(value for value in values if type(value) is str)
        if op is Operator.NOT_IN:
            return lambda a: (a not in strings) if type(a) is str else ((k := _scalar_key(a)) is not None
                                                                       and k not in keys)
        return lambda a: (a in strings) if type(a) is str else _scalar_key(a) in keys
    if op in _STRINGS:
        texts = tuple(str(value) for value in values)
        if op is Operator.STARTS_WITH:
            return lambda a: type(a) is str and a.startswith(texts)
        if op is Operator.ENDS_WITH:
            return lambda a: type(a) is str and a.endswith(texts)
        return lambda a: type(a) is str and any(text in a for text in texts)
    if op in _NUMERIC:
        limit = values[0]  # int and float compare exactly in Python, with no overflow for a huge int
        compare: Callable[[Any, Any], bool] = {
            Operator.LT: operator.lt, Operator.LTE: operator.le, Operator.GT: operator.gt,
            Operator.GTE: operator.ge}[op]
        return lambda a: _is_number(a) and compare(a, limit)
    if op in (Operator.SEMVER_LT, Operator.SEMVER_GTE):
        bound = semver_key(str(values[0]))
        if op is Operator.SEMVER_LT:
            return lambda a: type(a) is str and (key := _semver_or_none(a)) is not None and key < bound
        return lambda a: type(a) is str and (key := _semver_or_none(a)) is not None and key >= bound
    if op in (Operator.BEFORE, Operator.AFTER):
        moment = parse_instant(str(values[0]))
        if op is Operator.BEFORE:
            return lambda a: type(a) is str and (when := _instant_or_none(a)) is not None and when < moment
        return lambda a: type(a) is str and (when := _instant_or_none(a)) is not None and when > moment
    program = compile_pattern(str(values[0]))
    return lambda a: type(a) is str and len(a) <= MATCH_INPUT_MAX and program.search(a) is not None


def condition(attribute: object, operator: object, values: object) -> Condition:
    """A validated condition, ready to decide; RuleError naming the field (attribute, operator, values)."""
    if type(attribute) is not str or not attribute.strip() or len(attribute) > ATTRIBUTE_MAX_LENGTH \
            or "\x00" in attribute:
        raise RuleError("attribute", f"a name of 1 to {ATTRIBUTE_MAX_LENGTH} characters, no NUL")
    if type(operator) is not str or operator not in OPERATORS:
        raise RuleError("operator", f"unknown operator {str(operator)[:40]!r}; one of {', '.join(OPERATORS)}")
    op = Operator(operator)
    if not isinstance(values, list | tuple) or not values:
        raise RuleError("values", "a non-empty list")
    if op in _SINGLE and len(values) != 1:
        raise RuleError("values", f"{op.value} takes exactly one value")
    if len(values) > VALUES_MAX:
        raise RuleError("values", f"at most {VALUES_MAX} values; put a larger set of users in a segment")
    checked: list[Scalar] = []
    for value in values:
        if op in (Operator.IN, Operator.NOT_IN, Operator.EQUALS):
            if _scalar_key(value) is None:
                raise RuleError("values", "strings, finite numbers or booleans")
        elif op in _NUMERIC:
            if not _is_number(value):
                raise RuleError("values", f"{op.value} compares with a finite number")
        elif type(value) is not str or not value:
            raise RuleError("values", f"{op.value} takes non-empty strings")
        if type(value) is str and len(value) > VALUE_MAX_LENGTH:
            raise RuleError("values", f"a value has at most {VALUE_MAX_LENGTH} characters")
        if type(value) is str and "\x00" in value:
            raise RuleError("values", "must not contain NUL characters")  # PostgreSQL stores none
        checked.append(value)
    if op in (Operator.SEMVER_LT, Operator.SEMVER_GTE):
        try:
            semver_key(str(checked[0]))
        except ValueError:
            raise RuleError("values", f"{str(checked[0])[:40]!r} is not a semantic version (like 2.1.0 or "
                                      "2.1.0-beta.1)") from None
    if op in (Operator.BEFORE, Operator.AFTER):
        try:
            parse_instant(str(checked[0]))
        except ValueError:
            raise RuleError("values", f"{str(checked[0])[:40]!r} is not an ISO 8601 date or date-time") from None
    frozen = tuple(checked)
    return Condition(attribute, op.value, frozen, _test(op, frozen))


def conditions_from_json(items: object) -> tuple[Condition, ...]:
    """Conditions from their JSON form (a list of {"attribute", "operator", "values"})."""
    if not isinstance(items, list | tuple):
        raise RuleError("conditions", "a list of conditions")
    if len(items) > CONDITIONS_MAX:
        raise RuleError("conditions", f"at most {CONDITIONS_MAX} conditions")
    built = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise RuleError(f"conditions[{index}]", "an object with attribute, operator and values")
        unknown = sorted(set(item) - {"attribute", "operator", "values"})
        if unknown:
            raise RuleError(f"conditions[{index}].{unknown[0]}", "unknown field")
        try:
            built.append(condition(item.get("attribute"), item.get("operator"), item.get("values")))
        except RuleError as exc:
            raise exc.within(f"conditions[{index}]") from None
    return tuple(built)


# --- conditions that can never hold together -------------------------------------------------------------------


def contradiction(conditions: Sequence[Condition]) -> str | None:
    """Why these conditions (all of which must hold) can never hold together, or None. Catches what a
    person writes by mistake on one attribute: empty number, version or date ranges, two different
    `equals`, an `equals` or `in` that `not_in` excludes entirely."""
    by_attribute: dict[str, list[Condition]] = {}
    for c in conditions:
        by_attribute.setdefault(c.attribute, []).append(c)
    for attribute, group in by_attribute.items():
        problem = _contradiction(group)
        if problem:
            return f"{attribute!r}: {problem}"
    return None


def _contradiction(group: list[Condition]) -> str | None:
    allowed: set[tuple[str, object] | None] | None = None
    excluded: set[tuple[str, object] | None] = set()
    low: tuple[Any, bool] | None = None  # (bound, inclusive)
    high: tuple[Any, bool] | None = None
    kinds = set()
    for c in group:
        op = Operator(c.operator)
        if op in (Operator.IN, Operator.EQUALS):
            keys = {_scalar_key(v) for v in c.values}
            allowed = keys if allowed is None else allowed & keys
        elif op is Operator.NOT_IN:
            excluded |= {_scalar_key(v) for v in c.values}
        elif op in _NUMERIC or op in (Operator.SEMVER_LT, Operator.SEMVER_GTE, Operator.BEFORE, Operator.AFTER):
            kind = "number" if op in _NUMERIC else "version" if op.value.startswith("semver") else "date"
            kinds.add(kind)
            if len(kinds) > 1:
                return "compared as more than one kind (number, version, date)"
            value: Any = (c.values[0] if kind == "number" else semver_key(str(c.values[0]))
                          if kind == "version" else parse_instant(str(c.values[0])))
            if op in (Operator.GT, Operator.GTE, Operator.SEMVER_GTE, Operator.AFTER):
                bound = (value, op in (Operator.GTE, Operator.SEMVER_GTE))
                if low is None or bound[0] > low[0] or (bound[0] == low[0] and not bound[1]):
                    low = bound
            else:
                bound = (value, op is Operator.LTE)
                if high is None or bound[0] < high[0] or (bound[0] == high[0] and not bound[1]):
                    high = bound
    if allowed is not None and not (allowed - excluded):
        return "no value passes both its equals/in and its not_in conditions" if excluded else \
            "its equals/in conditions share no value"
    if low is not None and high is not None and (low[0] > high[0] or (low[0] == high[0] and not (low[1] and high[1]))):
        return "its lower bound is not below its upper bound"
    return None


# --- segments and rules ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Segment:
    """A named, reusable set of users: included ids, or anyone matching every condition; excluded ids never."""

    key: str
    conditions: tuple[Condition, ...] = ()
    included: frozenset[str] = frozenset()
    excluded: frozenset[str] = frozenset()

    def matches(self, user_id: str, attributes: Mapping[str, object]) -> bool:
        if user_id in self.excluded:
            return False
        if user_id in self.included:
            return True
        if not self.conditions:
            return False
        for c in self.conditions:  # noqa: SIM110 - a loop: all() over a generator costs twice as much here
            if not c.matches(attributes):
                return False
        return True


def segment_problem(conditions: Sequence[Condition], included: Iterable[str]) -> RuleError | None:
    """Why a segment can never match anyone, or None."""
    if not conditions and not any(True for _ in included):
        return RuleError("conditions", "a segment needs conditions or included user ids, or it matches nobody")
    problem = contradiction(conditions)
    if problem and not any(True for _ in included):
        return RuleError("conditions", f"can never match: {problem}")
    return None


class Serve(StrEnum):
    ON = "on"
    OFF = "off"
    PERCENTAGE = "percentage"


@dataclass(frozen=True, slots=True)
class Rule:
    """One targeting rule of a flag: users who match the segment (if any) and every condition are served
    on, off, or their own percentage (the flag's buckets and salt, so raising it only adds users)."""

    id: str
    serve: str
    conditions: tuple[Condition, ...] = ()
    segment: Segment | None = None
    basis_points: int = 0  # 0..10000, for Serve.PERCENTAGE

    def matches(self, user_id: str, attributes: Mapping[str, object]) -> bool:
        if self.segment is not None and not self.segment.matches(user_id, attributes):
            return False
        for c in self.conditions:  # noqa: SIM110 - a loop: all() over a generator costs twice as much here
            if not c.matches(attributes):
                return False
        return True


def rule_problem(rule: Rule) -> RuleError | None:
    """Why a rule cannot be saved as it is, or None: it must say whom it matches, and be able to match."""
    if rule.serve not in {s.value for s in Serve}:
        return RuleError("serve", f"one of {', '.join(s.value for s in Serve)}")
    if rule.serve == Serve.PERCENTAGE and not 0 <= rule.basis_points <= 10_000:
        return RuleError("percentage", "between 0 and 100")
    if rule.segment is None and not rule.conditions:
        return RuleError("conditions", "a rule needs a segment or conditions; for everyone, set the flag's "
                                       "rollout percentage")
    problem = contradiction(rule.conditions + (rule.segment.conditions if rule.segment and not
                                               rule.segment.included else ()))
    if problem:
        return RuleError("conditions", f"can never match: {problem}")
    return None


# --- JSON forms (the API's, the admin's and the test vectors') ---------------------------------------------------


def _ids(value: object, name: str) -> frozenset[str]:
    if not isinstance(value, list) or not all(type(v) is str and v for v in value):
        raise RuleError(name, "a list of user ids")
    return frozenset(value)


def segment_from_json(data: object) -> Segment:
    """A segment from {"key", "conditions", "included", "excluded"}; RuleError naming the field."""
    if not isinstance(data, dict):
        raise RuleError("segment", "an object with key, conditions, included and excluded")
    unknown = sorted(set(data) - {"key", "conditions", "included", "excluded"})
    if unknown:
        raise RuleError(unknown[0], "unknown field")
    key = data.get("key")
    if type(key) is not str or not key or "\x00" in key:
        raise RuleError("key", "the segment's key")
    conditions = conditions_from_json(data.get("conditions", []))
    included = _ids(data.get("included", []), "included")
    excluded = _ids(data.get("excluded", []), "excluded")
    problem = segment_problem(conditions, included)
    if problem:
        raise problem
    return Segment(key, conditions, included, excluded)


def rule_from_json(data: object, segments: Mapping[str, Segment] | None = None) -> Rule:
    """A rule from {"id", "serve", "percentage", "conditions", "segment"}: `segment` is a segment's key
    (looked up in `segments`) or a segment object. RuleError naming the field."""
    if not isinstance(data, dict):
        raise RuleError("", "an object with id, serve and conditions or a segment")
    unknown = sorted(set(data) - {"id", "serve", "percentage", "conditions", "segment"})
    if unknown:
        raise RuleError(unknown[0], "unknown field")
    rule_id = data.get("id")
    if type(rule_id) is not str or not rule_id.strip() or len(rule_id) > RULE_ID_MAX_LENGTH or "\x00" in rule_id:
        raise RuleError("id", f"the rule's id: 1 to {RULE_ID_MAX_LENGTH} characters, no NUL")
    serve = data.get("serve")
    if serve not in {s.value for s in Serve}:
        raise RuleError("serve", f"one of {', '.join(s.value for s in Serve)}")
    points = 0
    if serve == Serve.PERCENTAGE:
        percentage = data.get("percentage")
        if not _is_number(percentage) or not 0 <= percentage <= 100 or round(percentage * 100) != percentage * 100:
            raise RuleError("percentage", "a number from 0 to 100 with at most two decimals")
        points = round(percentage * 100)
    elif "percentage" in data:
        raise RuleError("percentage", "only for serve: percentage")
    segment: Segment | None = None
    raw = data.get("segment")
    if isinstance(raw, str):
        found = (segments or {}).get(raw) if "\x00" not in raw else None
        if found is None:
            raise RuleError("segment", f"no segment {raw[:60]!r}")
        segment = found
    elif raw is not None:
        try:
            segment = segment_from_json(raw)
        except RuleError as exc:
            raise exc.within("segment") from None
    rule = Rule(rule_id, str(serve), conditions_from_json(data.get("conditions", [])), segment, points)
    problem = rule_problem(rule)
    if problem:
        raise problem
    return rule


def rules_from_json(items: object, segments: Mapping[str, Segment] | None = None) -> tuple[Rule, ...]:
    """A flag's ordered rules; RuleError naming the rule and the field ("rules[1].conditions[0].values")."""
    if not isinstance(items, list):
        raise RuleError("rules", "a list of rules")
    rules = []
    for index, item in enumerate(items):
        try:
            rules.append(rule_from_json(item, segments))
        except RuleError as exc:
            raise exc.within(f"rules[{index}]") from None
    ids = [rule.id for rule in rules]
    duplicate = next((i for i in ids if ids.count(i) > 1), None)
    if duplicate is not None:
        raise RuleError(f"rules[{ids.index(duplicate, ids.index(duplicate) + 1)}].id", f"{duplicate!r} is used twice")
    return tuple(rules)


def rule_json(rule: Rule) -> dict[str, object]:
    """A rule's JSON form, as stored and shown (rule_from_json reads it back): its segment by key."""
    data: dict[str, object] = {"id": rule.id, "serve": rule.serve}
    if rule.serve == Serve.PERCENTAGE:
        data["percentage"] = rule.basis_points // 100 if rule.basis_points % 100 == 0 else rule.basis_points / 100
    if rule.segment is not None:
        data["segment"] = rule.segment.key
    data["conditions"] = [c.as_json() for c in rule.conditions]
    return data
