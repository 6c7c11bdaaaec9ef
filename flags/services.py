"""Every write to a flag or its lists goes through here.

Each service validates its input, locks the flag row, checks the version the caller based its change
on, bumps the flag's version and writes exactly one audit entry, all in one transaction. Callers (the
admin, the CLI, the API, the dashboard, alert remediation, rollout plans) only say who they are.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from . import evaluation, rules, selectors
from .actors import Actor
from .models import (
    KEY_VALIDATOR,
    MODE_VALIDATOR,
    AuditEntry,
    Bucketing,
    Flag,
    OverrideKind,
    Source,
    UserOverride,
    validate_user_id,
)
from .publish import publish_config_change

# The fields a change can touch, in the order the audit shows them. The key never changes.
EDITABLE_FIELDS = (
    "name",
    "description",
    "enabled",
    "rollout_percentage",
    "bucketing",
    "salt",
    "treatment_mode",
    "baseline_mode",
    "client_side",
)
RESHUFFLING_FIELDS = ("bucketing", "salt")

# Other apps' reactions to flag writes, run inside the same transaction. Registered explicitly in their
# AppConfig.ready (not signals): the alerts app gives every new flag the seed's four rules, and pauses
# a running rollout plan when anyone but the plan itself changes the flag's exposure.
created_listeners: list[Callable[[Flag], None]] = []
exposure_listeners: list[Callable[..., None]] = []


class FlagNotFound(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(f"unknown flag {key!r}")
        self.key = key


class VersionConflict(Exception):
    """The flag changed since the version the caller saw: nothing was written."""

    def __init__(self, flag: Flag, expected_version: int, last_change: AuditEntry | None) -> None:
        self.flag = flag
        self.expected_version = expected_version
        self.current_version = flag.version
        self.last_change = last_change
        who = (
            f" by {last_change.actor} ({last_change.get_source_display()}) at "
            f"{last_change.created_at:%Y-%m-%d %H:%M:%S %Z}"
            if last_change
            else ""
        )
        super().__init__(
            f"flag {flag.key!r} was changed{who} since version {expected_version}: it is now version "
            f"{flag.version} (enabled={'yes' if flag.enabled else 'no'}, rollout "
            f"{flag.rollout_percentage}%). Nothing was changed; review and try again."
        )

    def current_state(self) -> dict[str, Any]:
        return flag_state(self.flag)


# --- validation helpers -------------------------------------------------------------------------


def parse_percentage(value: Any, *, field_name: str = "rollout_percentage") -> Decimal:
    """A percentage from any caller: a number or numeric string, 0..100, at most two decimals."""
    if isinstance(value, bool) or value is None:
        raise ValidationError({field_name: "must be a number between 0 and 100"})
    try:
        number = Decimal(str(value).strip()) if isinstance(value, (str, int, float, Decimal)) else None
    except InvalidOperation:
        number = None
    if number is None or not number.is_finite():
        raise ValidationError({field_name: f"must be a number between 0 and 100, not {str(value)[:40]!r}"})
    if not Decimal(0) <= number <= Decimal(100):
        raise ValidationError({field_name: f"must be between 0 and 100, not {number}"})
    try:
        points = evaluation.percentage_to_basis_points(number)
    except ValueError:
        raise ValidationError({field_name: "has at most two decimal places (0.01% steps)"}) from None
    return Decimal(points).scaleb(-2).quantize(Decimal("0.01"))


def _validate_fields(values: dict[str, Any]) -> dict[str, Any]:
    errors: dict[str, list[str]] = {}
    clean: dict[str, Any] = {}
    for name, value in values.items():
        try:
            clean[name] = _clean_field(name, value)
        except ValidationError as exc:
            for field_name, messages in exc.message_dict.items():
                errors.setdefault(field_name if field_name != "__all__" else name, []).extend(messages)
    if errors:
        raise ValidationError(errors)
    return clean


def _clean_field(name: str, value: Any) -> Any:
    if name == "rollout_percentage":
        return parse_percentage(value)
    if name in ("enabled", "client_side"):
        if not isinstance(value, bool):
            raise ValidationError({name: "must be true or false"})
        return value
    if not isinstance(value, str):
        raise ValidationError({name: "must be a string"})
    if "\x00" in value:
        raise ValidationError({name: "must not contain NUL characters"})
    if name == "name":
        value = value.strip()
        if not value or len(value) > 200:
            raise ValidationError({name: "must be 1 to 200 characters"})
    elif name == "description":
        if len(value) > 10_000:
            raise ValidationError({name: "must be at most 10,000 characters"})
    elif name == "bucketing":
        if value not in Bucketing.values:
            raise ValidationError({name: f"must be one of {', '.join(Bucketing.values)}"})
    elif name == "salt":
        value = value.strip()
        if not value or len(value) > 100:
            raise ValidationError({name: "must be 1 to 100 characters"})
    elif name in ("treatment_mode", "baseline_mode"):
        if len(value) > rules.MODE_MAX_LENGTH:
            raise ValidationError({name: f"must be at most {rules.MODE_MAX_LENGTH} characters"})
        MODE_VALIDATOR(value)
    return value


def flag_state(flag: Flag) -> dict[str, Any]:
    """The audited, JSON-safe view of a flag's settings."""
    return {
        "key": flag.key,
        "name": flag.name,
        "description": flag.description,
        "enabled": flag.enabled,
        "rollout_percentage": str(Decimal(flag.rollout_percentage).quantize(Decimal("0.01"))),
        "bucketing": flag.bucketing,
        "salt": flag.salt,
        "treatment_mode": flag.treatment_mode,
        "baseline_mode": flag.baseline_mode,
        "client_side": flag.client_side,
        "version": flag.version,
    }


