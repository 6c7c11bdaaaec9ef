"""The alerts app's reactions to flag writes (flags.signals), connected when the app is ready."""

from __future__ import annotations

from typing import Any

from django.dispatch import receiver

from flags.models import Flag
from flags.signals import exposure_changed, flag_created

from . import plans, services


@receiver(flag_created, sender=Flag, dispatch_uid="alerts.default_rules")
def give_default_rules(sender: type[Flag], *, flag: Flag, **kwargs: Any) -> None:
    """Every new flag gets the default guardrail rules."""
    services.ensure_default_rules(flag)


@receiver(exposure_changed, sender=Flag, dispatch_uid="alerts.pause_plan_on_manual_change")
def pause_plan_on_manual_change(sender: type[Flag], *, flag: Flag, actor: Any, source: str, reason: str,
                                by_plan: bool, **kwargs: Any) -> None:
    """A change of the flag's exposure from anywhere but its rollout plan pauses the running plan."""
    plans.on_exposure_change(flag=flag, actor=actor, source=source, reason=reason, by_plan=by_plan)
