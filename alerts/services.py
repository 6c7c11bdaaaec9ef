"""Alert checks and remediation.

What the seed got wrong and this does not: remediation only ever reduces exposure (a cap never raises
a 10% rollout to 50%); a rule without enough data on every side it compares is "no data", never firing;
rates are numbers and no data is not 0%; and an alert is one episode per rule (firing -> acknowledged ->
resolved) with notifications on firing and on resolving, not an entry per check.

Each flag is checked under a row lock on the flag, re-reading state under it, so overlapping checks
(two beat ticks, a manual run beside the beat, a worker that died and was retried) act once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from flags import services as flag_services
from flags.actors import Actor
from flags.models import Flag, Source
from monitoring import selectors as metrics

from .models import (
    COMPARATIVE_METRICS,
    DEFAULT_RULES,
    OPEN_STATES,
    Action,
    Alert,
    AlertRule,
    AlertState,
    Comparison,
    Metric,
    Notification,
)

logger = logging.getLogger(__name__)

FIRING, OK, NO_DATA = "firing", "ok", "no data"


@dataclass
class RuleResult:
    rule: AlertRule
    state: str  # firing, ok, no data
    value: Decimal | None
    detail: str
    actions: list[str] = field(default_factory=list)


def ensure_default_rules(flag: Flag) -> list[AlertRule]:
    """The seed's four rules for a new flag (idempotent: only when the flag has no rules yet)."""
    if AlertRule.objects.filter(flag=flag).exists():
        return []
    return AlertRule.objects.bulk_create([AlertRule(flag=flag, **rule) for rule in DEFAULT_RULES])


def _compare(value: Decimal, comparison: str, threshold: Decimal) -> bool:
    return {
        Comparison.GT: value > threshold,
        Comparison.GTE: value >= threshold,
        Comparison.LT: value < threshold,
        Comparison.LTE: value <= threshold,
    }[comparison]


def _window(minutes: int, now: datetime) -> tuple[datetime, datetime]:
    end = now.replace(second=0, microsecond=0) + timedelta(minutes=1)  # the current minute counts
    return end - timedelta(minutes=minutes), end


def measure(rule: AlertRule, flag: Flag, now: datetime, cache: dict[int, dict[str, Any]]) -> RuleResult:
    """Judge one rule on its window: firing, ok, or no data (too few calls on a side it needs)."""
    if rule.window_minutes not in cache:
        window = _window(rule.window_minutes, now)
        cache[rule.window_minutes] = metrics.summary_between(flag, *window, unique_users=False)
    summary = cache[rule.window_minutes]
    treatment = summary["modes"][flag.treatment_mode]
    baseline = summary["modes"][flag.baseline_mode]
    needed = max(1, rule.min_samples)  # with no calls there is nothing to judge, whatever the rule says
    if treatment["total_calls"] < needed:
        return RuleResult(rule, NO_DATA, None, f"{treatment['total_calls']} {flag.treatment_mode} call(s) in "
                                                 f"{rule.window_minutes} min, {needed} needed")
    if rule.metric in COMPARATIVE_METRICS and baseline["total_calls"] < needed:
        return RuleResult(rule, NO_DATA, None, f"{baseline['total_calls']} {flag.baseline_mode} (baseline) call(s) "
                                                 f"in {rule.window_minutes} min, {needed} needed")
    if rule.metric == Metric.ERROR_RATE:
        raw, unit = treatment["error_rate"], "%"
    elif rule.metric == Metric.SUCCESS_RATE:
        raw, unit = treatment["success_rate"], "%"
    elif rule.metric == Metric.P95_LATENCY_MS:
        raw, unit = treatment["p95_latency_ms"], " ms"
    else:
        key = "avg_latency_ms" if rule.metric == Metric.LATENCY_RATIO else "avg_tokens_per_call"
        if not baseline[key]:
            return RuleResult(rule, NO_DATA, None, f"baseline {key} is 0: nothing to compare with")
        raw, unit = treatment[key] / baseline[key], "x baseline"
    if raw is None:
        return RuleResult(rule, NO_DATA, None, f"no {rule.metric} in {rule.window_minutes} min")
    value = Decimal(str(round(raw, 3)))
    verdict = FIRING if _compare(value, rule.comparison, rule.threshold) else OK
    fires_when = f"{rule.get_comparison_display()} {rule.threshold.normalize()} fires"
    detail = f"{rule.get_metric_display()} = {value}{unit} ({fires_when}) over {rule.window_minutes} min"
    return RuleResult(rule, verdict, value, detail)


def _actor(rule: AlertRule) -> Actor:
    return Actor.system(f"alert-rule:{rule.pk} {rule.name}")


def _in_cooldown(rule: AlertRule, now: datetime) -> bool:
    """The rule took an action less than its cooldown ago (in this episode or an earlier one)."""
    latest = Alert.objects.filter(rule=rule).exclude(actions_taken=[]).order_by("-opened_at").first()
    if latest is None:
        return False
    last = max(datetime.fromisoformat(step["at"]) for step in latest.actions_taken)
    return now - last < timedelta(minutes=rule.cooldown_minutes)


