"""monitoring 0002_rollup_moments fills the new sums of existing rollups: exactly from the raw records where
they are kept, from the latency histogram (and the mean tokens) where they were pruned."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from monitoring import histogram

BEFORE = [("monitoring", "0001_initial")]
AFTER = [("monitoring", "0002_rollup_moments")]

KEPT_MINUTE = datetime(2026, 3, 2, 10, 5, tzinfo=UTC)
PRUNED_MINUTE = datetime(2026, 2, 1, 8, 17, tzinfo=UTC)
# (latency ms, tokens) of the calls of each bucket.
KEPT_CALLS = [(95.5, 800), (120.0, 640), (3.2, 0), (1800.0, 1500), (240.25, 777)]
PRUNED_CALLS = [(12.0, 300), (180.0, 900), (180.0, 910), (2500.0, 2000), (0.4, 10), (75.0, 512)]


def migrate(targets: list[tuple[str, str]]):  # type: ignore[no-untyped-def]
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return MigrationExecutor(connection).loader.project_state(targets).apps


def hist_of(latencies: list[float]) -> bytes:
    counts = histogram.empty()
    for value in latencies:
        counts[histogram.slot_for(value)] += 1
    return histogram.to_bytes(counts)


def rollup_fields(calls: list[tuple[float, int]]) -> dict:
    return {"calls": len(calls), "successes": len(calls), "latency_sum": sum(lat for lat, _ in calls),
            "tokens_sum": sum(tok for _, tok in calls), "latency_hist": hist_of([lat for lat, _ in calls])}


@pytest.fixture
def migrated_back():
    migrate(BEFORE)
    try:
        yield
    finally:
        executor = MigrationExecutor(connection)
        executor.loader.build_graph()
        executor.migrate(executor.loader.graph.leaf_nodes())


@pytest.mark.django_db(transaction=True)
def test_existing_rollups_get_exact_sums_from_raw_records_and_estimates_from_histograms(migrated_back):
    old = migrate(BEFORE)
    Record, Rollup = old.get_model("monitoring", "ExecutionRecord"), old.get_model("monitoring", "Rollup")
    for i, (latency, tokens) in enumerate(KEPT_CALLS):
        Record.objects.create(user_id=f"u{i}", mode="patch", flag_key="f1", latency_ms=latency, tokens_used=tokens,
                              success=True, occurred_at=KEPT_MINUTE + timedelta(seconds=7 * i))
    # A call of another mode in the same minute must not count for the patch rollup.
    Record.objects.create(user_id="s", mode="single", flag_key="f1", latency_ms=5000.0, tokens_used=9999,
                          success=True, occurred_at=KEPT_MINUTE)
    kept = Rollup.objects.create(resolution=60, flag_key="f1", mode="patch", bucket_start=KEPT_MINUTE,
                                 **rollup_fields(KEPT_CALLS))
    kept_hour = Rollup.objects.create(resolution=3600, flag_key="f1", mode="patch",
                                      bucket_start=KEPT_MINUTE.replace(minute=0), **rollup_fields(KEPT_CALLS))
    pruned = Rollup.objects.create(resolution=60, flag_key="f1", mode="patch", bucket_start=PRUNED_MINUTE,
                                   **rollup_fields(PRUNED_CALLS))
    empty = Rollup.objects.create(resolution=60, flag_key="f1", mode="single", bucket_start=PRUNED_MINUTE)

    new = migrate(AFTER)
    rows = {row.pk: row for row in new.get_model("monitoring", "Rollup").objects.all()}

    logs = [math.log1p(latency) for latency, _ in KEPT_CALLS]
    for pk in (kept.pk, kept_hour.pk):
        row = rows[pk]
        assert row.log_latency_sum == pytest.approx(sum(logs), rel=1e-9)
        assert row.log_latency_sq == pytest.approx(sum(v * v for v in logs), rel=1e-9)
        assert row.tokens_sq == pytest.approx(sum(tokens * tokens for _, tokens in KEPT_CALLS), rel=1e-12)

    row = rows[pruned.pk]
    true_logs = [math.log1p(latency) for latency, _ in PRUNED_CALLS]
    per_call = math.log(1.05)  # a slot's midpoint is within 4.4% of every latency counted in it
    assert abs(row.log_latency_sum - sum(true_logs)) <= per_call * len(PRUNED_CALLS)
    assert row.log_latency_sum != pytest.approx(0)
    assert abs(row.log_latency_sq - sum(v * v for v in true_logs)) <= sum(
        (v + per_call) ** 2 - v * v for v in true_logs)
    tokens_sum = sum(tokens for _, tokens in PRUNED_CALLS)
    assert row.tokens_sq == pytest.approx(tokens_sum ** 2 / len(PRUNED_CALLS), rel=1e-12)

    row = rows[empty.pk]
    assert (row.log_latency_sum, row.log_latency_sq, row.tokens_sq) == (0, 0, 0)


@pytest.mark.django_db(transaction=True)
def test_a_rollup_whose_raw_records_are_partly_pruned_uses_its_histogram(migrated_back):
    """Two of the bucket's five calls are still kept: the raw sums would be short, so the histogram counts."""
    old = migrate(BEFORE)
    Record, Rollup = old.get_model("monitoring", "ExecutionRecord"), old.get_model("monitoring", "Rollup")
    for i, (latency, tokens) in enumerate(KEPT_CALLS[:2]):
        Record.objects.create(user_id=f"u{i}", mode="patch", flag_key="", latency_ms=latency, tokens_used=tokens,
                              success=True, occurred_at=KEPT_MINUTE + timedelta(seconds=i))
    partial = Rollup.objects.create(resolution=60, flag_key="", mode="patch", bucket_start=KEPT_MINUTE,
                                    **rollup_fields(KEPT_CALLS))
    row = migrate(AFTER).get_model("monitoring", "Rollup").objects.get(pk=partial.pk)
    true_logs = [math.log1p(latency) for latency, _ in KEPT_CALLS]
    assert abs(row.log_latency_sum - sum(true_logs)) <= math.log(1.05) * len(KEPT_CALLS)
    assert row.log_latency_sum > sum(true_logs[:2]) * 1.5
    tokens_sum = sum(tokens for _, tokens in KEPT_CALLS)
    assert row.tokens_sq == pytest.approx(tokens_sum ** 2 / len(KEPT_CALLS), rel=1e-12)


@pytest.mark.django_db
def test_the_latest_migrations_are_applied_after_the_migration_tests():
    """Runs after the tests above (file order): the current models work again."""
    from monitoring.models import Rollup

    Rollup.objects.create(resolution=60, flag_key="x", mode="patch", bucket_start=KEPT_MINUTE, log_latency_sum=1.5,
                          log_latency_sq=2.25, tokens_sq=4.0)
    assert Rollup.objects.get(flag_key="x").tokens_sq == 4.0
    executor = MigrationExecutor(connection)
    assert not executor.migration_plan(executor.loader.graph.leaf_nodes())
