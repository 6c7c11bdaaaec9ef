"""Alert checks: guardrails judged with confidence, one episode per regression, and remediation.

Each rule is judged by alerts.guardrails on the flag's current stage (alerts.health): firing needs
confidence (an interval wholly on the worse side, or a CUSUM over the recent minutes past its limit),
never a raw average. An alert is one episode per rule (firing -> acknowledged -> resolved): it opens
when the rule regresses, and resolves when the rule is healthy again with its CUSUM back under half its
limit, so noise near the limit cannot open and close episodes in turn. Notifications go out on firing and
on resolving, not on every check.

Remediation only ever reduces exposure: `rollback` (the default critical action) takes the flag to 0%,
or with a running plan to the plan's previous stage and pauses the plan; `cap_rollout` never raises.

Each flag is checked under a row lock on the flag, re-reading its data under it, so overlapping checks act
once. Every time written (episodes, notifications, audit entries, plan changes) is the check's `now`.
"""

from __future__ import annotations

import functools
import logging
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from flags import services as flag_services
from flags.actors import Actor
from flags.models import Flag, Source

from . import guardrails, health, notify, outbox, plans
from .health import RuleResult
from .models import DEFAULT_RULES, OPEN_STATES, Action, Alert, AlertRule, AlertState, Notification

logger = logging.getLogger(__name__)

__all__ = ["RuleResult", "acknowledge", "check_all", "check_flag", "ensure_default_rules"]


def ensure_default_rules(flag: Flag) -> list[AlertRule]:
    """The default rules for a new flag (idempotent: only when the flag has no rules yet)."""
    if AlertRule.objects.filter(flag=flag).exists():
        return []
    return AlertRule.objects.bulk_create([AlertRule(flag=flag, **rule) for rule in DEFAULT_RULES])


def _actor(rule: AlertRule) -> Actor:
    return Actor.system(f"alert-rule:{rule.pk} {rule.name}")


def _in_cooldown(rule: AlertRule, now: datetime) -> bool:
    """The rule took an action less than its cooldown ago (in this episode or an earlier one)."""
    latest = Alert.objects.filter(rule=rule).exclude(actions_taken=[]).order_by("-opened_at").first()
    if latest is None:
        return False
    last = max(datetime.fromisoformat(step["at"]) for step in latest.actions_taken)
    return now - last < timedelta(minutes=rule.cooldown_minutes)


def _remediate(rule: AlertRule, flag: Flag, result: RuleResult, now: datetime, *,
               dry_run: bool) -> tuple[list[str], bool]:
    """The rule's action, only ever reducing exposure: what it did (or would do), and whether it acted."""
    actor, reason = _actor(rule), f"alert '{rule.name}': {result.detail}"
    if rule.action == Action.NOTIFY:
        return [], False
    if rule.action == Action.ROLLBACK:
        plan = plans.running_plan(flag)
        if plan is not None:
            return plans.step_back(plan, actor=actor, source=Source.ALERT, reason=reason, now=now, dry_run=dry_run)
    if rule.action in (Action.CAP_ROLLOUT, Action.ROLLBACK):
        cap = Decimal(0) if rule.action == Action.ROLLBACK else Decimal(rule.action_value or 0)
        if flag.rollout_percentage <= cap:
            return [f"rollout already at {flag.rollout_percentage}% (limit {cap}%): nothing to reduce"], False
        done = [f"rollout reduced from {flag.rollout_percentage}% to {cap}%"]
        if dry_run:
            flag.rollout_percentage = cap  # in memory only: the next rule of a dry run sees what this did
        else:
            flag_services.flag_update(flag=flag, rollout_percentage=cap, only_reduce=True, actor=actor,
                                      source=Source.ALERT, reason=reason, now=now)
        return done, True
    if rule.action == Action.DISABLE:
        if not flag.enabled:
            return ["flag already disabled"], False
        if dry_run:
            flag.enabled = False  # in memory only, as above
        else:
            flag_services.flag_update(flag=flag, enabled=False, only_reduce=True, actor=actor, source=Source.ALERT,
                                      reason=reason, now=now)
        return ["flag disabled (kill switch)"], True
    if rule.action == Action.PAUSE_PLAN:
        paused = plans.pause_running_plan(flag, actor=actor, source=Source.ALERT, reason=reason, now=now,
                                          dry_run=dry_run)
        return (["rollout plan paused"], True) if paused else (["no running plan to pause"], False)
    return [], False  # pragma: no cover - choices are closed


