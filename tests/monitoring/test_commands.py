"""The import_executions command and raw-record retention (monitoring.tasks.prune_raw_records)."""

from __future__ import annotations

import io
import json
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db.models import Sum
from django.utils import timezone

from monitoring import services, tasks
from monitoring.models import ExecutionRecord, Rollup
from tests.monitoring import at, record


def _write(tmp_path, lines: list, name: str = "executions.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n",
                    encoding="utf-8")
    return path


def _import(path, *args: str) -> str:
    out = io.StringIO()
    call_command("import_executions", str(path), *args, stdout=out)
    return out.getvalue()


def _records(count: int, prefix: str = "imp") -> list[dict]:
    now = timezone.now()
    return [record(id=f"{prefix}-{i}", user_id=f"u{i}", mode="patch" if i % 3 else "single",
                   tokens_used=500 + i, success=i % 4 != 0, occurred_at=at(now - timedelta(minutes=i)))
            for i in range(count)]


def _rollup_calls(resolution: int = Rollup.MINUTE) -> int:
    return Rollup.objects.filter(resolution=resolution).aggregate(total=Sum("calls"))["total"] or 0


# --- import_executions -------------------------------------------------------------------------------------


def test_import_stores_every_line_and_reports_the_count(db, tmp_path):
    records = _records(6)
    path = _write(tmp_path, [*records[:3], "", "   ", *records[3:]])  # blank lines are skipped
    output = _import(path)
    assert f"Imported {len(records)} record(s); 0 already present." in output
    assert ExecutionRecord.objects.count() == len(records)
    assert sorted(ExecutionRecord.objects.values_list("client_id", flat=True)) == sorted(r["id"] for r in records)
    assert _rollup_calls() == _rollup_calls(Rollup.HOUR) == len(records)
    assert Rollup.objects.filter(resolution=Rollup.MINUTE).aggregate(t=Sum("tokens_sum"))["t"] == \
        sum(r["tokens_used"] for r in records)


def test_reimporting_the_same_file_counts_every_record_as_already_present(db, tmp_path):
    records = _records(5)
    path = _write(tmp_path, records)
    _import(path)
    output = _import(path)
    assert f"Imported 0 record(s); {len(records)} already present." in output
    assert ExecutionRecord.objects.count() == len(records)
    assert _rollup_calls() == len(records)


def test_import_of_a_file_overlapping_an_earlier_one_adds_only_the_new_records(db, tmp_path):
    records = _records(8)
    _import(_write(tmp_path, records[:5], "first.jsonl"))
    output = _import(_write(tmp_path, records[3:], "second.jsonl"))
    assert "Imported 3 record(s); 2 already present." in output
    assert ExecutionRecord.objects.count() == 8


def test_import_in_small_batches_stores_everything(db, tmp_path):
    records = _records(7)
    output = _import(_write(tmp_path, records), "--batch-size", "2")
    assert f"Imported {len(records)} record(s)" in output
    assert ExecutionRecord.objects.count() == len(records)
    assert _rollup_calls() == len(records)


def test_a_line_that_is_not_json_fails_naming_the_line_and_nothing_is_imported(db, tmp_path):
    records = _records(4)
    path = _write(tmp_path, [records[0], records[1], '{"user_id": "u", "mode": ', records[2], records[3]])
    with pytest.raises(CommandError, match=r"line 3\b"):
        _import(path, "--batch-size", "1")
    assert not ExecutionRecord.objects.exists()
    assert not Rollup.objects.exists()


def test_a_record_failing_validation_fails_naming_the_record_and_field_and_nothing_is_imported(db, tmp_path):
    records = _records(5)
    records[3]["tokens_used"] = -10
    path = _write(tmp_path, records)
    with pytest.raises(CommandError) as caught:
        _import(path, "--batch-size", "1")  # even earlier batches are not written
    message = str(caught.value)
    assert "record 4" in message
    assert "tokens_used" in message
    assert "nothing imported" in message
    assert not ExecutionRecord.objects.exists()
    assert not Rollup.objects.exists()


