"""Targeting rules of a flag, and segments: created, changed and deleted here only (see flags.services).

The rules themselves (operators, validation, a rule set that can never match) are flags/targeting.py's;
this module stores them. A flag keeps its rules as JSON, naming segments by key. A change to a flag's rules
is one audit entry with the whole list before and after. A segment's change is one audit entry of its own
(flag empty, segment_key set) listing in after["flags"] the flags whose rules name it; their versions move
on with it, so that every evaluating process reloads exactly those flags.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from .. import targeting
from ..actors import Actor
from ..models import AuditEntry, Flag, MemberKind, Segment, SegmentMember, Source, validate_user_id
from ..publish import publish_config_change
from ..rules import KEY_MAX_LENGTH, is_flag_key
from ..selectors import flags_using, segment_configs, segment_members
from .base import _audit, _bump, _check_text, _check_version, _lock
from .flags import require_reason

RULES_MAX = 50  # per flag: rules are read in order on every decision
SEGMENT_IDS_MAX = 100_000  # included plus excluded ids of one segment


class SegmentNotFound(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(f"unknown segment {key!r}")
        self.key = key


def _refused(exc: targeting.RuleError) -> ValidationError:
    return ValidationError({exc.field or "rules": exc.message})


# --- a flag's rules --------------------------------------------------------------------------------------------


def _segment_names(rules: list[Any]) -> set[str]:
    """The segment keys the rules name, those that can be keys only (a NUL cannot even be looked up in
    PostgreSQL): any other name is refused by the core as no segment."""
    return {rule["segment"] for rule in rules
            if isinstance(rule, dict) and isinstance(rule.get("segment"), str) and is_flag_key(rule["segment"])}


def parse_rules(rules: Any, segments: Mapping[str, targeting.Segment] | None = None) -> list[dict[str, Any]]:
    """Validate a flag's rules (JSON form) and return them as stored; ValidationError naming the rule and
    the field. Segments are named by key and must exist."""
    if not isinstance(rules, list):
        raise ValidationError({"rules": "must be a list of rules"})
    if len(rules) > RULES_MAX:
        raise ValidationError({"rules": f"at most {RULES_MAX} rules per flag"})
    for index, rule in enumerate(rules):
        if isinstance(rule, dict) and isinstance(rule.get("segment"), dict):
            raise ValidationError({f"rules[{index}].segment": "name a segment by its key (create it first)"})
    if segments is None:
        names = _segment_names(rules)
        segments = segment_configs(names)
    try:
        built = targeting.rules_from_json(rules, segments)
    except targeting.RuleError as exc:
        raise _refused(exc) from None
    return [targeting.rule_json(rule) for rule in built]


@transaction.atomic
def flag_set_rules(
    *,
    flag: Flag | str,
    rules: Any,
    actor: Actor,
    source: str,
    reason: str = "",
    expected_version: int | None = None,
    now: datetime | None = None,
) -> Flag:
    """Replace a flag's targeting rules (an ordered list, JSON form). The same rules again change nothing."""
    require_reason(source=source, reason=reason)
    locked = _lock(flag)
    _check_version(locked, expected_version)
    names = _segment_names(rules) if isinstance(rules, list) else set()
    list(Segment.objects.select_for_update().filter(key__in=names))  # no segment goes away under this change
    stored = parse_rules(rules)
    if stored == locked.rules:
        return locked
    before = {"rules": locked.rules, "version": locked.version}
    locked.rules = stored
    _bump(locked, ["rules"], now)
    _audit(flag=locked, actor=actor, source=source, action="rules_update", before=before,
           after={"rules": stored, "version": locked.version}, reason=reason, at=now)
    return locked


# --- segments --------------------------------------------------------------------------------------------------


def _clean_key(key: Any) -> str:
    if not isinstance(key, str) or not is_flag_key(key):
        raise ValidationError({"key": f"1 to {KEY_MAX_LENGTH} lowercase letters, digits, underscores and hyphens, "
                                      "starting with a letter or digit"})
    return key


