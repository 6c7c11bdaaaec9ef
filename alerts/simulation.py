"""Seeded simulations of a rollout on simulated time, through the services production runs.

Each simulated minute ingests that minute's calls with `monitoring.services.ingest`, then runs the alert
check and the plan tick for the end of the minute (`alerts.services.check_all` and `alerts.plans.tick_all`
with that `now`), as a 60 s beat would. The same seed gives the same calls, so the same figures:
`python -m bench guardrails` prints them, and the tests run short versions.
"""

from __future__ import annotations

import math
import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from flags import services as flag_services
from flags.actors import Actor
from flags.models import Flag, Source
from monitoring import services as monitoring

from . import plans, services
from .models import Alert

# Simulated time starts here (a fixed moment, so reruns write the same rows).
EPOCH = datetime(2026, 1, 5, tzinfo=UTC)
SIM_ACTOR = Actor.system("simulation")


def constant(value: float) -> Callable[[int], float]:
    return lambda minute: value


def step(before: float, after: float, at_minute: int) -> Callable[[int], float]:
    """A value that jumps from `before` to `after` at minute `at_minute` (0-based) and stays."""
    return lambda minute: before if minute < at_minute else after


@dataclass
class Scenario:
    name: str
    minutes: int
    patch_per_minute: int
    single_per_minute: int
    patch_errors: Callable[[int], float] = field(default=constant(0.02))
    single_errors: float = 0.02
    # median; lognormal with sigma 0.5
    patch_latency_ms: Callable[[int], float] = field(default=constant(180.0))
    single_latency_ms: float = 180.0
    patch_tokens: float = 840.0  # 30% fewer than Single Mode
    single_tokens: float = 1200.0
    rollout: Decimal = Decimal(20)
    with_plan: bool = False
    stop_when_reduced: bool = False


@dataclass
class Outcome:
    episodes: list[tuple[str, int]] = field(default_factory=list)  # (rule name, minute it opened)
    first_reduction: int | None = None  # the minute (check) whose check reduced exposure first
    exposure_changes: int = 0  # changes not made by the simulation itself (alerts, plan steps back)
    plan_state: str = ""
    minutes: int = 0


def _calls(rng: random.Random, count: int, mode: str, minute_start: datetime, error: float, median: float,
           tokens: float, key: str, minute: int) -> list[dict[str, object]]:
    records = []
    for i in range(count):
        records.append({
            "id": f"{key}-{mode}-{minute}-{i}", "user_id": f"{mode}-user-{rng.randrange(10_000)}", "mode": mode,
            "flag": key, "latency_ms": round(median * math.exp(rng.gauss(0, 0.5)), 2),
            "tokens_used": max(0, round(rng.gauss(tokens, tokens * 0.25))), "success": rng.random() >= error,
            "occurred_at": (minute_start + timedelta(seconds=60 * (i + 0.5) / count)).isoformat(),
        })
    return records


def run(scenario: Scenario, seed: int, *, key: str | None = None, start: datetime = EPOCH) -> Outcome:
    """Simulate one seeded run on a fresh flag (its own key, its records flagged with it) from `start`."""
    rng = random.Random(seed)  # noqa: S311 - a seeded simulation, not a secret
    key = key or f"sim-{zlib.crc32(scenario.name.encode()):08x}-{seed}"
    flag_services.flag_create(key=key, actor=SIM_ACTOR, source=Source.SYSTEM, now=start)
    if scenario.with_plan:
        plan = plans.plan_create(flag=Flag.objects.get(key=key), created_by=SIM_ACTOR.name)
        plans.plan_start(plan=plan, actor=SIM_ACTOR, source=Source.SYSTEM, now=start)
    else:
        flag_services.flag_update(flag=key, enabled=True, rollout_percentage=scenario.rollout, actor=SIM_ACTOR,
                                  source=Source.SYSTEM, now=start)
    outcome = Outcome()
    exposure = _exposure(key)
    for minute in range(scenario.minutes):
        minute_start = start + timedelta(minutes=minute)
        records = _calls(rng, scenario.patch_per_minute, "patch", minute_start, scenario.patch_errors(minute),
                         scenario.patch_latency_ms(minute), scenario.patch_tokens, key, minute)
        records += _calls(rng, scenario.single_per_minute, "single", minute_start, scenario.single_errors,
                          scenario.single_latency_ms, scenario.single_tokens, key, minute)
        now = minute_start + timedelta(minutes=1)
        for offset in range(0, len(records), monitoring.MAX_RECORDS):
            monitoring.ingest(records[offset:offset + monitoring.MAX_RECORDS], now=now)
        services.check_all(now=now, flag_key=key)
        plans.tick_all(now=now, flag_key=key)
        outcome.minutes = minute + 1
        after = _exposure(key)
        if after != exposure:
            if after < exposure and outcome.first_reduction is None:
                outcome.first_reduction = minute
            if after < exposure:
                outcome.exposure_changes += 1
            exposure = after
            if scenario.stop_when_reduced and outcome.first_reduction is not None:
                break
    for alert in Alert.objects.filter(flag__key=key).select_related("rule").order_by("opened_at"):
        outcome.episodes.append((alert.rule.name, int((alert.opened_at - start).total_seconds() // 60) - 1))
    final = plans.RolloutPlan.objects.filter(flag__key=key).first()
    outcome.plan_state = final.state if final else ""
    return outcome


def _exposure(key: str) -> Decimal:
    flag = Flag.objects.get(key=key)
    return flag.rollout_percentage if flag.enabled else Decimal(-1)


# The scenarios of issue 8 (bench/bench_guardrails.py prints their figures).
HEALTHY_LOW = Scenario("healthy, 4 + 16 calls/min, 2% errors both, 12 h", 720, 4, 16)
HEALTHY_HIGH = Scenario("healthy, 100 + 400 calls/min, 4 h", 240, 100, 400)
ERROR_STEP = Scenario("Patch errors 1% -> 10% after 60 min, 100 + 400/min, 20%", 90, 100, 400,
                      patch_errors=step(0.01, 0.10, 60), single_errors=0.01, stop_when_reduced=True)
LATENCY_STEP = Scenario("Patch latency median 180 -> 400 ms after 60 min, 100 + 400/min", 70, 100, 400,
                        patch_latency_ms=step(180.0, 400.0, 60))
ERROR_STEP_LOW = Scenario("the same error step at 4 + 16 calls/min", 180, 4, 16,
                          patch_errors=step(0.01, 0.10, 60), single_errors=0.01, stop_when_reduced=True)
PLAN_LOW = Scenario("default plan under healthy 4 + 16/min, 12 h", 720, 4, 16, with_plan=True)
# A whole default stage (one week): false alarms must not accrue with the stage's length.
PLAN_WEEK = Scenario("default plan under healthy 4 + 16/min, its first 7-day stage", 7 * 24 * 60, 4, 16,
                     with_plan=True)
