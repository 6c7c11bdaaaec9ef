"""Ingestion: whole-batch validation, all-or-nothing writes, idempotent retries, minute and hour rollups."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.db.models import Sum
from django.utils import timezone

from monitoring import histogram, selectors, services
from monitoring.models import ExecutionRecord, Rollup
from tests.conftest import requires_postgres
from tests.monitoring import at, record

NOW = datetime(2026, 11, 26, 10, 30, 20, tzinfo=UTC)
ON_POSTGRES = connection.vendor == "postgresql"


def _errors(records, now=NOW) -> set[tuple[int, str]]:
    with pytest.raises(services.BatchRejected) as caught:
        services.validate(records, now=now)
    for error in caught.value.errors:
        assert isinstance(error.reason, str) and error.reason.strip()
    return {(e.index, e.field) for e in caught.value.errors}


def _nothing_written() -> bool:
    return not ExecutionRecord.objects.exists() and not Rollup.objects.exists()


def _rollup_total(field: str, resolution: int = Rollup.MINUTE) -> int | float:
    return Rollup.objects.filter(resolution=resolution).aggregate(total=Sum(field))["total"] or 0


def _slots(latencies) -> list[int]:
    counts = histogram.empty()
    for value in latencies:
        counts[histogram.slot_for(value)] += 1
    return counts


# --- validation --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"user_id": ""}, "user_id"),
        ({"user_id": "   "}, "user_id"),
        ({"user_id": "u" * 256}, "user_id"),
        ({"user_id": 42}, "user_id"),
        ({"user_id": None}, "user_id"),
        ({"mode": "Patch Mode"}, "mode"),
        ({"mode": "PATCH"}, "mode"),
        ({"mode": "-patch"}, "mode"),
        ({"mode": ""}, "mode"),
        ({"latency_ms": -0.5}, "latency_ms"),
        ({"latency_ms": float("nan")}, "latency_ms"),
        ({"latency_ms": float("inf")}, "latency_ms"),
        ({"latency_ms": "150"}, "latency_ms"),
        ({"latency_ms": True}, "latency_ms"),
        ({"tokens_used": 800.5}, "tokens_used"),
        ({"tokens_used": 800.0}, "tokens_used"),
        ({"tokens_used": -1}, "tokens_used"),
        ({"tokens_used": True}, "tokens_used"),
        ({"tokens_used": "800"}, "tokens_used"),
        ({"success": "true"}, "success"),
        ({"success": 1}, "success"),
        ({"success": None}, "success"),
        ({"patch_count": 2, "failed_patches": 3}, "failed_patches"),
        ({"failed_patches": 1}, "failed_patches"),  # patch_count left out counts as 0
        ({"patch_count": -1}, "patch_count"),
        ({"occurred_at": "yesterday"}, "occurred_at"),
        ({"occurred_at": "2026-13-01T00:00:00Z"}, "occurred_at"),
        ({"occurred_at": 1764150000}, "occurred_at"),
        ({"occurred_at": at(NOW + timedelta(minutes=5, seconds=1))}, "occurred_at"),
        ({"occurred_at": at(NOW + timedelta(hours=2))}, "occurred_at"),
        ({"colour": "blue"}, "colour"),
        ({"flag": "Patch Mode!"}, "flag"),
        ({"flag": 7}, "flag"),
        ({"id": ""}, "id"),
        ({"id": 12}, "id"),
    ],
)
def test_a_record_breaking_a_rule_is_rejected_naming_its_index_and_field(overrides, field):
    bad = record(**overrides)
    for name, value in overrides.items():
        if value is None:
            del bad[name]  # left out entirely
    assert _errors([record(user_id="a"), bad, record(user_id="b")]) == {(1, field)}


@pytest.mark.parametrize("name", ["user_id", "mode", "latency_ms", "tokens_used", "success"])
def test_a_missing_required_field_is_rejected(name):
    bad = record()
    del bad[name]
    assert _errors([bad]) == {(0, name)}


@pytest.mark.parametrize(
    "overrides",
    [
        {"user_id": "u" * 255},
        {"latency_ms": 0},
        {"latency_ms": 12},
        {"tokens_used": 0},
        {"success": False},
        {"patch_count": 3, "failed_patches": 3},
        {"occurred_at": at(NOW + timedelta(minutes=4))},
        {"occurred_at": "2026-11-26T10:00:00"},  # naive: read as UTC
        {"occurred_at": "2026-11-26T11:00:00+01:00"},
        {"occurred_at": None},
        {"flag": None},
        {"flag": ""},
        {"flag": "other_flag"},
        {"mode": "patch-v2_1"},
        {"id": "client-42"},
    ],
)
def test_a_record_at_the_edge_of_each_rule_is_accepted(overrides):
    assert len(services.validate([record(**overrides)], now=NOW)) == 1


def test_occurred_at_is_normalised_to_utc_and_defaults_to_now():
    naive, offset, missing = services.validate(
        [record(occurred_at="2026-11-26T09:15:00"), record(occurred_at="2026-11-26T11:15:00+02:00"), record()],
        now=NOW)
    assert naive.occurred_at == datetime(2026, 11, 26, 9, 15, tzinfo=UTC)
    assert offset.occurred_at == datetime(2026, 11, 26, 9, 15, tzinfo=UTC)
    assert missing.occurred_at == NOW


def test_a_record_that_is_not_an_object_is_rejected_as_record():
    assert _errors([record(), ["not", "an", "object"], "x"]) == {(1, "record"), (2, "record")}


@pytest.mark.parametrize("records", [[], None, {"user_id": "u"}, "records", 5])
def test_an_empty_list_or_a_non_list_is_rejected_as_a_whole(records):
    assert _errors(records) == {(-1, "records")}


def test_more_than_5000_records_are_rejected_but_5000_are_accepted():
    assert services.MAX_RECORDS == 5000
    assert len(services.validate([record(user_id=f"u{i}") for i in range(5000)], now=NOW)) == 5000
    with pytest.raises(services.BatchRejected) as caught:
        services.validate([record(user_id=f"u{i}") for i in range(5001)], now=NOW)
    assert [(e.index, e.field) for e in caught.value.errors] == [(-1, "records")]
    assert "5001" in caught.value.errors[0].reason


def test_every_bad_record_and_every_bad_field_is_listed_not_just_the_first():
    records = [
        record(),
        record(user_id=" ", latency_ms=-1),  # two problems in one record
        record(),
        record(success="yes"),
        record(tokens_used=1.5, colour="red"),
    ]
    assert _errors(records) == {(1, "user_id"), (1, "latency_ms"), (3, "success"), (4, "tokens_used"),
                                (4, "colour")}


def test_batch_rejected_message_counts_bad_records_not_problems():
    with pytest.raises(services.BatchRejected) as caught:
        services.validate([record(user_id="", mode="X"), record(), record(success=None)], now=NOW)
    assert str(caught.value).startswith("2 bad record(s)")
    assert [e.as_dict()["index"] for e in caught.value.errors] == [0, 0, 2]


# --- all or nothing ----------------------------------------------------------------------------------------


def test_one_bad_record_among_good_ones_writes_nothing_at_all(db):
    records = [record(user_id=f"u{i}", id=f"id-{i}") for i in range(10)]
    records[7] = record(user_id="u7", tokens_used=-5)
    with pytest.raises(services.BatchRejected) as caught:
        services.ingest(records)
    assert [(e.index, e.field) for e in caught.value.errors] == [(7, "tokens_used")]
    assert _nothing_written()


def test_a_good_batch_is_stored_and_counted_by_mode(db):
    records = [record(user_id="a"), record(user_id="b", mode="single"), record(user_id="c")]
    result = services.ingest(records)
    assert (result.received, result.accepted, result.duplicates) == (3, 3, 0)
    assert result.by_mode == {"patch": 2, "single": 1}
    assert ExecutionRecord.objects.count() == 3
    assert sorted(ExecutionRecord.objects.values_list("user_id", flat=True)) == ["a", "b", "c"]


def test_stored_fields_match_the_record_sent(db):
    when = timezone.now().replace(microsecond=0) - timedelta(minutes=3)
    services.ingest([record(id="r1", user_id="alice", mode="patch", latency_ms=187.5, tokens_used=912,
                            success=False, patch_count=4, failed_patches=2, flag="patch_mode_enabled",
                            occurred_at=at(when))])
    row = ExecutionRecord.objects.get()
    assert (row.client_id, row.user_id, row.mode, row.flag_key, row.latency_ms, row.tokens_used, row.success,
            row.patch_count, row.failed_patches, row.occurred_at) == \
        ("r1", "alice", "patch", "patch_mode_enabled", 187.5, 912, False, 4, 2, when)


# --- retries and duplicates --------------------------------------------------------------------------------


def test_a_retried_batch_with_client_ids_counts_once(db):
    records = [record(id=f"batch-1-{i}", user_id=f"u{i}", tokens_used=100 + i, success=i != 1) for i in range(3)]
    first = services.ingest(records)
    calls, tokens = _rollup_total("calls"), _rollup_total("tokens_sum")
    second = services.ingest(records)
    assert (first.accepted, first.duplicates) == (3, 0)
    assert (second.received, second.accepted, second.duplicates) == (3, 0, 3)
    assert second.by_mode == {}
    assert ExecutionRecord.objects.count() == 3
    assert (_rollup_total("calls"), _rollup_total("tokens_sum")) == (calls, tokens) == \
        (3, sum(r["tokens_used"] for r in records))
    assert _rollup_total("calls", Rollup.HOUR) == 3


def test_a_retry_with_some_new_records_stores_only_the_new_ones(db):
    services.ingest([record(id="a"), record(id="b")])
    result = services.ingest([record(id="a"), record(id="b"), record(id="c", tokens_used=5)])
    assert (result.accepted, result.duplicates) == (1, 2)
    assert sorted(ExecutionRecord.objects.values_list("client_id", flat=True)) == ["a", "b", "c"]
    assert _rollup_total("calls") == 3
    assert _rollup_total("tokens_sum") == 800 + 800 + 5


def test_the_same_id_twice_within_one_batch_counts_once(db):
    result = services.ingest([record(id="twice", user_id="first"), record(id="other"),
                              record(id="twice", user_id="second")])
    assert (result.received, result.accepted, result.duplicates) == (3, 2, 1)
    assert ExecutionRecord.objects.count() == 2
    assert ExecutionRecord.objects.get(client_id="twice").user_id == "first"
    assert _rollup_total("calls") == 2


def test_records_without_ids_are_all_stored_even_when_identical(db):
    when = at(timezone.now() - timedelta(minutes=1))
    same = record(occurred_at=when)
    result = services.ingest([dict(same), dict(same), dict(same)])
    again = services.ingest([dict(same)])
    assert (result.accepted, result.duplicates, again.accepted) == (3, 0, 1)
    assert ExecutionRecord.objects.count() == 4
    assert _rollup_total("calls") == 4


# --- rollups -----------------------------------------------------------------------------------------------


def test_rollups_hold_minute_and_hour_rows_whose_sums_equal_the_raw_records(db):
    rng = random.Random(42)
    base = timezone.now().replace(second=0, microsecond=0) - timedelta(hours=3)
    records = [
        record(user_id=f"u{rng.randrange(30)}", mode=rng.choice(["patch", "single"]),
               latency_ms=round(rng.uniform(20, 900), 1), tokens_used=rng.randrange(200, 2000),
               success=rng.random() > 0.2, patch_count=(pc := rng.randrange(0, 6)),
               failed_patches=rng.randrange(0, pc + 1), occurred_at=at(base + timedelta(seconds=rng.randrange(9000))))
        for _ in range(400)
    ]
    services.ingest(records)
    clean = services.validate(records)
    for resolution, floor in ((Rollup.MINUTE, lambda t: t.replace(second=0, microsecond=0)),
                              (Rollup.HOUR, lambda t: t.replace(minute=0, second=0, microsecond=0))):
        expected: dict[tuple[str, datetime], list] = {}
        for r in clean:
            expected.setdefault((r.mode, floor(r.occurred_at)), []).append(r)
        rows = {(row.mode, row.bucket_start): row for row in Rollup.objects.filter(resolution=resolution)}
        assert set(rows) == set(expected)
        for key, group in expected.items():
            row = rows[key]
            assert row.flag_key == ""
            assert row.calls == len(group)
            assert row.successes == sum(r.success for r in group)
            assert row.tokens_sum == sum(r.tokens_used for r in group)
            assert row.patches == sum(r.patch_count for r in group)
            assert row.failed_patches == sum(r.failed_patches for r in group)
            assert row.latency_sum == pytest.approx(sum(r.latency_ms for r in group))
            hist = histogram.from_bytes(row.latency_hist)
            assert sum(hist) == len(group)
            assert hist == _slots(r.latency_ms for r in group)
            assert histogram.hll_count(bytes(row.users_hll)) == pytest.approx(len({r.user_id for r in group}), abs=1)


def test_a_second_batch_adds_to_the_existing_rollup_rows(db):
    when = timezone.now().replace(second=5, microsecond=0) - timedelta(minutes=10)
    services.ingest([record(user_id="a", occurred_at=at(when), tokens_used=100, success=True)])
    services.ingest([record(user_id="b", occurred_at=at(when + timedelta(seconds=30)), tokens_used=50,
                            success=False)])
    row = Rollup.objects.get(resolution=Rollup.MINUTE)
    assert (row.calls, row.successes, row.tokens_sum) == (2, 1, 150)
    assert histogram.hll_count(bytes(row.users_hll)) == 2
    assert Rollup.objects.get(resolution=Rollup.HOUR).calls == 2


def test_a_record_for_another_flag_does_not_count_for_this_flag_but_an_unflagged_one_does(flag):
    now = timezone.now()
    services.ingest([
        record(user_id="mine", flag=flag.key, success=True),
        record(user_id="unflagged", success=False),
        record(user_id="theirs", flag="other_flag", success=False),
        record(user_id="theirs-2", flag="other_flag", success=False),
    ], now=now)
    patch = selectors.summary(flag, "15m", now)["modes"]["patch"]
    assert patch["total_calls"] == 2
    assert patch["failed_calls"] == 1
    assert patch["unique_users"] == 2
    assert Rollup.objects.filter(resolution=Rollup.MINUTE, flag_key="other_flag").get().calls == 2


def test_records_in_modes_the_flag_does_not_compare_are_not_counted(flag):
    now = timezone.now()
    services.ingest([record(mode="patch"), record(mode="experimental"), record(mode="single")], now=now)
    modes = selectors.summary(flag, "15m", now)["modes"]
    assert set(modes) == {"patch", "single"}
    assert (modes["patch"]["total_calls"], modes["single"]["total_calls"]) == (1, 1)


# --- bugs --------------------------------------------------------------------------------------------------


def test_a_user_id_with_a_lone_surrogate_is_rejected_by_validation(db):
    with pytest.raises(services.BatchRejected) as caught:
        services.ingest([record(), record(user_id="user-\ud800")])
    assert {(e.index, e.field) for e in caught.value.errors} == {(1, "user_id")}
    assert _nothing_written()


def test_a_full_batch_spread_over_a_thousand_minutes_is_stored(db):
    # import_executions' default batch: a sparse backfill of one call a minute over about 17 hours
    end = timezone.now().replace(second=0, microsecond=0) - timedelta(minutes=1)
    records = [record(user_id=f"u{i}", occurred_at=at(end - timedelta(minutes=i))) for i in range(1000)]
    assert services.ingest(records).accepted == 1000
    assert _rollup_total("calls") == _rollup_total("calls", Rollup.HOUR) == 1000


def test_a_valid_batch_is_stored_even_after_huge_token_counts_in_the_same_bucket(db):
    when = timezone.now().replace(second=0, microsecond=0) - timedelta(minutes=2)
    biggest = services.MAX_TOKENS
    with pytest.raises(services.BatchRejected):
        services.ingest([record(tokens_used=biggest + 1, occurred_at=at(when))])
    for start in range(0, 5000, 1000):
        services.ingest([record(user_id=f"u{i}", tokens_used=biggest, occurred_at=at(when))
                         for i in range(start, start + 1000)])
    result = services.ingest([record(user_id="ordinary", tokens_used=5000, occurred_at=at(when))])
    assert result.accepted == 1
    assert _rollup_total("tokens_sum") == 5000 * biggest + 5000


@requires_postgres
def test_postgres_copy_path_stores_a_large_batch_once(db):
    when = timezone.now() - timedelta(minutes=30)
    records = [record(id=f"pg-{i}", user_id=f"u{i % 97}", occurred_at=at(when + timedelta(seconds=i)))
               for i in range(1500)]
    assert services.ingest(records).accepted == 1500
    assert services.ingest(records).duplicates == 1500
    assert ExecutionRecord.objects.count() == 1500
    assert _rollup_total("calls") == 1500
