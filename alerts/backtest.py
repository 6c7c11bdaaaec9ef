"""Backtesting: replay the alert check minute by minute over recorded traffic, changing nothing.

The replay runs on a *shadow* of the flag, inside one transaction that is rolled back at the end, so it
takes no lock that anybody else waits for (the real flag, its alerts and the config stamp are never
written; changes announce nothing, see flags.publish.suppressed):

- the shadow is a new flag with the real one's state at `since` (undoing, newest first, every audited
  change made after it), a copy of its rules (with the changes under trial applied) and a copy of its
  rollups (unflagged records count for both anyway);
- its stage boundaries are the real ones: the change that began the stage in force at `since`, then each
  recorded change in the range at its own time, except the remediations the checker really made (the
  replay decides its own);
- each minute `alerts.services.check_all` runs on the shadow with that minute as `now`, exactly as the
  beat would have. What it would have done is returned as events: episodes opened and resolved, and the
  actions that changed something.

What a replay cannot know: after a remediation the recorded traffic stays what it was (a real rollback
would have moved users to the baseline), and rollout plans are not replayed (the shadow has none, so a
rollback goes to 0% where a running plan would have stepped back one stage). On the embedded SQLite
database any write transaction locks the whole file, so there a backtest delays other writes until it
ends; use PostgreSQL in production.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.forms.models import model_to_dict

from flags import selectors as flag_selectors
from flags.models import EXPOSURE_FIELDS, ActorKind, AuditEntry, Flag, Source
from flags.publish import suppressed
from monitoring import selectors as metrics
from monitoring.models import Rollup

from . import health, services
from .models import AlertRule

MAX_DAYS = 31
EDITABLE = {"threshold", "alpha", "cusum_limit", "severity", "action", "action_value", "cooldown_minutes",
            "enabled", "comparison"}


@dataclass
class Event:
    at: datetime
    kind: str  # opened, resolved, action, recorded
    text: str


def parse_override(text: str) -> tuple[int, str, str]:
    """'RULE_ID.field=value' -> (rule id, field, value); ValidationError naming the problem."""
    target, sep, value = text.partition("=")
    rule_id, dot, name = target.partition(".")
    if not sep or not dot or not rule_id.isascii() or not rule_id.isdigit():
        raise ValidationError({"set": f"{text!r}: write RULE_ID.field=value, e.g. 12.threshold=3"})
    if name not in EDITABLE:
        raise ValidationError({"set": f"{text!r}: the field must be one of {', '.join(sorted(EDITABLE))}"})
    return int(rule_id), name, value


def _apply_override(rule: AlertRule, rule_id: int, name: str, value: str) -> None:
    if name == "enabled":
        if value not in {"true", "false"}:
            raise ValidationError({"set": f"{rule_id}.enabled must be true or false"})
        setattr(rule, name, value == "true")
    elif name == "cusum_limit" and value in {"", "default"}:
        rule.cusum_limit = None
    elif name in {"threshold", "alpha", "cusum_limit", "action_value"}:
        try:
            setattr(rule, name, Decimal(value))
        except InvalidOperation:
            raise ValidationError({"set": f"{rule_id}.{name} must be a number"}) from None
    elif name == "cooldown_minutes":
        if not value.isascii() or not value.isdigit():
            raise ValidationError({"set": f"{rule_id}.cooldown_minutes must be a whole number"})
        rule.cooldown_minutes = int(value)
    else:
        setattr(rule, name, value)
    try:
        rule.full_clean(exclude=["flag"])
    except ValidationError as exc:
        raise ValidationError({"set": f"rule {rule_id}: " + "; ".join(
            f"{field}: {' '.join(messages)}" for field, messages in exc.message_dict.items())}) from None


def _state_at(flag: Flag, later: list[AuditEntry]) -> dict[str, Any]:
    """The flag's exposure fields as they were before these entries (given newest first)."""
    state = {name: getattr(flag, name) for name in EXPOSURE_FIELDS}
    for entry in later:
        for name in EXPOSURE_FIELDS:
            if name in entry.before:
                state[name] = entry.before[name]
    return state


def _shadow(flag: Flag, state: dict[str, Any], rules: list[AlertRule]) -> Flag:
    shadow = Flag.objects.create(key=f"backtest-{uuid.uuid4().hex}", name=f"backtest of {flag.key}",
                                 **{name: value for name, value in state.items()})
    for rule in rules:
        values = model_to_dict(rule, exclude=["id", "flag"])
        AlertRule.objects.create(flag=shadow, **values)
    return shadow