def test_a_bad_record_in_a_later_chunk_of_5000_is_numbered_from_the_start_of_the_file(db, tmp_path):
    now = timezone.now()
    records = [record(user_id=f"u{i}", occurred_at=at(now)) for i in range(services.MAX_RECORDS + 10)]
    bad_number = services.MAX_RECORDS + 7  # 1-based
    records[bad_number - 1]["success"] = "maybe"
    with pytest.raises(CommandError, match=rf"record {bad_number} \(success\)"):
        _import(_write(tmp_path, records))
    assert not ExecutionRecord.objects.exists()


def test_the_command_counts_every_problem_of_the_file(db, tmp_path):
    records = _records(4)
    records[1]["mode"] = "Not A Slug"
    records[2]["user_id"] = ""
    records[2]["success"] = None
    with pytest.raises(CommandError, match=r"record 2 \(mode\).*3 problem\(s\) in all"):
        _import(_write(tmp_path, records))


def test_a_missing_file_an_empty_file_and_a_bad_batch_size_are_command_errors(db, tmp_path):
    with pytest.raises(CommandError, match="no such file"):
        _import(tmp_path / "missing.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(CommandError, match="holds no records"):
        _import(empty)
    path = _write(tmp_path, _records(1))
    for size in ("0", str(services.MAX_RECORDS + 1)):
        with pytest.raises(CommandError, match="--batch-size"):
            _import(path, "--batch-size", size)
    assert not ExecutionRecord.objects.exists()


def test_a_line_with_a_lone_surrogate_is_refused_and_nothing_is_imported(db, tmp_path):
    records = _records(3)
    lines = [json.dumps(r) for r in records]
    lines[2] = lines[2].replace('"user_id": "u2"', '"user_id": "u2\\ud800"')
    assert "\\ud800" in lines[2]
    path = _write(tmp_path, lines)
    with pytest.raises(CommandError, match="record 3"):
        _import(path, "--batch-size", "1")
    assert not ExecutionRecord.objects.exists()


# --- retention ---------------------------------------------------------------------------------------------


def _aged_records(now, ages_in_days: list[float]) -> list[dict]:
    return [record(user_id=f"u{i}", tokens_used=100 + i, occurred_at=at(now - timedelta(days=age)))
            for i, age in enumerate(ages_in_days)]


def _rollup_state() -> list[tuple]:
    return list(Rollup.objects.order_by("resolution", "bucket_start", "mode")
                .values_list("resolution", "bucket_start", "mode", "calls", "tokens_sum"))


def test_prune_task_deletes_raw_records_older_than_the_retention_and_keeps_the_rollups(db, settings):
    now = timezone.now()
    ages = [45, 31, 30.01, 29.9, 5, 0.01]
    services.ingest(_aged_records(now, ages), now=now)
    rollups_before = _rollup_state()
    settings.EXECUTION_RETENTION_DAYS = 30
    deleted = tasks.prune_raw_records()
    assert deleted == sum(age > 30 for age in ages)
    kept = sorted(ExecutionRecord.objects.values_list("tokens_used", flat=True))
    assert kept == [100 + i for i, age in enumerate(ages) if age <= 30]
    assert _rollup_state() == rollups_before
    assert _rollup_calls() == len(ages)


def test_prune_task_follows_a_shorter_retention_setting(db, settings):
    now = timezone.now()
    ages = [20, 8, 6, 1]
    services.ingest(_aged_records(now, ages), now=now)
    settings.EXECUTION_RETENTION_DAYS = 7
    assert tasks.prune_raw_records() == sum(age > 7 for age in ages)
    assert ExecutionRecord.objects.count() == sum(age <= 7 for age in ages)
    assert _rollup_calls(Rollup.HOUR) == len(ages)
    assert tasks.prune_raw_records() == 0  # nothing left to prune


def test_prune_service_uses_the_given_moment_as_now(db):
    now = timezone.now()
    services.ingest(_aged_records(now, [12, 9, 3]), now=now)
    assert services.prune_raw_records(older_than_days=10, now=now) == 1
    assert services.prune_raw_records(older_than_days=10, now=now + timedelta(days=2)) == 1
    assert list(ExecutionRecord.objects.values_list("user_id", flat=True)) == ["u2"]
    assert _rollup_calls() == 3
