"""The pure core: no database, plain parametrized tests."""

from __future__ import annotations

import random
from decimal import Decimal

import mmh3
import pytest

from flags import evaluation
from flags.evaluation import FlagConfig, Reason, evaluate
from tests.conftest import shared_data

MURMUR = shared_data("murmur3-bucket-vectors.json")["vectors"]
LEGACY = shared_data("legacy-cohort-vectors.json")["vectors"]


def config(percentage: str | int = 50, **kwargs) -> FlagConfig:
    kwargs.setdefault("key", "patch_mode_enabled")
    kwargs.setdefault("enabled", True)
    return FlagConfig(rollout_basis_points=evaluation.percentage_to_basis_points(percentage), **kwargs)


@pytest.mark.parametrize("vector", MURMUR, ids=lambda v: f"{v['salt']}:{v['user_id']}")
def test_murmur3_bucket_matches_shared_vectors(vector):
    assert evaluation.murmur3_bucket(vector["salt"], vector["user_id"]) == vector["bucket"]


@pytest.mark.parametrize("vector", LEGACY, ids=lambda v: repr(v["user_id"]))
def test_legacy_cohort_matches_the_seeds_javascript(vector):
    assert evaluation.legacy_cohort(vector["user_id"]) == vector["cohort"]


def test_murmur3_reproduces_the_unleash_client_vector():
    assert mmh3.hash(b"gr1:123", 0, signed=False) % 100 + 1 == 73


def test_legacy_hashes_utf16_code_units_like_javascript():
    # U+1F600 is the surrogate pair D83D DE00 in JavaScript strings: two steps of the hash, not one.
    expected = abs(((0xD83D * 31) + 0xDE00) % 100)
    assert evaluation.legacy_cohort("\U0001f600") == expected == 99
    assert evaluation.legacy_cohort("\U0001f600") != 0x1F600 % 100


def test_legacy_wraps_to_signed_32_bits_and_keeps_the_dividend_sign():
    # A long id overflows 32 bits many times; compute the JavaScript arithmetic step by step here.
    user_id = "f47ac10b-58cc-4372-a567-0e02b2c3d479-" * 4
    h = 0
    for ch in user_id:
        h = ((h << 5) - h) + ord(ch)
        h = (h + 2**31) % 2**32 - 2**31
    js_mod = -(abs(h) % 100) if h < 0 else h % 100
    assert evaluation.legacy_cohort(user_id) == abs(js_mod)


def test_seed_test_1_legacy_25_percent_of_user_0_to_99_is_exactly_21():
    flag = config(25, bucketing=evaluation.LEGACY)
    enabled = [evaluate(flag, f"user_{i}").enabled for i in range(100)]
    assert sum(enabled) == 21


def test_seed_test_2_allow_and_deny_lists_at_zero_percent():
    flag = config(0, allow=frozenset({"whitelisted_user"}), deny=frozenset({"blacklisted_user"}))
    allowed = evaluate(flag, "whitelisted_user")
    denied = evaluate(flag, "blacklisted_user")
    assert (allowed.enabled, allowed.reason) == (True, Reason.ALLOW_LIST)
    assert (denied.enabled, denied.reason) == (False, Reason.DENY_LIST)
    assert evaluate(flag, "someone_else").reason == Reason.OUT_OF_ROLLOUT


def test_deny_list_beats_a_full_rollout():
    flag = config(100, deny=frozenset({"u1"}))
    assert evaluate(flag, "u1") == evaluation.Decision(False, Reason.DENY_LIST, evaluation.murmur3_bucket(
        "patch_mode_enabled", "u1"))
    assert evaluate(flag, "u2").reason == Reason.IN_ROLLOUT


def test_kill_switch_beats_everything_including_the_allow_list():
    flag = config(100, enabled=False, allow=frozenset({"vip"}))
    for user in ("vip", "anyone"):
        decision = evaluate(flag, user)
        assert (decision.enabled, decision.reason) == (False, Reason.DISABLED)


def test_unknown_flag_is_off_with_flag_not_found():
    decision = evaluate(None, "user_1")
    assert (decision.enabled, decision.reason, decision.bucket) == (False, Reason.FLAG_NOT_FOUND, None)


def test_bucket_is_reported_for_known_flags_whatever_decided():
    flag = config(0, enabled=False)
    assert evaluate(flag, "user_3").bucket == 1796  # from the shared vectors


def test_a_user_on_both_lists_is_refused():
    with pytest.raises(ValueError, match="both lists"):
        config(10, allow=frozenset({"x"}), deny=frozenset({"x"}))


