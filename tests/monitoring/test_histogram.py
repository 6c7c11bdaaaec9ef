"""The log-scale latency histogram and the HyperLogLog unique-user sketch (monitoring/histogram.py)."""

from __future__ import annotations

import random

import pytest

from monitoring import histogram
from tests.monitoring import exact_percentile

SAMPLES = 50_000
PERCENTILES = (0.50, 0.95, 0.99)
HLL_STANDARD_ERROR = 1.04 / (histogram.HLL_M**0.5)  # 3.25% for 1,024 registers


def _lognormal(rng: random.Random) -> list[float]:
    return [rng.lognormvariate(5.3, 0.8) for _ in range(SAMPLES)]  # median about 200 ms, long tail


def _uniform(rng: random.Random) -> list[float]:
    return [rng.uniform(1, 5000) for _ in range(SAMPLES)]


def _bimodal(rng: random.Random) -> list[float]:
    # 70% fast cache hits around 40 ms, 30% slow calls around 2 s
    return [max(0.5, rng.gauss(40, 8)) if rng.random() < 0.7 else max(1.0, rng.gauss(2000, 300))
            for _ in range(SAMPLES)]


def _histogram_of(values: list[float]) -> list[int]:
    counts = histogram.empty()
    for value in values:
        counts[histogram.slot_for(value)] += 1
    return counts


def _sketch_of(users) -> bytearray:
    registers = histogram.hll_empty()
    for user in users:
        histogram.hll_add(registers, user)
    return registers


# --- latency histogram -----------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [_lognormal, _uniform, _bimodal], ids=["lognormal", "uniform-1-5000ms", "bimodal"])
def test_histogram_percentiles_are_within_5_percent_of_exact_sorted_percentiles(make):
    values = make(random.Random(20261126))
    counts = _histogram_of(values)
    assert sum(counts) == len(values)
    for fraction in PERCENTILES:
        exact = exact_percentile(values, fraction)
        estimate = histogram.percentile(counts, fraction)
        assert estimate == pytest.approx(exact, rel=0.05), f"p{fraction * 100:g}: {estimate} vs exact {exact}"


def test_every_latency_in_range_is_estimated_within_the_documented_4_4_percent_by_its_slot():
    rng = random.Random(7)
    bound = 2 ** (1 / 16) - 1  # half a slot on a log scale
    top = histogram.BASE_MS * histogram.GROWTH ** (histogram.SLOTS - 1)
    for _ in range(20_000):
        value = histogram.BASE_MS * (top / histogram.BASE_MS) ** rng.random()
        estimate = histogram.slot_value(histogram.slot_for(value))
        assert abs(estimate / value - 1) <= bound + 1e-9, value


def test_slots_are_monotonic_and_out_of_range_latencies_land_in_the_end_slots():
    values = sorted(random.Random(3).uniform(0, 10_000) for _ in range(5_000))
    slots = [histogram.slot_for(v) for v in values]
    assert slots == sorted(slots)
    assert histogram.slot_for(0) == 0
    assert histogram.slot_for(histogram.BASE_MS / 2) == 0
    assert histogram.slot_for(1e9) == histogram.SLOTS - 1


def test_percentile_of_an_empty_histogram_is_none():
    assert histogram.percentile(histogram.empty(), 0.5) is None


def test_merging_two_histograms_equals_the_histogram_of_the_union():
    rng = random.Random(11)
    first, second = _lognormal(rng)[:20_000], _bimodal(rng)[:30_000]
    merged = histogram.add(_histogram_of(first), _histogram_of(second))
    assert merged == _histogram_of(first + second)
    for fraction in PERCENTILES:
        assert histogram.percentile(merged, fraction) == pytest.approx(exact_percentile(first + second, fraction),
                                                                       rel=0.05)


def test_histogram_survives_the_round_trip_through_bytes_and_empty_bytes_read_as_empty():
    counts = _histogram_of(_uniform(random.Random(5))[:1000])
    assert histogram.from_bytes(histogram.to_bytes(counts)) == counts
    assert histogram.from_bytes(memoryview(histogram.to_bytes(counts))) == counts
    assert histogram.from_bytes(b"") == histogram.empty()
    assert histogram.from_bytes(None) == histogram.empty()


# --- HyperLogLog -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("distinct", [1_000, 50_000])
def test_hll_count_is_within_three_standard_errors_of_the_distinct_users(distinct):
    # each user is seen three times: repeats must not count
    registers = _sketch_of(f"user-{i % distinct}" for i in range(distinct * 3))
    estimate = histogram.hll_count(registers)
    assert abs(estimate - distinct) <= 3 * HLL_STANDARD_ERROR * distinct, estimate


def test_hll_merge_of_overlapping_sets_estimates_the_union_and_equals_the_sketch_of_the_union():
    first = [f"user-{i}" for i in range(0, 30_000)]
    second = [f"user-{i}" for i in range(20_000, 50_000)]
    union = len(set(first) | set(second))
    merged = histogram.hll_merge(_sketch_of(first), bytes(_sketch_of(second)))
    assert merged == _sketch_of(first + second)
    estimate = histogram.hll_count(merged)
    assert abs(estimate - union) <= 3 * HLL_STANDARD_ERROR * union, estimate
    # and not the sum of both (which would double-count the overlap)
    assert estimate < len(first) + len(second) - 3 * HLL_STANDARD_ERROR * union


def test_hll_merge_with_nothing_leaves_the_sketch_unchanged():
    registers = _sketch_of(f"u{i}" for i in range(100))
    before = bytes(registers)
    assert bytes(histogram.hll_merge(registers, None)) == before
    assert bytes(histogram.hll_merge(registers, b"")) == before


@pytest.mark.parametrize("distinct", [0, 1, 10, 50])
def test_hll_small_counts_are_near_exact(distinct):
    registers = _sketch_of(f"small-user-{i % distinct}" for i in range(distinct * 5)) if distinct else \
        histogram.hll_empty()
    assert abs(histogram.hll_count(registers) - distinct) <= max(1, round(distinct * 0.02))