def _copy_rollups(flag: Flag, shadow: Flag, start: datetime, end: datetime) -> None:
    """The flag's own rollups in [start, end), as the shadow's (one INSERT ... SELECT, no row locks)."""
    table = connection.ops.quote_name(Rollup._meta.db_table)
    names = [f.column for f in Rollup._meta.concrete_fields if f.column and f.column not in {"id", "flag_key"}]
    columns = ", ".join(connection.ops.quote_name(name) for name in names)
    key, bucket = connection.ops.quote_name("flag_key"), connection.ops.quote_name("bucket_start")
    with connection.cursor() as cursor:
        # Only quoted identifiers are formatted in; every value is a parameter.
        cursor.execute(f"INSERT INTO {table} ({key}, {columns}) SELECT %s, {columns} FROM {table} "  # noqa: S608
                       f"WHERE {key} = %s AND {bucket} >= %s AND {bucket} < %s",
                       [shadow.key, flag.key, start, end])


def _record(shadow: Flag, entry: AuditEntry, after: dict[str, Any]) -> None:
    AuditEntry.objects.create(actor_kind=entry.actor_kind, actor=entry.actor, source=entry.source, flag=shadow,
                              flag_key=shadow.key, action=entry.action, before=entry.before, after=after,
                              reason=entry.reason, flag_version=entry.flag_version, created_at=entry.created_at)


def _describe(entry: AuditEntry, values: dict[str, Any]) -> str:
    if entry.action == "create":
        changes = "created: " + ", ".join(f"{name} {value}" for name, value in values.items())
    else:
        changes = ", ".join(f"{name} {entry.before.get(name)} -> {value}" for name, value in values.items())
    return f"{changes} by {entry.actor} ({entry.get_source_display()})"


def backtest(flag: Flag, since: datetime, until: datetime, overrides: list[str] | None = None) -> list[Event]:
    """Replay the checker for `flag` at the end of every minute in (since, until]; nothing is kept."""
    since, until = metrics.minute_floor(since), metrics.minute_floor(until)
    if since >= until:
        raise ValidationError({"until": "must be after since"})
    if until - since > timedelta(days=MAX_DAYS):
        raise ValidationError({"since": f"a backtest covers at most {MAX_DAYS} days"})
    rules = list(AlertRule.objects.filter(flag=flag).order_by("id"))
    by_id = {rule.pk: rule for rule in rules}
    for rule_id, name, value in (parse_override(text) for text in overrides or []):
        if rule_id not in by_id:
            raise ValidationError({"set": f"rule {rule_id} is not a rule of {flag.key}"})
        _apply_override(by_id[rule_id], rule_id, name, value)  # on the copies in memory, never saved
    later = list(AuditEntry.objects.filter(flag=flag, created_at__gt=since).order_by("-created_at", "-id"))
    state = _state_at(flag, later)
    began = flag_selectors.stage_starts([flag], since).get(flag.pk)
    recorded = [entry for entry in reversed(later) if entry.source != Source.ALERT]
    events: list[Event] = []
    with transaction.atomic(), suppressed():
        shadow = _shadow(flag, state, rules)
        # The stage in force at `since` began at `began`: the shadow's first boundary is there.
        if began is not None:
            after = {name: str(value) if isinstance(value, Decimal) else value for name, value in state.items()}
            AuditEntry.objects.create(actor_kind=ActorKind.SYSTEM, actor="backtest", source=Source.SYSTEM,
                                      flag=shadow, flag_key=shadow.key, action="create", after=after,
                                      flag_version=0, created_at=began)
        _copy_rollups(flag, shadow, (began or since).replace(minute=0) - timedelta(hours=1),
                      until + timedelta(hours=1))
        moment = since
        while moment < until:
            moment += timedelta(minutes=1)
            while recorded and recorded[0].created_at <= moment:
                entry = recorded.pop(0)
                values = {name: entry.after[name] for name in EXPOSURE_FIELDS if name in entry.after}
                if values:
                    Flag.objects.filter(pk=shadow.pk).update(**values)
                    _record(shadow, entry, values)
                    events.append(Event(entry.created_at, "recorded", _describe(entry, values)))
            for result in services.check_all(now=moment, flag_key=shadow.key).get(shadow.key, []):
                events += _events(moment, result)
        transaction.set_rollback(True)
    return events


def _events(moment: datetime, result: health.RuleResult) -> list[Event]:
    out = []
    rule = result.rule
    for action in result.actions:
        if action == "alert opened":
            out.append(Event(moment, "opened", f"'{rule.name}' ({rule.severity}): {result.detail}"))
        elif action == "alert resolved":
            out.append(Event(moment, "resolved", f"'{rule.name}': {result.detail}"))
        elif result.acted:
            out.append(Event(moment, "action", f"'{rule.name}': {action}"))
    return out