def _clean_ids(value: Any, name: str) -> list[str]:
    if isinstance(value, str | Mapping) or not isinstance(value, Iterable):
        raise ValidationError({name: "must be a list of user ids"})
    ids = []
    for index, user_id in enumerate(value):
        try:
            validate_user_id(user_id)
        except ValidationError as exc:
            raise ValidationError({f"{name}[{index}]": exc.messages}) from None
        ids.append(user_id)
    return sorted(set(ids))


def _segment_state(segment: Segment, included: list[str], excluded: list[str]) -> dict[str, Any]:
    return {"name": segment.name, "description": segment.description, "conditions": segment.conditions,
            "included": included, "excluded": excluded, "version": segment.version}


def _validated(conditions: Any, included: list[str], excluded: list[str]) -> list[dict[str, Any]]:
    both = sorted(set(included) & set(excluded))
    if both:
        raise ValidationError({"excluded": f"{len(both)} user id(s) are also included, e.g. {both[0][:60]!r}"})
    if len(included) + len(excluded) > SEGMENT_IDS_MAX:
        raise ValidationError({"included": f"at most {SEGMENT_IDS_MAX:,} included and excluded ids in all"})
    try:
        built = targeting.conditions_from_json(conditions)
    except targeting.RuleError as exc:
        raise _refused(exc) from None
    problem = targeting.segment_problem(built, included)
    if problem:
        raise _refused(problem)
    return [c.as_json() for c in built]


def _write_members(segment: Segment, included: list[str], excluded: list[str]) -> None:
    segment.members.all().delete()
    SegmentMember.objects.bulk_create(
        [SegmentMember(segment=segment, user_id=u, kind=MemberKind.INCLUDED) for u in included]
        + [SegmentMember(segment=segment, user_id=u, kind=MemberKind.EXCLUDED) for u in excluded],
        batch_size=5_000,
    )


def _segment_audit(segment: Segment, *, actor: Actor, source: str, action: str, before: dict[str, Any],
                   after: dict[str, Any], reason: str, flags: list[Flag], at: datetime | None) -> AuditEntry:
    if source not in Source.values:
        raise ValueError(f"unknown audit source {source!r}")
    _check_text("reason", reason or "", 10_000)
    return AuditEntry.objects.create(
        actor_kind=actor.kind, actor=actor.name[:200], source=source, flag=None, flag_key="",
        segment_key=segment.key, action=action, before=before, after={**after, "flags": [f.key for f in flags]},
        reason=(reason or "").strip(), flag_version=segment.version, created_at=at or timezone.now(),
    )


def _lock_segment(segment: Segment | str) -> Segment:
    key = segment.key if isinstance(segment, Segment) else segment
    try:
        return Segment.objects.select_for_update().get(key=key)
    except Segment.DoesNotExist:
        raise SegmentNotFound(str(key)[:100]) from None


@transaction.atomic
def segment_create(
    *,
    key: str,
    name: str,
    actor: Actor,
    source: str,
    description: str = "",
    conditions: Any = (),
    included: Any = (),
    excluded: Any = (),
    reason: str = "",
    now: datetime | None = None,
) -> Segment:
    require_reason(source=source, reason=reason)
    key = _clean_key(key)
    _check_text("name", name, 200)
    if not name.strip():
        raise ValidationError({"name": "is required"})
    _check_text("description", description, 10_000)
    ids_in, ids_out = _clean_ids(included, "included"), _clean_ids(excluded, "excluded")
    stored = _validated(conditions, ids_in, ids_out)
    if Segment.objects.filter(key=key).exists():
        raise ValidationError({"key": f"a segment {key!r} exists already"})
    segment = Segment.objects.create(key=key, name=name.strip(), description=description, conditions=stored,
                                     updated_at=now or timezone.now())
    _write_members(segment, ids_in, ids_out)
    _segment_audit(segment, actor=actor, source=source, action="segment_create", before={},
                   after=_segment_state(segment, ids_in, ids_out), reason=reason, flags=[], at=now)
    return segment


