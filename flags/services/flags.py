"""Flags: create, change, set the rollout, and the rules those writes follow (validation, the reason a
dashboard change needs, the confirmations a big raise or a reshuffle need). See flags.services."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from .. import evaluation, rules, signals
from ..actors import Actor
from ..models import KEY_VALIDATOR, MODE_VALIDATOR, Bucketing, Flag, Source
from ..publish import publish_config_change
from .base import _audit, _bump, _check_version, _lock, flag_state

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


# --- validation ---------------------------------------------------------------------------------------


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
        if not value or len(value) > rules.SALT_MAX_LENGTH:
            raise ValidationError({name: f"must be 1 to {rules.SALT_MAX_LENGTH} characters"})
    elif name in ("treatment_mode", "baseline_mode"):
        if len(value) > rules.MODE_MAX_LENGTH:
            raise ValidationError({name: f"must be at most {rules.MODE_MAX_LENGTH} characters"})
        MODE_VALIDATOR(value)
    return value


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
    if not isinstance(key, str) or not key or len(key) > rules.KEY_MAX_LENGTH:
        errors["key"] = [f"must be 1 to {rules.KEY_MAX_LENGTH} characters"]
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
    signals.flag_created.send(sender=Flag, flag=flag)
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


def reshuffles(flag: Flag, changes: dict[str, Any]) -> list[str]:
    """The settings among `changes` whose new value would reshuffle which users are in the rollout (the
    bucketing, the salt). flag_update refuses them without confirm_reshuffle=True; a form asks first."""
    return sorted(name for name in RESHUFFLING_FIELDS if name in changes and changes[name] != getattr(flag, name))


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
    by_plan: bool = False,
    now: datetime | None = None,
    **changes: Any,
) -> Flag:
    """Change some of a flag's settings; no-op changes write nothing.

    `expected_version`: the version the caller's change is based on; if the flag has moved on since,
    VersionConflict is raised and nothing changes. Changing the bucketing or the salt reshuffles every
    user, so it needs `confirm_reshuffle=True`. `only_reduce=True` (alert remediation) refuses any change
    that would expose more users than now, judged on the state read under the row lock. `now`: the
    time to record (alert checks and plans pass theirs, so a simulation replays time exactly).
    `by_plan=True`: the change is a rollout plan's own step (alerts.plans); it is passed on with
    flags.signals.exposure_changed, whose receivers pause a running plan only on a change from elsewhere.
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
    reshuffled = reshuffles(locked, clean)
    if reshuffled and not confirm_reshuffle:
        message = "changing this reshuffles which users are in the rollout; confirm it explicitly"
        raise ValidationError(dict.fromkeys(reshuffled, message))
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
    if set(changed) & {"enabled", "rollout_percentage"}:
        signals.exposure_changed.send(sender=Flag, flag=locked, actor=actor, source=source, reason=reason,
                                      by_plan=by_plan)
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
