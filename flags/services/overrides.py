"""Allow and deny lists: one user at a time, and many at once (pasted text, a CSV file, a list of ids),
each request one audit entry. See flags.services."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction

from ..actors import Actor
from ..models import Flag, OverrideKind, UserOverride, validate_user_id
from .base import _audit, _bump, _check_text, _check_version, _lock

# --- allow and deny lists ----------------------------------------------------------------------------


def _clean_kind(kind: Any) -> str:
    if kind not in OverrideKind.values:
        raise ValidationError({"kind": f"must be one of {', '.join(OverrideKind.values)}"})
    return kind


def _clean_user_id(user_id: Any, field_name: str = "user_id") -> str:
    try:
        validate_user_id(user_id)
    except ValidationError as exc:
        raise ValidationError({field_name: exc.messages}) from None
    return user_id


@transaction.atomic
def override_add(
    *,
    flag: Flag | str,
    user_id: str,
    kind: str,
    actor: Actor,
    source: str,
    note: str = "",
    reason: str = "",
    expected_version: int | None = None,
) -> UserOverride:
    """Put a user on the allow or deny list. Already there: nothing changes. On the other list: refused."""
    kind = _clean_kind(kind)
    user_id = _clean_user_id(user_id)
    _check_text("note", note, 500)
    locked = _lock(flag)
    _check_version(locked, expected_version)
    existing = UserOverride.objects.filter(flag=locked, user_id=user_id).first()
    if existing is not None:
        if existing.kind == kind:
            return existing
        raise ValidationError(
            {"user_id": f"{user_id!r} is on the {existing.kind} list of {locked.key}; remove it there first"}
        )
    override = UserOverride.objects.create(
        flag=locked, user_id=user_id, kind=kind, note=note, added_by=actor.name[:200]
    )
    _bump(locked)
    _audit(
        flag=locked,
        actor=actor,
        source=source,
        action="override_add",
        before={},
        after={"user_id": user_id, "kind": kind, "note": note},
        reason=reason,
    )
    return override


@transaction.atomic
def override_update(
    *,
    override: UserOverride,
    actor: Actor,
    source: str,
    kind: str | None = None,
    note: str | None = None,
    reason: str = "",
) -> UserOverride:
    """An explicit move between lists (or a new note): the only way a user changes lists."""
    locked_flag = _lock(override.flag)
    current = UserOverride.objects.select_for_update().get(pk=override.pk)
    new_kind = _clean_kind(kind) if kind is not None else current.kind
    new_note = note if note is not None else current.note
    _check_text("note", new_note, 500)
    if (new_kind, new_note) == (current.kind, current.note):
        return current
    before = {"user_id": current.user_id, "kind": current.kind, "note": current.note}
    current.kind, current.note = new_kind, new_note
    current.save(update_fields=["kind", "note"])
    _bump(locked_flag)
    _audit(
        flag=locked_flag,
        actor=actor,
        source=source,
        action="override_change",
        before=before,
        after={"user_id": current.user_id, "kind": new_kind, "note": new_note},
        reason=reason,
    )
    return current


@transaction.atomic
def override_remove(
    *,
    flag: Flag | str,
    user_id: str,
    actor: Actor,
    source: str,
    reason: str = "",
    expected_version: int | None = None,
) -> None:
    """Take a user off whichever list of the flag they are on."""
    user_id = _clean_user_id(user_id)
    locked = _lock(flag)
    _check_version(locked, expected_version)
    existing = UserOverride.objects.filter(flag=locked, user_id=user_id).first()
    if existing is None:
        raise ValidationError({"user_id": f"{user_id!r} is on neither list of {locked.key}"})
    existing.delete()
    _bump(locked)
    _audit(
        flag=locked,
        actor=actor,
        source=source,
        action="override_remove",
        before={"user_id": user_id, "kind": existing.kind, "note": existing.note},
        after={},
        reason=reason,
    )


# --- bulk import and removal -------------------------------------------------------------------------

HEADER_NAMES = {"user_id", "userid", "user", "id", "user id"}


@dataclass
class ParsedIds:
    """User ids read from pasted text or an uploaded CSV, one per line (the first CSV column)."""

    ids: list[tuple[int, str]] = field(default_factory=list)  # (line number, user id), first occurrence
    blank_lines: int = 0
    duplicates: int = 0
    invalid: list[tuple[int, str, str]] = field(default_factory=list)  # (line, value, message)


def _rows(text: str) -> Iterator[tuple[int, str]]:
    reader = csv.reader(io.StringIO(text))
    for row in reader:
        yield reader.line_num, (row[0] if row else "")


def parse_user_ids(text: str) -> ParsedIds:
    """Blank lines and repeats are skipped; a `user_id` header on line 1 is ignored; ids are trimmed."""
    parsed = ParsedIds()
    if text.startswith("\ufeff"):
        text = text[1:]
    try:
        rows = list(_rows(text))
    except csv.Error as exc:
        parsed.invalid.append((0, "", f"not readable as CSV: {exc}"))
        return parsed
    if rows and rows[0][1].strip().lower() in HEADER_NAMES:
        rows = rows[1:]
    return _collect(parsed, rows, set())


def _collect(parsed: ParsedIds, numbered: Iterable[tuple[int, str]], seen: set[str]) -> ParsedIds:
    for number, raw in numbered:
        value = raw.strip() if isinstance(raw, str) else raw
        if isinstance(value, str) and not value:
            parsed.blank_lines += 1
            continue
        try:
            validate_user_id(value)
        except ValidationError as exc:
            parsed.invalid.append((number, str(value)[:80], "; ".join(exc.messages)))
            continue
        if value in seen:
            parsed.duplicates += 1
            continue
        seen.add(value)
        parsed.ids.append((number, value))
    return parsed


def parse_user_id_list(user_ids: Iterable[Any]) -> ParsedIds:
    """The same rules for ids that arrive as a list (API, admin actions); numbers are 1-based positions."""
    return _collect(ParsedIds(), enumerate(user_ids, start=1), set())


@dataclass
class BulkReport:
    action: str
    kind: str | None
    requested: int = 0
    changed: int = 0
    unchanged: int = 0  # already on this list (import) or on no list (removal)
    blank_lines: int = 0
    duplicates: int = 0
    conflicts: list[tuple[int, str, str]] = field(default_factory=list)  # (line, user id, other list)
    invalid: list[tuple[int, str, str]] = field(default_factory=list)
    applied: bool = False
    flag: Flag | None = None  # the flag as the request left it (its new version), read under its row lock

    def summary(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "requested": self.requested,
            "changed": self.changed,
            "unchanged": self.unchanged,
            "blank_lines": self.blank_lines,
            "duplicates": self.duplicates,
            "conflicts": len(self.conflicts),
        }


def _parse_input(text: str | None, user_ids: Iterable[Any] | None) -> ParsedIds:
    if (text is None) == (user_ids is None):
        raise ValueError("give exactly one of text and user_ids")
    return parse_user_ids(text) if text is not None else parse_user_id_list(user_ids or ())


def _report_for(action: str, kind: str | None, parsed: ParsedIds) -> BulkReport:
    return BulkReport(
        action=action,
        kind=kind,
        requested=len(parsed.ids),
        blank_lines=parsed.blank_lines,
        duplicates=parsed.duplicates,
        invalid=parsed.invalid,
    )


@transaction.atomic
def overrides_import(
    *,
    flag: Flag | str,
    kind: str,
    actor: Actor,
    source: str,
    text: str | None = None,
    user_ids: Iterable[Any] | None = None,
    note: str = "",
    reason: str = "",
) -> BulkReport:
    """Add many users to one list, with one audit entry for the whole import.

    Any invalid id rejects the whole import (nothing is written) so the file can be fixed. Users
    already on the other list are reported and left where they are, never moved silently.
    """
    kind = _clean_kind(kind)
    _check_text("note", note, 500)
    _check_text("reason", reason, 10_000)
    parsed = _parse_input(text, user_ids)
    report = _report_for("overrides_import", kind, parsed)
    locked = report.flag = _lock(flag)
    if parsed.invalid:
        return report
    existing = dict(UserOverride.objects.filter(flag=locked).values_list("user_id", "kind"))
    to_add: list[str] = []
    for number, user_id in parsed.ids:
        current = existing.get(user_id)
        if current is None:
            to_add.append(user_id)
        elif current == kind:
            report.unchanged += 1
        else:
            report.conflicts.append((number, user_id, current))
    report.applied = True
    if not to_add:
        return report
    stamp = actor.name[:200]
    UserOverride.objects.bulk_create(
        (UserOverride(flag=locked, user_id=u, kind=kind, note=note, added_by=stamp) for u in to_add),
        batch_size=2000,
    )
    report.changed = len(to_add)
    count_before = sum(1 for value in existing.values() if value == kind)
    _bump(locked)
    _audit(
        flag=locked,
        actor=actor,
        source=source,
        action="overrides_import",
        before={f"{kind}_count": count_before},
        after={f"{kind}_count": count_before + len(to_add), "added": to_add} | report.summary(),
        reason=reason,
    )
    return report


@transaction.atomic
def overrides_bulk_remove(
    *,
    flag: Flag | str,
    actor: Actor,
    source: str,
    text: str | None = None,
    user_ids: Iterable[Any] | None = None,
    kind: str | None = None,
    reason: str = "",
) -> BulkReport:
    """Take many users off a list (or off either list when kind is None), one audit entry in all.

    As with the import, an invalid id rejects the whole request. A user on the other list than the
    one named is reported as a conflict and stays.
    """
    if kind is not None:
        kind = _clean_kind(kind)
    parsed = _parse_input(text, user_ids)
    report = _report_for("overrides_bulk_remove", kind, parsed)
    locked = report.flag = _lock(flag)
    if parsed.invalid:
        return report
    existing = dict(UserOverride.objects.filter(flag=locked).values_list("user_id", "kind"))
    to_remove: dict[str, str] = {}
    for number, user_id in parsed.ids:
        current = existing.get(user_id)
        if current is None:
            report.unchanged += 1
        elif kind is not None and current != kind:
            report.conflicts.append((number, user_id, current))
        else:
            to_remove[user_id] = current
    report.applied = True
    if not to_remove:
        return report
    ids = list(to_remove)
    for start in range(0, len(ids), 2000):
        UserOverride.objects.filter(flag=locked, user_id__in=ids[start : start + 2000]).delete()
    report.changed = len(ids)
    _bump(locked)
    _audit(
        flag=locked,
        actor=actor,
        source=source,
        action="overrides_bulk_remove",
        before={"removed": [{"user_id": u, "kind": k} for u, k in to_remove.items()]},
        after=report.summary(),
        reason=reason,
    )
    return report
