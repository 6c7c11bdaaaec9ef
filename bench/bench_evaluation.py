"""In-process evaluation: microseconds per decision for each bucketing and each kind of answer."""

from __future__ import annotations

import time

from bench.common import Row
from flags import evaluation

TARGET_US = 2.0
USERS = [f"user-{i}" for i in range(200_000)]


def _per_decision_us(flag: evaluation.FlagConfig) -> float:
    evaluate = evaluation.evaluate
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for user_id in USERS:
            evaluate(flag, user_id)
        best = min(best, (time.perf_counter() - start) / len(USERS) * 1e6)
    return best


def run() -> list[Row]:
    allow = frozenset(f"vip-{i}" for i in range(10_000))
    deny = frozenset(f"blocked-{i}" for i in range(10_000))
    cases = {
        "murmur3, 25%, 10k+10k lists": evaluation.FlagConfig("patch_mode_enabled", True, 2500, allow=allow, deny=deny),
        "legacy, 25%": evaluation.FlagConfig("legacy_flag", True, 2500, bucketing=evaluation.LEGACY),
        "kill switch off": evaluation.FlagConfig("off_flag", False, 2500),
    }
    rows = []
    for name, flag in cases.items():
        us = _per_decision_us(flag)
        rows.append(Row(f"evaluate() {name}", f"{us:.3f} us/decision", f"< {TARGET_US} us", us < TARGET_US))
    return rows
