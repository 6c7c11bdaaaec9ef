"""Short seeded runs of the simulations (alerts.simulation): the production ingest, check and plan tick on
simulated time. The scenarios are shortened with dataclasses.replace so the file runs in well under a minute."""

from __future__ import annotations

from dataclasses import replace

import pytest

from alerts import simulation
from alerts.models import Alert, AlertRule
from flags.models import AuditEntry, Flag, Source

pytestmark = pytest.mark.django_db

STEP_AT = 20
# The error step of issue 8 after a 20-minute healthy lead-in instead of 60.
ERROR_STEP = replace(simulation.ERROR_STEP, minutes=STEP_AT + 10,
                     patch_errors=simulation.step(0.01, 0.10, STEP_AT))
LATENCY_STEP = replace(simulation.LATENCY_STEP, minutes=STEP_AT + 6,
                       patch_latency_ms=simulation.step(180.0, 400.0, STEP_AT))
HEALTHY_LOW = replace(simulation.HEALTHY_LOW, minutes=120)
LATENCY_RULE = "Latency above 1.5x baseline"


@pytest.mark.parametrize(("scenario", "step_at"), [(ERROR_STEP, STEP_AT), (simulation.ERROR_STEP, 60)],
                         ids=["20-minute lead-in", "issue 8 as written"])
def test_an_error_step_is_rolled_back_within_two_checks(scenario, step_at):
    outcome = simulation.run(scenario, 1, key="sim-error-step")
    assert outcome.first_reduction is not None, outcome
    assert step_at <= outcome.first_reduction <= step_at + 1, outcome
    # It stopped at the reduction, which went to 0% through the alert's rollback.
    assert outcome.minutes == outcome.first_reduction + 1
    flag = Flag.objects.get(key="sim-error-step")
    assert flag.rollout_percentage == 0
    assert AuditEntry.objects.filter(flag=flag, source=Source.ALERT).count() == 1
    # The reduction was made by a critical rule's episode opened at that very check.
    critical = set(AlertRule.objects.filter(flag=flag, severity="critical").values_list("name", flat=True))
    assert (set(critical) & {name for name, minute in outcome.episodes if minute == outcome.first_reduction})
    assert all(minute >= step_at for _name, minute in outcome.episodes), outcome.episodes


@pytest.mark.parametrize("seed", [1, 2])
def test_healthy_low_traffic_opens_no_episode_and_keeps_the_exposure(seed):
    key = f"sim-healthy-{seed}"
    outcome = simulation.run(HEALTHY_LOW, seed, key=key)
    assert outcome.minutes == 120
    assert outcome.episodes == [] and outcome.first_reduction is None and outcome.exposure_changes == 0
    flag = Flag.objects.get(key=key)
    assert (flag.enabled, flag.rollout_percentage) == (True, HEALTHY_LOW.rollout)
    assert not Alert.objects.filter(flag=flag).exists()


def test_a_latency_step_opens_the_latency_episode_within_three_minutes():
    outcome = simulation.run(LATENCY_STEP, 3, key="sim-latency-step")
    opened = [minute for name, minute in outcome.episodes if name == LATENCY_RULE]
    assert len(opened) == 1, outcome.episodes
    assert STEP_AT <= opened[0] <= STEP_AT + 2, outcome.episodes
    # The latency rule only notifies: nobody's exposure changed, and no error rule fired.
    assert outcome.first_reduction is None and outcome.exposure_changes == 0
    assert [name for name, _minute in outcome.episodes] == [LATENCY_RULE]
    rule = AlertRule.objects.get(flag__key="sim-latency-step", name=LATENCY_RULE)
    assert Alert.objects.get(rule=rule).state == "firing"


def test_the_same_seed_gives_the_same_outcome():
    first = simulation.run(ERROR_STEP, 7, key="sim-repeat-a")
    second = simulation.run(ERROR_STEP, 7, key="sim-repeat-b")
    assert first == second
    assert first.first_reduction is not None
    changes = [[(entry.created_at, entry.action, entry.after.get("rollout_percentage"), entry.after.get("enabled"))
                for entry in AuditEntry.objects.filter(flag__key=key).order_by("created_at", "id")]
               for key in ("sim-repeat-a", "sim-repeat-b")]
    assert changes[0] == changes[1] and len(changes[0]) >= 3