def _notify(alert: Alert, event: str, now: datetime) -> None:
    channels = []
    if getattr(settings, "ALERT_EMAILS", []):
        channels.append("email")
    if getattr(settings, "ALERT_WEBHOOK_URL", ""):
        channels.append("webhook")
    for channel in channels:
        # The outbox: `created_at` is the check's time; the flush goes by real time (alerts.notify).
        queued = timezone.now()
        notification = Notification.objects.create(alert=alert, event=event, channel=channel, created_at=now,
                                                   queued_at=queued, next_attempt_at=queued + notify.grace())
        transaction.on_commit(functools.partial(_enqueue, notification.pk))


def _enqueue(notification_id: int) -> None:
    """Hand it to Celery; a refused broker is recorded on the row, and the outbox flush sends it later."""
    outbox.enqueue(notification_id)


# Alert.value holds 14 digits, 3 after the point: an absurd estimate (a baseline of 1 token against 10^9)
# is shown at the edge of that range instead of failing the check.
VALUE_LIMIT = 10**11 - 1


def _value(result: RuleResult) -> Decimal | None:
    estimate = result.verdict.estimate
    if estimate is None:
        return None
    return Decimal(str(round(max(-VALUE_LIMIT, min(VALUE_LIMIT, estimate)), 3)))


def check_flag(flag_key: str, *, now: datetime | None = None, dry_run: bool = False) -> list[RuleResult]:
    """Judge every enabled rule of one flag and act on the verdicts, under a row lock on the flag."""
    now = now or timezone.now()
    with transaction.atomic():
        flag = Flag.objects.select_for_update().get(key=flag_key)
        open_alerts = {a.rule_id: a for a in Alert.objects.filter(flag=flag, state__in=OPEN_STATES)}
        rules = list(AlertRule.objects.filter(flag=flag, enabled=True).order_by("id"))
        data = health.stage_data([flag], now)[flag.key]
        enabled = {rule.pk for rule in rules}
        for alert in open_alerts.values():
            if alert.rule_id not in enabled and not dry_run:
                _resolve(alert, now, "resolved: the rule was disabled")
        results = health.judge_rules(rules, data, set(open_alerts) & enabled)
        stepped_back_by: AlertRule | None = None
        for result in results:
            if _apply(result.rule, flag, result, now, open_alerts.get(result.rule.pk), stepped_back_by,
                      dry_run=dry_run):
                if not dry_run:
                    flag.refresh_from_db()  # a remediation changed it: the next rule sees the new state
                if stepped_back_by is None and any(a.startswith("rollout plan") for a in result.actions):
                    stepped_back_by = result.rule
        if dry_run:
            transaction.set_rollback(True)
    return results


def _resolves(result: RuleResult) -> bool:
    verdict = result.verdict
    return result.state == guardrails.HEALTHY and verdict.cusum <= verdict.cusum_limit / 2


