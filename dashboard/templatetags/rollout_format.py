"""How the dashboard writes times, durations and counts: one place, so every page reads the same.

{% load rollout_format %}
{{ entry.created_at|utc }}        2026-11-27 19:52:39 UTC
{{ stage.min_duration_minutes|minutes }}   7 days / 1 day 12 h / 45 min
{{ count|thousands }}             12,345 (also for Decimals: 12,345.5)
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from django import template
from django.contrib.humanize.templatetags.humanize import intcomma

register = template.Library()


@register.filter
def utc(value: datetime | None) -> str:
    """A moment as UTC with seconds, saying so; '' for None."""
    if value is None:
        return ""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return value
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return f"{value:%Y-%m-%d %H:%M:%S} UTC"


@register.filter
def minutes(value: int | None) -> str:
    """A duration in minutes as people say it: days and hours, or minutes under an hour."""
    if value is None or value == "":
        return ""
    total = int(value)
    if total < 60:
        return f"{total} min"
    days, rest = divmod(total, 24 * 60)
    hours, mins = divmod(rest, 60)
    parts = []
    if days:
        parts.append(f"{days} day" + ("s" if days != 1 else ""))
    if hours:
        parts.append(f"{hours} h")
    if mins:
        parts.append(f"{mins} min")
    return " ".join(parts)


@register.filter
def thousands(value: int | float | Decimal | None) -> str:
    """12345 -> 12,345 whatever the locale settings say (the dashboard is in English)."""
    if value is None:
        return ""
    return str(intcomma(value, use_l10n=False))
