"""In-process evaluation: microseconds per decision for each bucketing and each kind of answer."""

from __future__ import annotations

import time

from bench.common import Row
from flags import evaluation, targeting

TARGET_US = 2.0
RULES_TARGET_US = 3.0
USERS = [f"user-{i}" for i in range(200_000)]


def _per_decision_us(flag: evaluation.FlagConfig, contexts: list[dict[str, object]] | None = None) -> float:
    evaluate = evaluation.evaluate
    best = float("inf")
    attributes = contexts or [{}]
    pairs = [(user_id, attributes[i % len(attributes)]) for i, user_id in enumerate(USERS)]
    for _ in range(5):
        start = time.perf_counter()
        for user_id, context in pairs:
            evaluate(flag, user_id, context)
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
    flag, contexts = _targeted()
    us = _per_decision_us(flag, contexts)
    rows.append(Row("evaluate() 5 rules x 3 conditions, 10k-id segment, 1,000-char attribute", f"{us:.3f} us/decision",
                    f"< {RULES_TARGET_US} us", us < RULES_TARGET_US))
    return rows


BETA_IDS = [f"user-{i}" for i in range(0, 30_000, 3)]  # 10,000 ids


def _cond(attribute: str, operator: str, *values: object) -> dict[str, object]:
    return {"attribute": attribute, "operator": operator, "values": list(values)}


# Issue 13's case: five rules of three conditions (one of them on a segment of 10,000 ids). bench_api.py
# serves the same rules over HTTP.
TARGETED_RULES: list[dict[str, object]] = [
    {"id": "staff", "serve": "on", "conditions": [_cond("email", "ends_with", "@ourcompany.com"),
                                                  _cond("verified", "equals", True),
                                                  _cond("country", "in", "DE", "FR", "NL", "US")]},
    {"id": "old-app", "serve": "off", "conditions": [_cond("app_version", "semver_lt", "2.0.0"),
                                                     _cond("platform", "in", "ios", "android"),
                                                     _cond("agent", "contains", "Mobile")]},
    {"id": "beta", "serve": "on", "segment": "beta",
     "conditions": [_cond("plan", "not_in", "free"), _cond("seats", "gte", 5),
                    _cond("agent", "matches", "Chrome/1[0-9]{2}")]},
    {"id": "enterprise", "serve": "percentage", "percentage": 50,
     "conditions": [_cond("plan", "equals", "enterprise"), _cond("seats", "gt", 100),
                    _cond("signed_up", "before", "2026-01-01")]},
    {"id": "new-eu", "serve": "percentage", "percentage": 10,
     "conditions": [_cond("country", "in", "DE", "FR", "NL"), _cond("signed_up", "after", "2026-06-01"),
                    _cond("app_version", "semver_gte", "3.0.0")]},
]
AGENT = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36 "
         * 20)[:1000]


def targeted_context(i: int) -> dict[str, object]:
    """A context with a 1,000-character user agent; most reach the default rollout after every rule (the
    costliest path), and a third of the users are in the beta segment."""
    return {"email": f"u{i}@example.com", "verified": True, "country": ("DE", "BR", "US")[i % 3], "plan": "pro",
            "seats": i % 200, "app_version": ("2.4.1", "3.1.0", "1.9.9")[i % 3], "platform": "web",
            "signed_up": "2026-03-04T10:00:00Z", "agent": AGENT}


def _targeted() -> tuple[evaluation.FlagConfig, list[dict[str, object]]]:
    beta = targeting.segment_from_json({"key": "beta", "included": BETA_IDS})
    rules = targeting.rules_from_json(TARGETED_RULES, {"beta": beta})
    flag = evaluation.FlagConfig("patch_mode_enabled", True, 2500, rules=rules)
    return flag, [targeted_context(i) for i in range(64)]
