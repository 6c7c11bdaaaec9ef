"""The hooks other apps use to react to flag writes: documented Django signals, sent by flags.services.

Both are sent inside the service's transaction, after its audit entry is written, so a receiver's writes
commit or roll back with the change, and an exception in a receiver undoes it. Receivers are connected in
their app's AppConfig.ready() (the alerts app: alerts/receivers.py).
"""

from __future__ import annotations

from django.dispatch import Signal

# A flag was created (flags.services.flag_create). Arguments: sender=Flag, flag (the new Flag).
# The alerts app gives it the default guardrail rules.
flag_created = Signal()

# A flag's exposure changed: its kill switch (`enabled`) or its rollout percentage (flags.services.flag_update).
# Arguments: sender=Flag, flag (the Flag as written), actor (flags.actors.Actor), source (a Source value),
# reason (str), and by_plan (bool): True when the change is a rollout plan's own step (flag_update was
# called with by_plan=True), False for a change by anyone else. The alerts app pauses a running rollout
# plan on a change with by_plan=False, so that a plan never raises back what a person or an alert lowered.
exposure_changed = Signal()
