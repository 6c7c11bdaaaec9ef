"""Reads: the views, the CLI, the admin and the tasks ask here instead of building querysets."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime

from django.db.models import Max, OuterRef, QuerySet, Subquery

from . import evaluation
from .models import EXPOSURE_FIELDS, AuditEntry, Flag, OverrideKind, UserOverride


def possible_key(key: object) -> bool:
    """Keys come from URLs and bodies: one that cannot be a key (NUL, which PostgreSQL refuses) is unknown."""
    return isinstance(key, str) and 0 < len(key) <= 100 and "\x00" not in key


def flag_get(key: str) -> Flag | None:
    if not possible_key(key):
        return None
    return Flag.objects.filter(key=key).first()


def flags_with_last_change() -> QuerySet[Flag]:
    latest = AuditEntry.objects.filter(flag=OuterRef("pk")).order_by("-created_at", "-id")
    return Flag.objects.annotate(
        last_change_at=Subquery(latest.values("created_at")[:1]),
        last_change_by=Subquery(latest.values("actor")[:1]),
        last_change_action=Subquery(latest.values("action")[:1]),
    )


def flag_config(flag: Flag) -> evaluation.FlagConfig:
    """One flag with its lists, as the pure evaluator wants it."""
    allow: set[str] = set()
    deny: set[str] = set()
    for user_id, kind in UserOverride.objects.filter(flag=flag).values_list("user_id", "kind"):
        (allow if kind == OverrideKind.ALLOW else deny).add(user_id)
    return _to_config(flag, frozenset(allow), frozenset(deny))


def all_flag_configs() -> dict[str, evaluation.FlagConfig]:
    """Every flag with its lists in two queries: the evaluation snapshot."""
    lists: dict[int, tuple[set[str], set[str]]] = defaultdict(lambda: (set(), set()))
    for flag_id, user_id, kind in UserOverride.objects.values_list("flag_id", "user_id", "kind").iterator(
        chunk_size=10_000
    ):
        lists[flag_id][0 if kind == OverrideKind.ALLOW else 1].add(user_id)
    configs = {}
    for flag in Flag.objects.all():
        allow, deny = lists.get(flag.pk, (set(), set()))
        configs[flag.key] = _to_config(flag, frozenset(allow), frozenset(deny))
    return configs


def _to_config(flag: Flag, allow: frozenset[str], deny: frozenset[str]) -> evaluation.FlagConfig:
    return evaluation.FlagConfig(
        key=flag.key,
        enabled=flag.enabled,
        rollout_basis_points=evaluation.percentage_to_basis_points(flag.rollout_percentage),
        bucketing=flag.bucketing,
        salt=flag.salt or flag.key,
        version=flag.version,
        allow=allow,
        deny=deny,
        client_side=flag.client_side,
    )


def audit_for_flag(flag: Flag, *, limit: int = 20) -> list[AuditEntry]:
    return list(AuditEntry.objects.filter(flag=flag).order_by("-created_at", "-id")[:limit])


def last_change(flag: Flag) -> AuditEntry | None:
    return AuditEntry.objects.filter(flag=flag).order_by("-created_at", "-id").first()


def override_counts(flag: Flag) -> dict[str, int]:
    counts = {kind: 0 for kind in OverrideKind.values}
    for kind in OverrideKind.values:
        counts[kind] = UserOverride.objects.filter(flag=flag, kind=kind).count()
    return counts


def stage_starts(flags: list[Flag], at: datetime) -> dict[int, datetime]:
    """When each flag's current rollout stage began, as of `at`: its latest audited change to who gets it
    (EXPOSURE_FIELDS, creation included) at or before `at`. One query for any number of flags."""
    entries = AuditEntry.objects.filter(flag__in=flags, created_at__lte=at, after__has_any_keys=list(EXPOSURE_FIELDS))
    rows = entries.values("flag_id").annotate(started=Max("created_at"))
    return {row["flag_id"]: row["started"] for row in rows}


def exposure_changes(flag: Flag, *, until: datetime) -> list[AuditEntry]:
    """The flag's audited changes to who gets it (stage boundaries), oldest first, up to `until`."""
    return list(AuditEntry.objects.filter(flag=flag, created_at__lte=until, after__has_any_keys=list(EXPOSURE_FIELDS))
                .order_by("created_at", "id"))
