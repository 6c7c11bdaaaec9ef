"""The pure evaluation core: which users get a flag, and why.

No Django import here, on purpose: the API, the admin, the CLI, the dashboard and the benchmarks all
call the same functions with plain frozen dataclasses, and the rules are tested without a database.
The bucketing rules are specified in shared/reference/bucketing.md.
"""

from __future__ import annotations

import operator
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import NamedTuple

import mmh3

from .targeting import Rule, Serve

MURMUR3 = "murmur3"
LEGACY = "legacy"
BUCKETINGS = (MURMUR3, LEGACY)

MURMUR3_BUCKETS = 10_000
LEGACY_COHORTS = 100


class Reason(StrEnum):
    DISABLED = "DISABLED"
    ALLOW_LIST = "ALLOW_LIST"
    DENY_LIST = "DENY_LIST"
    IN_ROLLOUT = "IN_ROLLOUT"
    OUT_OF_ROLLOUT = "OUT_OF_ROLLOUT"
    FLAG_NOT_FOUND = "FLAG_NOT_FOUND"
    RULE_MATCH = "RULE_MATCH"


@dataclass(frozen=True, slots=True)
class FlagConfig:
    """Everything the decision needs about one flag, detached from the database."""

    key: str
    enabled: bool
    # The rollout in hundredths of a percent (0..10000), so both bucketings compare integers.
    rollout_basis_points: int
    bucketing: str = MURMUR3
    salt: str = ""
    version: int = 1
    allow: frozenset[str] = field(default_factory=frozenset)
    deny: frozenset[str] = field(default_factory=frozenset)
    client_side: bool = False  # evaluable with a client key (a browser's)
    # Targeting rules (flags/targeting.py), in order, between the lists and the default rollout.
    rules: tuple[Rule, ...] = ()

    def __post_init__(self) -> None:
        if not 0 <= self.rollout_basis_points <= MURMUR3_BUCKETS:
            raise ValueError(f"rollout_basis_points must be 0..10000, not {self.rollout_basis_points}")
        if self.bucketing not in BUCKETINGS:
            raise ValueError(f"unknown bucketing {self.bucketing!r}")
        if not self.salt:
            object.__setattr__(self, "salt", self.key)
        # A user on both lists would make the answer depend on rule order; the services forbid it,
        # and a hand-built config must not sneak it in either.
        both = self.allow & self.deny
        if both:
            raise ValueError(f"users on both lists: {sorted(both)[:5]}")

    @property
    def rollout_percentage(self) -> Decimal:
        return Decimal(self.rollout_basis_points).scaleb(-2)


class Decision(NamedTuple):
    # A NamedTuple rather than a frozen dataclass: built once per decision, it is several times
    # cheaper to construct, and evaluation has a budget of 2 microseconds.
    enabled: bool
    reason: Reason
    # The number the rollout compares for this user and flag: 0..9999 (murmur3) or the cohort 0..99
    # (legacy). Reported for every known flag, even when a list or the kill switch decided, so that
    # "why does this user see it?" also answers "would they see it at p%?". None for unknown flags.
    bucket: int | None
    rule: str | None = None  # the id of the rule that decided (reason RULE_MATCH)


NOT_FOUND = Decision(enabled=False, reason=Reason.FLAG_NOT_FOUND, bucket=None)


def percentage_to_basis_points(percentage: Decimal | int | str) -> int:
    """Exact conversion of a 0..100 percentage with at most two decimals to 0..10000."""
    value = Decimal(percentage)
    if not value.is_finite():
        raise ValueError("rollout percentage must be a finite number")
    scaled = value.scaleb(2)
    if scaled != scaled.to_integral_value():
        raise ValueError("rollout percentage has at most two decimal places")
    points = int(scaled)
    if not 0 <= points <= MURMUR3_BUCKETS:
        raise ValueError("rollout percentage must be between 0 and 100")
    return points


def murmur3_bucket(salt: str, user_id: str) -> int:
    return mmh3.hash(f"{salt}:{user_id}".encode(), 0, signed=False) % MURMUR3_BUCKETS


# 31**k mod 2**32: the seed's loop h = h*31 + c, unrolled, is sum(c_i * 31**(n-1-i)) mod 2**32, which
# map() computes at C speed instead of a Python loop per character.
_POW31 = [pow(31, k, 2**32) for k in range(1024)]
_UTF16 = "utf-16-le" if sys.byteorder == "little" else "utf-16-be"


def legacy_cohort(user_id: str) -> int:
    """Bit-for-bit the seed's JavaScript getUserCohort (feature-flags.js).

    JavaScript hashes UTF-16 code units (a character outside the BMP is a surrogate pair), wraps to a
    signed 32-bit integer after every step, and its % keeps the dividend's sign before Math.abs.
    """
    if user_id.isascii() and len(user_id) <= len(_POW31):
        # ASCII: one code unit per character, equal to its byte.
        h = sum(map(operator.mul, user_id[::-1].encode(), _POW31)) & 0xFFFFFFFF
        return _signed_abs_mod(h)
    units = memoryview(user_id.encode(_UTF16)).cast("H")
    if len(units) <= len(_POW31):
        h = sum(map(operator.mul, units[::-1], _POW31)) & 0xFFFFFFFF
    else:
        h = 0
        for unit in units:
            h = (h * 31 + unit) & 0xFFFFFFFF
    return _signed_abs_mod(h)


def _signed_abs_mod(h: int) -> int:
    if h >= 0x80000000:
        h -= 0x100000000
    # abs(JS h % 100) == abs(h) % 100 because JS % truncates toward zero.
    return abs(h) % LEGACY_COHORTS


def bucket_for(flag: FlagConfig, user_id: str) -> int:
    if flag.bucketing == MURMUR3:
        return murmur3_bucket(flag.salt, user_id)
    return legacy_cohort(user_id)


def in_rollout(flag: FlagConfig, bucket: int, basis_points: int | None = None) -> bool:
    """Whether a bucket is inside the flag's rollout, or inside `basis_points` (a rule's percentage) when
    given: the same comparison, so a rule's percentage grows exactly like the flag's."""
    points = flag.rollout_basis_points if basis_points is None else basis_points
    if flag.bucketing == MURMUR3:
        return bucket < points
    # cohort < percentage, compared in hundredths so that 25.5% is exact.
    return bucket * 100 < points


_NO_ATTRIBUTES: dict[str, object] = {}


def evaluate(flag: FlagConfig | None, user_id: str, attributes: Mapping[str, object] | None = None) -> Decision:
    """Decide one user: kill switch, then allow list, deny list, the targeting rules in order (on the
    context's attributes), then the default rollout."""
    if flag is None:
        return NOT_FOUND
    bucket = bucket_for(flag, user_id)
    if not flag.enabled:
        return Decision(False, Reason.DISABLED, bucket)
    if user_id in flag.allow:
        return Decision(True, Reason.ALLOW_LIST, bucket)
    if user_id in flag.deny:
        return Decision(False, Reason.DENY_LIST, bucket)
    if flag.rules:
        context = _NO_ATTRIBUTES if attributes is None else attributes
        for rule in flag.rules:
            if rule.matches(user_id, context):
                serve = rule.serve
                enabled = serve == Serve.ON or (serve == Serve.PERCENTAGE and in_rollout(flag, bucket,
                                                                                          rule.basis_points))
                return Decision(enabled, Reason.RULE_MATCH, bucket, rule.id)
    if in_rollout(flag, bucket):
        return Decision(True, Reason.IN_ROLLOUT, bucket)
    return Decision(False, Reason.OUT_OF_ROLLOUT, bucket)
