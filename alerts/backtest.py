"""Backtesting: replay the alert check minute by minute over recorded traffic, changing nothing.

Everything runs inside one transaction that is rolled back at the end: the flag is put back to its state
at `since` (undoing, newest first, every audited change made after it), alerts are cleared, rule changes
under trial are applied, and then each minute the flag's recorded changes of that minute are replayed
(so stages begin where they really began; the remediations the checker really made are not replayed,
since the replay decides its own) and `alerts.services.check_all` runs with that minute as `now`,
exactly as the beat would have. What it would have done is returned as events: episodes opened and
resolved, and the actions that changed something.

What a replay cannot know: after a remediation the recorded traffic stays what it was (a real rollback
would have moved users to the baseline), and rollout plans are not ticked (a running plan is set aside).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction

from flags.models import EXPOSURE_FIELDS, AuditEntry, Flag, Source

from . import health, services
from .models import Alert, AlertRule, PlanState, RolloutPlan

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


def _apply_override(flag: Flag, rule_id: int, name: str, value: str) -> None:
    rule = AlertRule.objects.filter(flag=flag, pk=rule_id).first()
    if rule is None:
        raise ValidationError({"set": f"rule {rule_id} is not a rule of {flag.key}"})
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
    rule.save()


def _restore(flag: Flag, entries: list[AuditEntry]) -> None:
    """Put the flag's exposure fields back as they were before these entries (newest first)."""
    values: dict[str, Any] = {}
    for entry in entries:
        for name in EXPOSURE_FIELDS:
            if name in entry.before:
                values[name] = entry.before[name]
    if values:
        Flag.objects.filter(pk=flag.pk).update(**values)


def _replay_recorded(flag: Flag, entries: list[AuditEntry]) -> list[Event]:
    events = []
    for entry in entries:
        values = {name: entry.after[name] for name in EXPOSURE_FIELDS if name in entry.after}
        if values:
            Flag.objects.filter(pk=flag.pk).update(**values)
            if entry.action == "create":
                changes = "created: " + ", ".join(f"{name} {value}" for name, value in values.items())
            else:
                changes = ", ".join(f"{name} {entry.before.get(name)} -> {value}" for name, value in values.items())
            events.append(Event(entry.created_at, "recorded",
                                f"{changes} by {entry.actor} ({entry.get_source_display()})"))
    return events


def backtest(flag: Flag, since: datetime, until: datetime, overrides: list[str] | None = None) -> list[Event]:
    """Replay the checker for `flag` at the end of every minute in (since, until]; nothing is kept."""
    since, until = health.minute_floor(since), health.minute_floor(until)
    if since >= until:
        raise ValidationError({"until": "must be after since"})
    if until - since > timedelta(days=MAX_DAYS):
        raise ValidationError({"since": f"a backtest covers at most {MAX_DAYS} days"})
    parsed = [parse_override(text) for text in overrides or []]
    events: list[Event] = []
    with transaction.atomic():
        flag = Flag.objects.select_for_update().get(pk=flag.pk)
        recorded = list(AuditEntry.objects.filter(flag=flag, created_at__gt=since).order_by("-created_at", "-id"))
        _restore(flag, recorded)
        ignore = frozenset(entry.pk for entry in recorded if entry.source == Source.ALERT)
        recorded = [entry for entry in reversed(recorded) if entry.pk not in ignore]
        Alert.objects.filter(flag=flag).delete()
        RolloutPlan.objects.filter(flag=flag, state=PlanState.RUNNING).update(state=PlanState.PAUSED)
        for rule_id, name, value in parsed:
            _apply_override(flag, rule_id, name, value)
        moment = since
        while moment < until:
            moment += timedelta(minutes=1)
            due = [entry for entry in recorded if entry.created_at <= moment]
            recorded = recorded[len(due):]
            events += _replay_recorded(flag, due)
            for result in services.check_all(now=moment, flag_key=flag.key, ignore=ignore).get(flag.key, []):
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
