"""Reads of alerts for other pages (the flags list): one query for any number of flags."""

from __future__ import annotations

from typing import TypedDict

from django.db.models import Count

from .models import OPEN_STATES, Alert, Severity

# Worst first: an open critical episode outranks any number of warnings.
SEVERITY_ORDER = (Severity.CRITICAL, Severity.WARNING)


class OpenAlerts(TypedDict):
    count: int
    severity: str  # the worst severity among the flag's open episodes


def open_alerts_by_flag() -> dict[int, OpenAlerts]:
    """Each flag with open (firing or acknowledged) alerts: how many, and the worst severity. Flags without
    open alerts are absent."""
    rows = Alert.objects.filter(state__in=OPEN_STATES).values("flag_id", "severity").annotate(n=Count("id"))
    out: dict[int, OpenAlerts] = {}
    for row in rows.order_by():
        entry = out.setdefault(row["flag_id"], {"count": 0, "severity": row["severity"]})
        entry["count"] += row["n"]
        if _rank(row["severity"]) < _rank(entry["severity"]):
            entry["severity"] = row["severity"]
    return out


def _rank(severity: str) -> int:
    return SEVERITY_ORDER.index(severity) if severity in SEVERITY_ORDER else len(SEVERITY_ORDER)