def _apply(rule: AlertRule, flag: Flag, result: RuleResult, now: datetime, alert: Alert | None,
           stepped_back_by: AlertRule | None, *, dry_run: bool) -> bool:
    """Open, update or resolve the rule's episode and remediate; True when the flag may have changed.

    One regression is usually seen by several rules at once (error rate and error delta): once one of them
    has stepped a running plan back in this check, another rollback rule does not step it back again."""
    acted = False
    if result.state == guardrails.REGRESSING:
        if alert is None:
            alert = Alert.objects.create(rule=rule, flag=flag, severity=rule.severity, value=_value(result),
                                         message=result.detail, opened_at=now, last_checked_at=now)
            result.actions.append("alert opened")
            if not dry_run:
                _notify(alert, "firing", now)
        else:
            alert.value, alert.message, alert.last_checked_at = _value(result), result.detail, now
        if rule.action != Action.NOTIFY:
            if stepped_back_by is not None and rule.action == Action.ROLLBACK:
                result.actions.append(f"the rollout plan already stepped back in this check ('{stepped_back_by.name}')")
            elif _in_cooldown(rule, now):
                result.actions.append(f"in cooldown ({rule.cooldown_minutes} min since the last action): no action")
            else:
                done, acted = _remediate(rule, flag, result, now, dry_run=dry_run)
                result.actions += done
                result.acted = acted
                if acted and not dry_run:
                    alert.actions_taken = [*alert.actions_taken, {"at": now.isoformat(), "what": done}]
        alert.save()
    elif alert is not None and _resolves(result):
        _resolve(alert, now, f"resolved: {result.detail}", notify=not dry_run)
        result.actions.append("alert resolved")
    elif alert is not None:
        # Not enough data (after a rollback there are no treatment calls), or healthy but with recent
        # evidence still near the limit: the episode stays open until the data shows it has cleared.
        alert.last_checked_at = now
        alert.save(update_fields=["last_checked_at"])
    return acted


def _resolve(alert: Alert, now: datetime, message: str, *, notify: bool = True) -> None:
    alert.state, alert.resolved_at, alert.last_checked_at, alert.message = AlertState.RESOLVED, now, now, message
    alert.save()
    if notify:
        _notify(alert, "resolved", now)


def check_all(*, now: datetime | None = None, dry_run: bool = False,
              flag_key: str | None = None) -> dict[str, list[RuleResult]]:
    """Check every flag. A first pass reads without locks; only a flag with a regressing rule or an open
    alert (something to open, update, remediate or resolve) is checked again under its row lock."""
    now = now or timezone.now()
    query = Flag.objects.order_by("key")
    if flag_key:
        query = query.filter(key=flag_key)
    flags = list(query)
    rules: dict[int, list[AlertRule]] = {}
    for rule in AlertRule.objects.filter(enabled=True, flag__in=flags).order_by("id"):
        rules.setdefault(rule.flag_id, []).append(rule)
    open_rules: dict[int, set[int]] = {}
    for flag_id, rule_id in Alert.objects.filter(state__in=OPEN_STATES).values_list("flag_id", "rule_id"):
        open_rules.setdefault(flag_id, set()).add(rule_id)
    data = health.stage_data([flag for flag in flags if flag.pk in rules], now)
    results: dict[str, list[RuleResult]] = {}
    for flag in flags:
        if flag.pk not in rules:
            results[flag.key] = []
            continue
        try:
            first = health.judge_rules(rules[flag.pk], data[flag.key], open_rules.get(flag.pk, set()))
            if flag.pk in open_rules or any(result.state == guardrails.REGRESSING for result in first):
                results[flag.key] = check_flag(flag.key, now=now, dry_run=dry_run)
            else:
                results[flag.key] = first  # healthy or not enough data, nothing open: nothing to write
        except Exception:
            # One flag's failure must not leave every other flag unguarded for this beat.
            logger.exception("alert check of flag %s failed", flag.key)
            results[flag.key] = []
    return results


@transaction.atomic
def acknowledge(*, alert: Alert, user: Any) -> Alert:
    locked = Alert.objects.select_for_update().get(pk=alert.pk)
    if locked.state == AlertState.FIRING:
        locked.state = AlertState.ACKNOWLEDGED
        locked.acknowledged_at = timezone.now()
        locked.acknowledged_by = user.get_username()
        locked.save(update_fields=["state", "acknowledged_at", "acknowledged_by"])
    return locked