@pytest.mark.parametrize("points", [-1, 10_001])
def test_rollout_outside_0_to_100_percent_is_refused(points):
    with pytest.raises(ValueError):
        FlagConfig(key="k", enabled=True, rollout_basis_points=points)


@pytest.mark.parametrize(
    ("given", "points"),
    [("0", 0), ("0.01", 1), ("25.5", 2550), (Decimal("33.33"), 3333), (100, 10_000), ("100.00", 10_000)],
)
def test_percentage_converts_exactly_to_basis_points(given, points):
    assert evaluation.percentage_to_basis_points(given) == points


@pytest.mark.parametrize("given", ["12.345", "-0.01", "100.01", "NaN", "Infinity"])
def test_percentage_conversion_rejects_what_cannot_be_a_rollout(given):
    with pytest.raises(ValueError):
        evaluation.percentage_to_basis_points(given)


def test_murmur3_granularity_is_a_hundredth_of_a_percent():
    # The user whose bucket is exactly b is out at b/100 % and in at (b+1)/100 %.
    vector = MURMUR[1]  # bucket 155
    at = config("1.55", salt=vector["salt"])
    above = config("1.56", salt=vector["salt"])
    assert evaluate(at, vector["user_id"]).enabled is False
    assert evaluate(above, vector["user_id"]).enabled is True


def test_legacy_compares_the_cohort_with_a_fractional_percentage():
    # user_11 has cohort 0 and user_10 cohort 1 (shared vectors): 0.5% takes only the first.
    flag = config("0.5", bucketing=evaluation.LEGACY)
    assert evaluate(flag, "user_11").enabled is True
    assert evaluate(flag, "user_10").enabled is False
    assert evaluate(config("1.01", bucketing=evaluation.LEGACY), "user_10").enabled is True


@pytest.mark.parametrize("bucketing", evaluation.BUCKETINGS)
def test_raising_the_rollout_only_ever_adds_users(bucketing):
    rng = random.Random(7)
    users = [f"user-{rng.getrandbits(64):x}" for _ in range(2000)]
    steps = [0, 1, 5, 10, 20, 25, 33, 50, 75, 99, 100]
    previous: set[str] = set()
    for percentage in steps:
        flag = config(percentage, bucketing=bucketing)
        current = {u for u in users if evaluate(flag, u).enabled}
        assert previous <= current, f"users dropped out when raising to {percentage}%"
        previous = current
    assert previous == set(users)
    assert {u for u in users if evaluate(config(0, bucketing=bucketing), u).enabled} == set()


@pytest.mark.parametrize("percentage", [1, 10, 25, 50, 75, 99])
def test_murmur3_is_uniform_within_half_a_point_over_100k_ids(percentage):
    flag = config(percentage)
    hits = sum(evaluate(flag, f"synthetic-{i}").enabled for i in range(100_000))
    assert abs(hits / 1000 - percentage) <= 0.5


def test_flags_with_different_salts_pick_independent_users():
    a = config(50, key="flag_a")
    b = config(50, key="flag_b")
    users = [f"u{i}" for i in range(20_000)]
    agree = sum(evaluate(a, u).enabled == evaluate(b, u).enabled for u in users) / len(users)
    assert 0.48 <= agree <= 0.52
    # The same salt on purpose picks the same users.
    c = config(50, key="flag_c", salt="flag_a")
    assert all(evaluate(a, u).enabled == evaluate(c, u).enabled for u in users[:2000])


def test_evaluation_is_deterministic_across_calls():
    flag = config(30)
    first = [evaluate(flag, f"user_{i}") for i in range(500)]
    assert first == [evaluate(flag, f"user_{i}") for i in range(500)]


def test_the_core_imports_nothing_from_django():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(evaluation))
    modules = [
        *(alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names),
        *(node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)),
    ]
    assert modules and not [m for m in modules if m.split(".")[0] == "django"]


def _reference_js_cohort(user_id: str) -> int:
    """The seed's loop, step by step over UTF-16 code units, with JavaScript's int32 and % rules."""
    data = user_id.encode("utf-16-le")
    h = 0
    for i in range(0, len(data), 2):
        h = ((h << 5) - h) + int.from_bytes(data[i : i + 2], "little")
        h = (h + 2**31) % 2**32 - 2**31
    return abs(-(abs(h) % 100) if h < 0 else h % 100)


@pytest.mark.parametrize(
    "user_id",
    ["x" * 2000, "é" * 1500, "mixed-ü-\U0001f680-" * 3, "\U0001f600" * 600, "a", "ZZZZZZZZZZZZ", "日本語ユーザー"],
)
def test_legacy_fast_paths_agree_with_the_step_by_step_loop(user_id):
    assert evaluation.legacy_cohort(user_id) == _reference_js_cohort(user_id)
