"""Guarded rollouts on simulated time: false alarms and detection delays of the default rules.

Seeded runs of alerts.simulation (ingest a minute, then the check and the plan tick for the end of that
minute, through the production services). BENCH_SEEDS (default 20) sets the seeds of the low-traffic
healthy scenario; the step scenarios run BENCH_STEP_SEEDS (default 10) seeds each, the week-long plan stage
BENCH_WEEK_SEEDS (default 2). The step goals are met when the median delay is within them (a
low-traffic step cannot be caught within 30 checks on every seed without crying wolf: see the README).
"""

from __future__ import annotations

import os
import statistics
import time

from bench.common import Row


def _seeds(name: str, default: int) -> int:
    return max(1, int(os.environ.get(name, default)))


def _describe(delays: list[int | None], within: int) -> tuple[str, list[int]]:
    found = sorted(d for d in delays if d is not None)
    missing = len(delays) - len(found)
    if not found:
        return f"never, in {len(delays)} seeds", found
    inside = sum(d <= within for d in found)
    text = (f"median {statistics.median(found):g}, max {found[-1]} checks; {inside} of {len(delays)} seeds "
            f"within {within}")
    return text + (f" ({missing} never)" if missing else ""), found


def run() -> list[Row]:
    from alerts import simulation as sim

    rows: list[Row] = []
    seeds, step_seeds = _seeds("BENCH_SEEDS", 20), _seeds("BENCH_STEP_SEEDS", 10)
    started = time.perf_counter()

    low = [sim.run(sim.HEALTHY_LOW, seed) for seed in range(seeds)]
    episodes = sum(len(o.episodes) for o in low)
    changes = sum(o.exposure_changes for o in low)
    rows.append(Row(f"{sim.HEALTHY_LOW.name}, {seeds} seeds", f"{episodes} episodes, {changes} exposure changes",
                    "<= 1 episode in total, no exposure change", episodes <= 1 and changes == 0))

    high = [sim.run(sim.HEALTHY_HIGH, seed) for seed in range(5)]
    episodes = sum(len(o.episodes) for o in high)
    rows.append(Row(f"{sim.HEALTHY_HIGH.name}, 5 seeds", f"{episodes} episodes", "no episode", episodes == 0))

    # Delays count checks from the first bad minute: 1 = the check at the end of that minute.
    step = [sim.run(sim.ERROR_STEP, seed) for seed in range(step_seeds)]
    text, found = _describe([None if o.first_reduction is None else o.first_reduction - 59 for o in step], 2)
    rows.append(Row(f"{sim.ERROR_STEP.name}: exposure reduced after", text, "within 2 checks",
                    len(found) == len(step) and statistics.median(found) <= 2))

    latency = [sim.run(sim.LATENCY_STEP, seed) for seed in range(step_seeds)]
    fired = [min((minute - 59 for name, minute in o.episodes if name.startswith("Latency") and minute >= 60),
                 default=None) for o in latency]
    text, found = _describe(fired, 3)
    rows.append(Row(f"{sim.LATENCY_STEP.name}: latency guardrail fires after", text, "within 3 checks",
                    len(found) == len(latency) and found[-1] <= 3))

    low_step = [sim.run(sim.ERROR_STEP_LOW, seed) for seed in range(step_seeds)]
    text, found = _describe([None if o.first_reduction is None else o.first_reduction - 59 for o in low_step], 30)
    rows.append(Row(f"{sim.ERROR_STEP_LOW.name}: exposure reduced after", text, "within 30 checks",
                    len(found) == len(low_step) and statistics.median(found) <= 30))

    plan = [sim.run(sim.PLAN_LOW, seed) for seed in range(max(1, seeds // 4))]
    bad = sum(1 for o in plan if o.plan_state != "running" or o.exposure_changes)
    rows.append(Row(f"{sim.PLAN_LOW.name}, {len(plan)} seeds", f"{bad} paused or rolled back",
                    "never paused or rolled back by noise", bad == 0))
    week = [sim.run(sim.PLAN_WEEK, seed) for seed in range(_seeds("BENCH_WEEK_SEEDS", 2))]
    bad = sum(1 for o in week if o.plan_state != "running" or o.exposure_changes or o.episodes)
    rows.append(Row(f"{sim.PLAN_WEEK.name}, {len(week)} seeds", f"{bad} with an episode, pause or rollback",
                    "none", bad == 0))
    rows.append(Row("  simulated minutes in all, wall time",
                    f"{sum(o.minutes for o in low + high + step + latency + low_step + plan + week):,} min, "
                    f"{time.perf_counter() - started:.0f} s", "-", None))
    return rows