def _audit(
    *, flag: Flag, actor: Actor, source: str, action: str, before: dict, after: dict, reason: str,
    at: datetime | None = None,
) -> AuditEntry:
    if source not in Source.values:
        raise ValueError(f"unknown audit source {source!r}")
    # Every service is atomic, so refusing here still undoes the change the entry would describe.
    _check_text("reason", reason or "", 10_000)
    return AuditEntry.objects.create(
        actor_kind=actor.kind,
        actor=actor.name[:200],
        source=source,
        flag=flag,
        flag_key=flag.key,
        action=action,
        before=before,
        after=after,
        reason=(reason or "").strip(),
        flag_version=flag.version,
        created_at=at or timezone.now(),
    )


def _check_text(name: str, value: Any, max_length: int) -> None:
    """Free text (reasons, notes): a string, not too long, and no NUL, which PostgreSQL cannot store."""
    if not isinstance(value, str):
        raise ValidationError({name: "must be a string"})
    if len(value) > max_length:
        raise ValidationError({name: f"must be at most {max_length:,} characters"})
    if "\x00" in value:
        raise ValidationError({name: "must not contain NUL characters"})


def _lock(flag: Flag | str) -> Flag:
    key = flag.key if isinstance(flag, Flag) else flag
    if not selectors.possible_key(key):
        raise FlagNotFound(str(key)[:100])
    try:
        return Flag.objects.select_for_update().get(key=key)
    except Flag.DoesNotExist:
        raise FlagNotFound(key) from None


def _check_version(flag: Flag, expected_version: int | None) -> None:
    if expected_version is None:
        return
    if isinstance(expected_version, bool) or not isinstance(expected_version, int):
        raise ValidationError({"expected_version": "must be an integer"})
    if flag.version != expected_version:
        raise VersionConflict(flag, expected_version, selectors.last_change(flag))


def _bump(flag: Flag, fields: Iterable[str] = (), now: datetime | None = None) -> None:
    flag.version += 1
    flag.updated_at = now or timezone.now()
    flag.save(update_fields=[*fields, "version", "updated_at"])
    publish_config_change()


# --- flags ----------------------------------------------------------------------------------------


