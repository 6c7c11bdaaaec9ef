"""What every flag write shares: the errors callers catch, the audited state of a flag, the row lock, the
version check and bump, and the audit entry (see flags.services)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.core.exceptions import ValidationError
from django.utils import timezone

from .. import selectors
from ..actors import Actor
from ..models import AuditEntry, Flag, Source
from ..publish import publish_config_change


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