@transaction.atomic
def segment_update(
    *,
    segment: Segment | str,
    actor: Actor,
    source: str,
    reason: str = "",
    expected_version: int | None = None,
    now: datetime | None = None,
    **changes: Any,
) -> Segment:
    """Change a segment's name, description, conditions, included or excluded ids (each replaced as a
    whole). The flags whose rules name it move to a new version with it: every process reloads them."""
    unknown = sorted(set(changes) - {"name", "description", "conditions", "included", "excluded"})
    if unknown:
        raise ValidationError({name: "cannot be changed" for name in unknown})
    require_reason(source=source, reason=reason)
    # Locks in one order everywhere, flags before segments (flag_set_rules too), so no two writers deadlock.
    # A flag that starts naming the segment meanwhile waits for this change and validates against it.
    flags = [_lock(flag) for flag in flags_using(segment.key if isinstance(segment, Segment) else segment)]
    locked = _lock_segment(segment)
    if expected_version is not None and expected_version != locked.version:
        raise ValidationError({"expected_version": f"the segment is at version {locked.version} now, not "
                                                   f"{expected_version}: reload and try again"})
    ids_in, ids_out = segment_members(locked)
    before = _segment_state(locked, ids_in, ids_out)
    if "name" in changes:
        _check_text("name", changes["name"], 200)
        if not changes["name"].strip():
            raise ValidationError({"name": "is required"})
        locked.name = changes["name"].strip()
    if "description" in changes:
        _check_text("description", changes["description"], 10_000)
        locked.description = changes["description"]
    new_in = _clean_ids(changes["included"], "included") if "included" in changes else ids_in
    new_out = _clean_ids(changes["excluded"], "excluded") if "excluded" in changes else ids_out
    conditions = changes.get("conditions", locked.conditions)
    locked.conditions = _validated(conditions, new_in, new_out)
    for flag in flags:  # each rule naming it must still be able to match (a contradiction with its conditions)
        others = {key: value for key, value in segment_configs(
            {r["segment"] for r in flag.rules if r.get("segment") and r["segment"] != locked.key}).items()}
        others[locked.key] = targeting.Segment(locked.key, targeting.conditions_from_json(locked.conditions),
                                               frozenset(new_in), frozenset(new_out))
        try:
            targeting.rules_from_json(flag.rules, others)
        except targeting.RuleError as exc:
            raise ValidationError({"conditions": f"flag {flag.key}: {exc}"}) from None
    after = _segment_state(locked, new_in, new_out)
    if {k: v for k, v in after.items() if k != "version"} == {k: v for k, v in before.items() if k != "version"}:
        return locked
    locked.version += 1
    locked.updated_at = now or timezone.now()
    locked.save(update_fields=["name", "description", "conditions", "version", "updated_at"])
    if (new_in, new_out) != (ids_in, ids_out):
        _write_members(locked, new_in, new_out)
    for flag in flags:
        _bump(flag, (), now)
    if not flags:
        publish_config_change()
    changed = sorted(k for k in after if k != "version" and after[k] != before[k])
    _segment_audit(locked, actor=actor, source=source, action="segment_update",
                   before={k: before[k] for k in changed} | {"version": before["version"]},
                   after={k: after[k] for k in changed} | {"version": locked.version},
                   reason=reason, flags=flags, at=now)
    return locked


@transaction.atomic
def segment_delete(*, segment: Segment | str, actor: Actor, source: str, reason: str = "",
                   now: datetime | None = None) -> None:
    """Delete a segment no flag's rules name (refused otherwise, naming those flags)."""
    require_reason(source=source, reason=reason)
    locked = _lock_segment(segment)
    flags = flags_using(locked.key)
    if flags:
        raise ValidationError({"segment": f"used by the rules of {', '.join(f.key for f in flags[:10])}; "
                                          "remove it from those rules first"})
    ids_in, ids_out = segment_members(locked)
    before = _segment_state(locked, ids_in, ids_out)
    _segment_audit(locked, actor=actor, source=source, action="segment_delete", before=before, after={},
                   reason=reason, flags=[], at=now)
    locked.delete()
    publish_config_change()