@transaction.atomic
def flag_create(
    *,
    key: str,
    actor: Actor,
    source: str,
    reason: str = "",
    name: str = "",
    description: str = "",
    enabled: bool = False,
    rollout_percentage: Any = 0,
    bucketing: str = evaluation.MURMUR3,
    salt: str = "",
    treatment_mode: str = "patch",
    baseline_mode: str = "single",
    client_side: bool = False,
    now: datetime | None = None,
) -> Flag:
    """Create a flag (off by default) and audit its initial settings (at `now`, by default the clock's)."""
    errors: dict[str, list[str]] = {}
    if not isinstance(key, str) or not key or len(key) > 100:
        errors["key"] = ["must be 1 to 100 characters"]
    else:
        try:
            KEY_VALIDATOR(key)
        except ValidationError as exc:
            errors["key"] = exc.messages
    values = {
        "name": name or (key if isinstance(key, str) else ""),
        "description": description,
        "enabled": enabled,
        "rollout_percentage": rollout_percentage,
        "bucketing": bucketing,
        "salt": salt or (key if isinstance(key, str) else ""),
        "treatment_mode": treatment_mode,
        "baseline_mode": baseline_mode,
        "client_side": client_side,
    }
    try:
        clean = _validate_fields(values)
    except ValidationError as exc:
        for field_name, messages in exc.message_dict.items():
            errors.setdefault(field_name, []).extend(messages)
        clean = {}
    if clean and clean["treatment_mode"] == clean["baseline_mode"]:
        errors.setdefault("baseline_mode", []).append("must differ from the treatment mode")
    if "key" not in errors and Flag.objects.filter(key=key).exists():
        errors["key"] = [f"a flag with key {key!r} already exists"]
    if errors:
        raise ValidationError(errors)
    try:
        with transaction.atomic():
            flag = Flag.objects.create(key=key, **clean)
    except IntegrityError:
        raise ValidationError({"key": [f"a flag with key {key!r} already exists"]}) from None
    _audit(flag=flag, actor=actor, source=source, action="create", before={}, after=flag_state(flag),
           reason=reason, at=now)
    publish_config_change()
    for listener in created_listeners:
        listener(flag)
    return flag


def _refuse_more_exposure(changed: dict[str, tuple[Any, Any]]) -> None:
    if "rollout_percentage" in changed and changed["rollout_percentage"][1] > changed["rollout_percentage"][0]:
        raise ValidationError({"rollout_percentage": "this change may only reduce the rollout"})
    if "enabled" in changed and changed["enabled"][1]:
        raise ValidationError({"enabled": "this change may only turn the flag off"})
    if set(changed) & set(RESHUFFLING_FIELDS):
        raise ValidationError({"salt": "this change may not reshuffle users"})


def require_reason(*, source: str, reason: str, turning_off: bool = False) -> None:
    """A change made from the dashboard needs a reason, kept in the audit log (DASHBOARD_REASON_REQUIRED,
    on by default). Turning a flag off with the kill switch never does: in an incident nothing may slow it
    down, and its audit entry still records who did it and the state it overrode."""
    if source == Source.UI and settings.DASHBOARD_REASON_REQUIRED and not turning_off and not reason.strip():
        raise ValidationError({"reason": "Give a reason: it is kept in the audit log with the change."})


# A raise by more than this many points of rollout asks for confirmation first (the dashboard's slider gets it
# from here, as data-big-step).
ROLLOUT_BIG_STEP = Decimal(25)


def rollout_needs_confirmation(*, current: Decimal, target: Decimal, firing: str = "") -> str | None:
    """Why moving the rollout from `current` to `target` percent must be confirmed first, or None.

    Raising by more than ROLLOUT_BIG_STEP points, raising to 100%, or any raise while a critical guardrail
    fires (`firing`: the caller's alerts.health.firing_reason, or "" when none fires) needs confirmation.
    Lowering, or keeping the value, never does."""
    if target <= current or not (target - current > ROLLOUT_BIG_STEP or target == 100 or firing):
        return None
    why = f" ({firing})" if firing else ""
    return f"Raising the rollout from {current}% to {target}% needs confirmation{why}."


def _describe_action(changed: dict[str, tuple[Any, Any]]) -> str:
    if set(changed) == {"enabled"}:
        return "enable" if changed["enabled"][1] else "disable"
    if set(changed) == {"rollout_percentage"}:
        return "set_rollout"
    return "update"


