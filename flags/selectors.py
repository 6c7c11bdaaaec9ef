"""Reads: the views, the CLI, the admin and the tasks ask here instead of building querysets."""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from django.db.models import Count, Max, OuterRef, Q, QuerySet, Subquery

from . import evaluation, targeting
from .models import EXPOSURE_FIELDS, AuditEntry, Flag, MemberKind, OverrideKind, Segment, SegmentMember, UserOverride
from .rules import KEY_MAX_LENGTH

logger = logging.getLogger(__name__)


def possible_key(key: object) -> bool:
    """Keys come from URLs and bodies: one that cannot be a key (NUL, which PostgreSQL refuses) is unknown."""
    return isinstance(key, str) and 0 < len(key) <= KEY_MAX_LENGTH and "\x00" not in key


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
    return _to_config(flag, frozenset(allow), frozenset(deny), segment_configs(_segment_keys([flag])))


def all_flag_configs() -> dict[str, evaluation.FlagConfig]:
    """Every flag with its lists, by key."""
    return {config.key: config for config in flag_configs_by_id().values()}


def flag_versions() -> list[tuple[int, str, int]]:
    """(id, key, version) of every flag: what an evaluating process compares with the flags it holds to know
    which ones changed (a version moves on every change of a flag, its lists included)."""
    return list(Flag.objects.values_list("id", "key", "version"))


# A query's parameters stay under SQLite's limit; PostgreSQL takes more but gains nothing from it.
_IDS_PER_QUERY = 500


def flag_configs_by_id(ids: Collection[int] | None = None) -> dict[int, evaluation.FlagConfig]:
    """The flags with these ids (every flag: None) with their lists, by flag id; ids gone are left out.

    The rows are read before the lists: a config is never older than the version it carries, so a reader
    that compares versions cannot miss a list change committed in between (it reads that flag again at its
    next check). A user id on several lists is stored once (the database hands every row its own string).
    """
    if ids is not None:
        wanted = sorted(set(ids))
        chunks = [wanted[i : i + _IDS_PER_QUERY] for i in range(0, len(wanted), _IDS_PER_QUERY)]
        flags = [flag for chunk in chunks for flag in Flag.objects.filter(pk__in=chunk)]
        queries = [UserOverride.objects.filter(flag_id__in=chunk) for chunk in chunks]
    else:
        flags = list(Flag.objects.all())
        queries = [UserOverride.objects.all()]
    lists: dict[int, tuple[list[str], list[str]]] = {flag.pk: ([], []) for flag in flags}
    seen: dict[str, str] = {}
    once = seen.setdefault
    for query in queries:
        rows = query.order_by().values_list("flag_id", "user_id", "kind").iterator(chunk_size=20_000)
        for flag_id, user_id, kind in rows:
            held = lists.get(flag_id)
            if held is not None:  # None: a flag created after its row was read; its next version brings it
                held[0 if kind == OverrideKind.ALLOW else 1].append(once(user_id, user_id))
    # After the rows, like the lists: a segment's change moves the version of every flag naming it.
    segments = segment_configs(_segment_keys(flags))
    return {flag.pk: _to_config(flag, frozenset(lists[flag.pk][0]), frozenset(lists[flag.pk][1]), segments)
            for flag in flags}


def segment_get(key: str) -> Segment | None:
    if not possible_key(key):
        return None
    return Segment.objects.filter(key=key).first()


def segment_members(segment: Segment) -> tuple[list[str], list[str]]:
    """(included, excluded) user ids of a segment, each sorted."""
    included: list[str] = []
    excluded: list[str] = []
    for user_id, kind in segment.members.order_by("user_id").values_list("user_id", "kind"):
        (included if kind == MemberKind.INCLUDED else excluded).append(user_id)
    return included, excluded


def segment_member_counts(segments: Iterable[Segment]) -> dict[int, tuple[int, int]]:
    """(included, excluded) counts by segment id, in one query."""
    counts = {segment.pk: [0, 0] for segment in segments}
    rows = SegmentMember.objects.filter(segment_id__in=list(counts)).order_by().values_list("segment_id", "kind")
    for segment_id, kind, n in rows.annotate(n=Count("id")):
        counts[segment_id][0 if kind == MemberKind.INCLUDED else 1] = n
    return {pk: (n[0], n[1]) for pk, n in counts.items()}