def _remediate(rule: AlertRule, flag: Flag, result: RuleResult, *, dry_run: bool) -> tuple[list[str], bool]:
    """The rule's action, only ever reducing exposure: what it did (or would do), and whether it acted."""
    actor, reason = _actor(rule), f"alert: {result.detail}"
    if rule.action == Action.NOTIFY:
        return [], False
    if rule.action in (Action.CAP_ROLLOUT, Action.ROLLBACK):
        cap = Decimal(0) if rule.action == Action.ROLLBACK else Decimal(rule.action_value or 0)
        if flag.rollout_percentage <= cap:
            return [f"rollout already at {flag.rollout_percentage}% (cap {cap}%): nothing to reduce"], False
        if not dry_run:
            flag_services.flag_update(flag=flag, rollout_percentage=cap, only_reduce=True, actor=actor,
                                      source=Source.ALERT, reason=reason)
        return [f"rollout reduced from {flag.rollout_percentage}% to {cap}%"], True
    if rule.action == Action.DISABLE:
        if not flag.enabled:
            return ["flag already disabled"], False
        if not dry_run:
            flag_services.flag_update(flag=flag, enabled=False, only_reduce=True, actor=actor, source=Source.ALERT,
                                      reason=reason)
        return ["flag disabled (kill switch)"], True
    if rule.action == Action.PAUSE_PLAN:
        from .plans import pause_running_plan

        paused = pause_running_plan(flag, actor=actor, source=Source.ALERT, reason=reason, dry_run=dry_run)
        return (["rollout plan paused"], True) if paused else (["no running plan to pause"], False)
    return [], False  # pragma: no cover - choices are closed


def _notify(alert: Alert, event: str) -> None:
    channels = []
    if getattr(settings, "ALERT_EMAILS", []):
        channels.append("email")
    if getattr(settings, "ALERT_WEBHOOK_URL", ""):
        channels.append("webhook")
    for channel in channels:
        notification = Notification.objects.create(alert=alert, event=event, channel=channel)
        transaction.on_commit(lambda pk=notification.pk: _enqueue(pk))


def _enqueue(notification_id: int) -> None:
    from .tasks import send_notification

    try:
        send_notification.delay(notification_id)
    except Exception:
        logger.exception("could not enqueue notification %s", notification_id)


def check_flag(flag_key: str, *, now: datetime | None = None, dry_run: bool = False) -> list[RuleResult]:
    """Check every enabled rule of one flag and remediate, under a row lock on the flag."""
    now = now or timezone.now()
    with transaction.atomic():
        flag = Flag.objects.select_for_update().get(key=flag_key)
        cache: dict[int, dict[str, Any]] = {}
        results = []
        open_alerts = {a.rule_id: a for a in Alert.objects.filter(flag=flag, state__in=OPEN_STATES)}
        for rule in AlertRule.objects.filter(flag=flag, enabled=True).order_by("id"):
            result = measure(rule, flag, now, cache)
            results.append(result)
            if _apply(rule, flag, result, now, open_alerts.get(rule.pk), dry_run=dry_run):
                flag.refresh_from_db()  # a remediation changed it: the next rule sees the new state
        if dry_run:
            transaction.set_rollback(True)
    return results


def _apply(rule: AlertRule, flag: Flag, result: RuleResult, now: datetime, alert: Alert | None, *,
           dry_run: bool) -> bool:
    """Open, update or resolve the rule's episode and remediate; True when the flag may have changed."""
    acted = False
    if result.state == FIRING:
        if alert is None:
            alert = Alert.objects.create(rule=rule, flag=flag, severity=rule.severity, value=result.value,
                                         message=result.detail, last_checked_at=now)
            result.actions.append("alert opened")
            if not dry_run:
                _notify(alert, "firing")
        else:
            alert.value, alert.message, alert.last_checked_at = result.value, result.detail, now
        if rule.action != Action.NOTIFY:
            if _in_cooldown(rule, now):
                result.actions.append(f"in cooldown ({rule.cooldown_minutes} min since the last action): no action")
            else:
                done, acted = _remediate(rule, flag, result, dry_run=dry_run)
                result.actions += done
                if acted and not dry_run:
                    alert.actions_taken = [*alert.actions_taken, {"at": now.isoformat(), "what": done}]
        alert.save()
    elif result.state == OK and alert is not None:
        alert.state, alert.resolved_at, alert.last_checked_at = AlertState.RESOLVED, now, now
        alert.message = f"resolved: {result.detail}"
        alert.save()
        result.actions.append("alert resolved")
        if not dry_run:
            _notify(alert, "resolved")
    elif alert is not None:
        alert.last_checked_at = now  # no data: the episode stays open until the condition is seen to clear
        alert.save(update_fields=["last_checked_at"])
    return acted


def check_all(*, now: datetime | None = None, dry_run: bool = False,
              flag_key: str | None = None) -> dict[str, list[RuleResult]]:
    """Check every flag. A first pass reads without locks; only a flag with a firing rule or an open
    alert (something to open, update, remediate or resolve) is checked again under its row lock."""
    now = now or timezone.now()
    flags = Flag.objects.order_by("key")
    if flag_key:
        flags = flags.filter(key=flag_key)
    rules: dict[int, list[AlertRule]] = {}
    for rule in AlertRule.objects.filter(enabled=True, flag__in=flags).order_by("id"):
        rules.setdefault(rule.flag_id, []).append(rule)
    with_open_alerts = set(Alert.objects.filter(state__in=OPEN_STATES).values_list("flag_id", flat=True))
    results: dict[str, list[RuleResult]] = {}
    flags = list(flags)
    # One read of the rollups per distinct window length, for every flag at once.
    windows: dict[int, dict[str, dict[str, Any]]] = {}
    for minutes in {rule.window_minutes for flag_rules in rules.values() for rule in flag_rules}:
        windows[minutes] = metrics.summaries_between(flags, *_window(minutes, now), unique_users=False)
    for flag in flags:
        cache = {minutes: summaries[flag.key] for minutes, summaries in windows.items()}
        first = [measure(rule, flag, now, cache) for rule in rules.get(flag.pk, [])]
        if flag.pk in with_open_alerts or any(result.state == FIRING for result in first):
            results[flag.key] = check_flag(flag.key, now=now, dry_run=dry_run)
        else:
            results[flag.key] = first  # all ok or no data, nothing open: nothing to write
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