@transaction.atomic
def flag_update(
    *,
    flag: Flag | str,
    actor: Actor,
    source: str,
    reason: str = "",
    expected_version: int | None = None,
    confirm_reshuffle: bool = False,
    only_reduce: bool = False,
    _from_plan: bool = False,
    now: datetime | None = None,
    **changes: Any,
) -> Flag:
    """Change some of a flag's settings; no-op changes write nothing.

    `expected_version`: the version the caller's change is based on; if the flag has moved on since,
    VersionConflict is raised and nothing changes. Changing the bucketing or the salt reshuffles every
    user, so it needs `confirm_reshuffle=True`. `only_reduce=True` (alert remediation) refuses any change
    that would expose more users than now, judged on the state read under the row lock. `now`: the
    time to record (alert checks and plans pass theirs, so a simulation replays time exactly).
    """
    unknown = set(changes) - set(EDITABLE_FIELDS)
    if unknown:
        raise ValidationError({name: "cannot be changed" for name in sorted(unknown)})
    clean = _validate_fields(changes)
    locked = _lock(flag)
    _check_version(locked, expected_version)
    before = flag_state(locked)
    changed: dict[str, tuple[Any, Any]] = {}
    for name, value in clean.items():
        current = getattr(locked, name)
        if current != value:
            changed[name] = (current, value)
    if not changed:
        return locked
    require_reason(source=source, reason=reason, turning_off=changed == {"enabled": (True, False)})
    if set(changed) & set(RESHUFFLING_FIELDS) and not confirm_reshuffle:
        raise ValidationError(
            {
                name: "changing this reshuffles which users are in the rollout; confirm it explicitly"
                for name in sorted(set(changed) & set(RESHUFFLING_FIELDS))
            }
        )
    new_treatment = clean.get("treatment_mode", locked.treatment_mode)
    if new_treatment == clean.get("baseline_mode", locked.baseline_mode):
        raise ValidationError({"baseline_mode": "must differ from the treatment mode"})
    if only_reduce:
        _refuse_more_exposure(changed)
    for name, (_old, new) in changed.items():
        setattr(locked, name, new)
    _bump(locked, changed, now)
    after = flag_state(locked)
    _audit(
        flag=locked,
        actor=actor,
        source=source,
        action=_describe_action(changed),
        before={name: before[name] for name in changed} | {"version": before["version"]},
        after={name: after[name] for name in changed} | {"version": after["version"]},
        reason=reason,
        at=now,
    )
    if not _from_plan and set(changed) & {"enabled", "rollout_percentage"}:
        for listener in exposure_listeners:
            listener(flag=locked, actor=actor, source=source, reason=reason)
    return locked


def flag_set_rollout(
    *,
    flag: Flag | str,
    percentage: Any,
    actor: Actor,
    source: str,
    reason: str = "",
    expected_version: int | None = None,
    enabled: bool | None = None,
) -> Flag:
    """The slider and `set_rollout`: a new percentage, optionally flipping the kill switch too."""
    changes: dict[str, Any] = {"rollout_percentage": percentage}
    if enabled is not None:
        changes["enabled"] = enabled
    return flag_update(
        flag=flag, actor=actor, source=source, reason=reason, expected_version=expected_version, **changes
    )


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


# --- first start --------------------------------------------------------------------------------------

DEFAULT_FLAG_KEY = "patch_mode_enabled"


def ensure_default_flag() -> Flag | None:
    """Create the Patch Mode flag, disabled at 0%, the first time the app starts. None if it exists."""
    if Flag.objects.filter(key=DEFAULT_FLAG_KEY).exists():
        return None
    try:
        return flag_create(
            key=DEFAULT_FLAG_KEY,
            name="Patch Mode",
            description="apply_patches: many file edits in one call instead of many single tool calls.",
            actor=Actor.system("bootstrap"),
            source=Source.SYSTEM,
            reason="created on first start",
        )
    except ValidationError:
        return None  # another process created it at the same moment