def audit_for_segment(key: str, *, limit: int = 20) -> list[AuditEntry]:
    return list(AuditEntry.objects.filter(segment_key=key).order_by("-created_at", "-id")[:limit])


def flags_by_segment() -> dict[str, list[Flag]]:
    """The flags whose rules name each segment, by segment key, in key order: one query for every segment."""
    using: dict[str, list[Flag]] = {}
    for flag in Flag.objects.exclude(rules=[]).order_by("key"):
        for key in _segment_keys([flag]):
            using.setdefault(key, []).append(flag)
    return using


def flags_using(segment_key: str) -> list[Flag]:
    """The flags whose rules name this segment, in key order."""
    return flags_by_segment().get(segment_key, [])


def _segment_keys(flags: Iterable[Flag]) -> set[str]:
    return {rule["segment"] for flag in flags for rule in flag.rules if isinstance(rule.get("segment"), str)}


def segment_configs(keys: Iterable[str] | None = None) -> dict[str, targeting.Segment]:
    """Segments (every one, or these keys) as flags/targeting.py's Segment, by key, in two queries."""
    if keys is not None:
        keys = list(keys)
        if not keys:
            return {}
    rows = {row.pk: row for row in (Segment.objects.all() if keys is None else Segment.objects.filter(key__in=keys))}
    included: dict[int, list[str]] = {pk: [] for pk in rows}
    excluded: dict[int, list[str]] = {pk: [] for pk in rows}
    members = SegmentMember.objects.filter(segment_id__in=list(rows)).order_by().values_list(
        "segment_id", "user_id", "kind")
    for segment_id, user_id, kind in members.iterator(chunk_size=20_000):
        (included if kind == MemberKind.INCLUDED else excluded)[segment_id].append(user_id)
    return {
        row.key: targeting.Segment(row.key, targeting.conditions_from_json(row.conditions),
                                   frozenset(included[pk]), frozenset(excluded[pk]))
        for pk, row in rows.items()
    }


def _to_config(flag: Flag, allow: frozenset[str], deny: frozenset[str],
               segments: Mapping[str, targeting.Segment]) -> evaluation.FlagConfig:
    enabled = flag.enabled
    rules: tuple[targeting.Rule, ...] = ()
    if flag.rules:
        try:
            rules = targeting.rules_from_json(flag.rules, segments)
        except targeting.RuleError as exc:
            # Only a write around the services can store such rules. Serving the flag without them could
            # expose users a rule keeps out: it is served off instead, and said so loudly.
            logger.error("flag %s: its targeting rules cannot be read (%s); it is served off until they are fixed",
                         flag.key, exc)
            enabled = False
    return evaluation.FlagConfig(
        key=flag.key,
        enabled=enabled,
        rollout_basis_points=evaluation.percentage_to_basis_points(flag.rollout_percentage),
        bucketing=flag.bucketing,
        salt=flag.salt or flag.key,
        version=flag.version,
        allow=allow,
        deny=deny,
        client_side=flag.client_side,
        rules=rules,
    )


def audit_for_flag(flag: Flag, *, limit: int = 20) -> list[AuditEntry]:
    """The flag's history, newest first: its own entries and those of the segments its rules name (a segment's
    change changes who gets the flag)."""
    segments = _segment_keys([flag])
    mine = Q(flag=flag) | Q(segment_key__in=segments) if segments else Q(flag=flag)
    return list(AuditEntry.objects.filter(mine).order_by("-created_at", "-id")[:limit])


def last_change(flag: Flag) -> AuditEntry | None:
    return AuditEntry.objects.filter(flag=flag).order_by("-created_at", "-id").first()


def override_counts(flag: Flag) -> dict[str, int]:
    """How many users each list of the flag holds: {"allow": n, "deny": n}, in one query."""
    return override_counts_by_flag([flag])[flag.pk]


def override_counts_by_flag(flags: Iterable[Flag]) -> dict[int, dict[str, int]]:
    """override_counts for many flags, keyed by flag pk, in one grouped query however many flags."""
    counts = {flag.pk: dict.fromkeys(OverrideKind.values, 0) for flag in flags}
    rows = UserOverride.objects.filter(flag__in=list(counts)).values_list("flag_id", "kind").annotate(n=Count("id"))
    for flag_id, kind, n in rows.order_by():
        counts[flag_id][kind] = n
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


@dataclass(frozen=True, slots=True)
class FlagListItem:
    flag: Flag
    last_change: AuditEntry | None  # its latest audit entry


def flags_for_list(search: str = "") -> list[FlagListItem]:
    """The flags list: every flag whose key, name or description contains `search` (any case; empty: all),
    each with its latest audit entry. Two queries, however many flags."""
    latest = AuditEntry.objects.filter(flag=OuterRef("pk")).order_by("-created_at", "-id")
    flags = Flag.objects.annotate(last_change_id=Subquery(latest.values("id")[:1]))
    if search:
        if "\x00" in search:  # no flag holds a NUL (the services refuse it), and PostgreSQL cannot compare one
            return []
        flags = flags.filter(Q(key__icontains=search) | Q(name__icontains=search) | Q(description__icontains=search))
    found = [(flag, flag.last_change_id) for flag in flags]
    entries = AuditEntry.objects.in_bulk([entry_id for _, entry_id in found if entry_id is not None])
    return [FlagListItem(flag, entries.get(entry_id) if entry_id is not None else None) for flag, entry_id in found]


def flag_keys() -> list[str]:
    return list(Flag.objects.order_by("key").values_list("key", flat=True))


AUDIT_PAGE_SIZE = 50

# A position in the audit log: an entry's (created_at, id), the log's order from newest to oldest.
AuditCursor = tuple[datetime, int]


@dataclass(frozen=True, slots=True)
class AuditPage:
    entries: list[AuditEntry]  # newest first
    older: AuditCursor | None  # where the next older page starts after; None: this page holds the oldest entry
    newer: AuditCursor | None  # where the next newer page starts before; None: this is the newest page


def _cursor(entry: AuditEntry) -> AuditCursor:
    return (entry.created_at, entry.pk)


def audit_search(
    *,
    flag: Flag | None = None,
    actor: str = "",
    source: str = "",
    action: str = "",
    before: AuditCursor | None = None,
    after: AuditCursor | None = None,
    limit: int = AUDIT_PAGE_SIZE,
) -> AuditPage:
    """One page of the audit log, newest first, narrowed by flag, actor (any case, part of the name), source
    and action (exact); empty means any. `before` gives the page of entries older than a position, `after`
    the page of entries newer than one (or the newest page, when fewer than `limit` are newer).

    Keyset pagination on (created_at, id): one query per page, however deep, with no COUNT, and a page does
    not shift when entries are added meanwhile. Filtered by flag it walks audit_flag_recent_idx
    (flag, -created_at), else the created_at index, and stops after limit + 1 rows."""
    if before is not None and after is not None:
        raise ValueError("give before or after, not both")
    entries = AuditEntry.objects.all()
    if flag is not None:
        entries = entries.filter(flag=flag)
    if actor:
        entries = entries.filter(actor__icontains=actor)
    if source:
        entries = entries.filter(source=source)
    if action:
        entries = entries.filter(action=action)
    if after is not None:
        at, pk = after
        # The redundant created_at >= at is what lets PostgreSQL start the index scan at the position.
        newer = list(entries.filter(Q(created_at__gt=at) | Q(created_at=at, pk__gt=pk), created_at__gte=at)
                     .order_by("created_at", "id")[: limit + 1])
        if len(newer) > limit:
            rows = newer[:limit][::-1]
            return AuditPage(entries=rows, older=_cursor(rows[-1]), newer=_cursor(rows[0]))
        before = None  # fewer than a page is newer: show the newest page
    elif before is not None:
        at, pk = before
        entries = entries.filter(Q(created_at__lt=at) | Q(created_at=at, pk__lt=pk), created_at__lte=at)
    found = list(entries.order_by("-created_at", "-id")[: limit + 1])
    rows = found[:limit]
    return AuditPage(
        entries=rows,
        older=_cursor(rows[-1]) if len(found) > limit else None,
        newer=(_cursor(rows[0]) if rows else before) if before is not None else None,
    )
