"""POST /api/v1/executions (scope ingest) and GET /api/v1/flags/{key}/metrics (scope manage)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pytest
from django.db import connection
from django.utils import timezone

from monitoring import selectors
from monitoring.models import ExecutionRecord, Rollup
from tests.monitoring import at, record

EXECUTIONS = "/api/v1/executions"
ON_POSTGRES = connection.vendor == "postgresql"


@pytest.fixture(autouse=True)
def keep_the_test_connection(monkeypatch):
    # The snapshot calls close_old_connections() before it reloads, as a long-running server must; inside a test
    # transaction that would close the connection the test is using.
    monkeypatch.setattr("api.snapshot.close_old_connections", lambda: None)


@pytest.fixture
def ingest_key(make_key) -> str:
    return make_key("ingester", "ingest")


@pytest.fixture
def manage_key(make_key) -> str:
    return make_key("dashboard", "manage")


def _post(client, secret: str | None, body, **extra):
    headers = {"HTTP_AUTHORIZATION": f"Bearer {secret}"} if secret is not None else {}
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return client.post(EXECUTIONS, data=data, content_type="application/json", **headers, **extra)


def _metrics(client, secret: str, key: str = "patch_mode_enabled", **params):
    return client.get(f"/api/v1/flags/{key}/metrics", params, HTTP_AUTHORIZATION=f"Bearer {secret}")


def _nothing_written() -> bool:
    return not ExecutionRecord.objects.exists() and not Rollup.objects.exists()


# --- POST /api/v1/executions -------------------------------------------------------------------------------


def test_posting_a_good_batch_returns_the_counts_and_stores_every_record(client, ingest_key):
    records = [record(user_id=f"u{i}", mode="patch" if i % 2 else "single") for i in range(5)]
    response = _post(client, ingest_key, {"records": records})
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/json")
    assert response.json() == {"received": 5, "accepted": 5, "duplicates": 0}
    assert ExecutionRecord.objects.count() == 5
    assert ExecutionRecord.objects.filter(mode="single").count() == sum(r["mode"] == "single" for r in records)


def test_a_bad_batch_gets_400_listing_every_bad_record_and_nothing_is_written(client, ingest_key):
    records = [record(), record(user_id=""), record(), record(latency_ms=-3, success="no")]
    response = _post(client, ingest_key, {"records": records})
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "validation_failed"
    assert {(e["index"], e["field"]) for e in body["errors"]} == {(1, "user_id"), (3, "latency_ms"), (3, "success")}
    assert all(isinstance(e["reason"], str) and e["reason"] for e in body["errors"])
    assert set(body["fields"]) == {"records[1].user_id", "records[3].latency_ms", "records[3].success"}
    for error in body["errors"]:
        assert body["fields"][f"records[{error['index']}].{error['field']}"] == [error["reason"]]
    assert _nothing_written()


@pytest.mark.parametrize("records", [[], None, "lots", {"user_id": "u"}])
def test_records_that_are_not_a_non_empty_list_get_400_on_records(client, ingest_key, records):
    response = _post(client, ingest_key, {"records": records})
    assert response.status_code == 400
    assert "records" in response.json()["fields"]
    assert _nothing_written()


def test_a_batch_of_more_than_5000_records_gets_400(client, ingest_key):
    response = _post(client, ingest_key, {"records": [record(user_id=f"u{i}") for i in range(5001)]})
    assert response.status_code == 400
    assert list(response.json()["fields"]) == ["records"]
    assert _nothing_written()


def test_an_unknown_top_level_field_gets_400_naming_it(client, ingest_key):
    response = _post(client, ingest_key, {"records": [record()], "dry_run": True})
    assert response.status_code == 400
    assert "dry_run" in response.json()["fields"]
    assert _nothing_written()


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"", b"   ", b'{"records": [', b"\xff\xfe{}", b"[1, 2]", b'"records"',
     b'{"records": [{"user_id": "\\ud800", "mode": "patch", "latency_ms": 1, "tokens_used": 1, "success": true}]}',
     b"[" * 100_000],
    ids=["garbage", "empty", "blank", "truncated", "not-utf8", "array", "string", "lone-surrogate", "deep-nesting"],
)
def test_a_malformed_body_gets_400_never_500(client, ingest_key, body):
    client.raise_request_exception = False
    response = _post(client, ingest_key, body)
    assert response.status_code == 400
    assert response.json()["error"] in ("invalid_json", "validation_failed")
    assert _nothing_written()


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_latencies_that_pythons_json_parser_admits_are_rejected(client, ingest_key, literal):
    client.raise_request_exception = False
    body = ('{"records": [{"user_id": "u", "mode": "patch", "latency_ms": ' + literal
            + ', "tokens_used": 5, "success": true}]}')
    response = _post(client, ingest_key, body.encode())
    assert response.status_code == 400
    assert _nothing_written()


def test_a_body_over_the_size_limit_gets_413_and_nothing_is_written(client, ingest_key, settings):
    small = json.dumps({"records": [record()]}).encode()
    settings.API_MAX_BODY_BYTES = len(small)
    assert _post(client, ingest_key, small).status_code == 200  # exactly at the limit is fine
    big = json.dumps({"records": [record(user_id="x"), record(user_id="y")]}).encode()
    assert len(big) > settings.API_MAX_BODY_BYTES
    response = _post(client, ingest_key, big)
    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"
    assert ExecutionRecord.objects.count() == 1
    assert not ExecutionRecord.objects.filter(user_id__in=["x", "y"]).exists()


def test_a_retried_post_counts_nothing_twice(client, ingest_key):
    payload = {"records": [record(id=f"retry-{i}", user_id=f"u{i}", tokens_used=100 * (i + 1)) for i in range(4)]}
    first = _post(client, ingest_key, payload)
    second = _post(client, ingest_key, payload)
    assert first.json() == {"received": 4, "accepted": 4, "duplicates": 0}
    assert second.json() == {"received": 4, "accepted": 0, "duplicates": 4}
    assert ExecutionRecord.objects.count() == 4
    minute_calls = sum(Rollup.objects.filter(resolution=Rollup.MINUTE).values_list("calls", flat=True))
    minute_tokens = sum(Rollup.objects.filter(resolution=Rollup.MINUTE).values_list("tokens_sum", flat=True))
    assert (minute_calls, minute_tokens) == (4, sum(r["tokens_used"] for r in payload["records"]))


def test_posting_without_a_key_gets_401(client, db):
    response = _post(client, None, {"records": [record()]})
    assert response.status_code == 401
    assert response.json()["error"] == "unauthenticated"
    assert "Bearer" in response["WWW-Authenticate"]
    assert _nothing_written()


def test_posting_with_an_unknown_key_gets_401(client, ingest_key):
    response = _post(client, ingest_key + "x", {"records": [record()]})
    assert response.status_code == 401
    assert _nothing_written()


@pytest.mark.parametrize("scopes", ["evaluate", "manage"])
def test_posting_with_a_key_without_the_ingest_scope_gets_403(client, make_key, scopes):
    response = _post(client, make_key("other", scopes), {"records": [record()]})
    assert response.status_code == 403
    assert response.json()["error"] == "forbidden"
    assert "ingest" in response.json()["message"]
    assert _nothing_written()


def test_get_on_executions_gets_405(client, ingest_key):
    response = client.get(EXECUTIONS, HTTP_AUTHORIZATION=f"Bearer {ingest_key}")
    assert response.status_code == 405
    assert "POST" in response["Allow"]


def test_a_patch_count_beyond_32_bits_is_stored_or_refused_never_a_500(client, ingest_key):
    client.raise_request_exception = False
    response = _post(client, ingest_key, {"records": [record(patch_count=2**31, failed_patches=0)]})
    assert response.status_code in (200, 400)
    if response.status_code == 200:
        assert ExecutionRecord.objects.get().patch_count == 2**31
    else:
        assert "records[0].patch_count" in response.json()["fields"]


# --- GET /api/v1/flags/{key}/metrics -----------------------------------------------------------------------

STAT_KEYS = {"total_calls", "successful_calls", "failed_calls", "total_patches", "failed_patches", "error_rate",
             "success_rate", "avg_latency_ms", "p50_latency_ms", "p95_latency_ms", "p99_latency_ms", "total_tokens",
             "avg_tokens_per_call", "unique_users"}


def _seed_traffic(client, ingest_key) -> list[dict]:
    now = timezone.now()
    records = [record(user_id=f"p{i}", mode="patch", tokens_used=800, success=i != 0, patch_count=2,
                      occurred_at=at(now - timedelta(minutes=i))) for i in range(4)]
    records += [record(user_id=f"s{i}", mode="single", tokens_used=1000, occurred_at=at(now - timedelta(minutes=i)))
                for i in range(2)]
    records.append(record(user_id="stale", mode="patch", occurred_at=at(now - timedelta(hours=3))))
    assert _post(client, ingest_key, {"records": records}).status_code == 200
    return records


def test_metrics_json_has_the_summary_per_mode_and_the_success_criteria(client, flag, ingest_key, manage_key):
    _seed_traffic(client, ingest_key)
    response = _metrics(client, manage_key, window="15m")
    assert response.status_code == 200
    data = response.json()
    assert data["window"] == "15m"
    assert data["flag"] == flag.key
    assert (data["treatment_mode"], data["baseline_mode"]) == (flag.treatment_mode, flag.baseline_mode)
    assert set(data["modes"]) == {"patch", "single"}
    for stats in data["modes"].values():
        assert set(stats) == STAT_KEYS
        for name in ("error_rate", "success_rate"):
            assert isinstance(stats[name], (int, float)) and not isinstance(stats[name], bool)
    patch, single = data["modes"]["patch"], data["modes"]["single"]
    assert (patch["total_calls"], patch["failed_calls"], patch["total_patches"]) == (4, 1, 8)
    assert patch["error_rate"] == round(1 / 4 * 100, 2)
    assert single["total_calls"] == 2
    assert data["token_savings_percent"] == pytest.approx((1000 - 800) / 1000 * 100)
    assert "series" not in data
    assert [c["status"] for c in data["success_criteria"]] == [
        "not met",  # 25% errors
        "met",  # identical latencies
        "met" if (1000 - 800) / 1000 * 100 > 20 else "not met",
        "not met",
    ]
    for criterion in data["success_criteria"]:
        assert set(criterion) == {"name", "value", "unit", "status"}
    _start, end = selectors.window_bounds("15m")
    assert datetime.fromisoformat(data["to"]) - datetime.fromisoformat(data["from"]) == \
        selectors.WINDOWS["15m"]
    assert abs(datetime.fromisoformat(data["to"]) - end) <= timedelta(minutes=1)


def test_metrics_window_decides_which_records_count(client, flag, ingest_key, manage_key):
    records = _seed_traffic(client, ingest_key)
    patch_records = [r for r in records if r["mode"] == "patch"]
    assert _metrics(client, manage_key, window="15m").json()["modes"]["patch"]["total_calls"] == \
        len(patch_records) - 1
    assert _metrics(client, manage_key, window="24h").json()["modes"]["patch"]["total_calls"] == len(patch_records)


def test_metrics_default_to_the_1h_window(client, flag, manage_key):
    data = _metrics(client, manage_key).json()
    assert data["window"] == selectors.DEFAULT_WINDOW == "1h"
    assert data["modes"]["patch"]["error_rate"] is None
    assert data["modes"]["patch"]["unique_users"] == 0


@pytest.mark.parametrize("window", ["2h", "1d", "", "15M"])
def test_an_invalid_window_gets_400_naming_window(client, flag, manage_key, window):
    response = _metrics(client, manage_key, window=window)
    if window == "":
        # an empty parameter means the default
        assert response.status_code == 200
        return
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "validation_failed"
    assert list(body["fields"]) == ["window"]
    for valid in selectors.WINDOWS:
        assert valid in body["fields"]["window"][0]


def test_metrics_of_an_unknown_flag_get_404(client, manage_key):
    response = _metrics(client, manage_key, key="no_such_flag")
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


@pytest.mark.parametrize("scopes", ["ingest", "evaluate"])
def test_metrics_need_the_manage_scope(client, flag, make_key, scopes):
    assert _metrics(client, make_key("other", scopes)).status_code == 403


def test_metrics_without_a_key_get_401(client, flag):
    assert client.get("/api/v1/flags/patch_mode_enabled/metrics").status_code == 401


@pytest.mark.parametrize("flag_value", ["1", "true"])
def test_series_1_adds_the_series_for_the_window(client, flag, ingest_key, manage_key, flag_value):
    _seed_traffic(client, ingest_key)
    data = _metrics(client, manage_key, window="15m", series=flag_value).json()
    series = data["series"]
    assert len(series["labels"]) == selectors.WINDOWS["15m"] // timedelta(minutes=1)
    assert set(series["modes"]) == {"patch", "single"}
    assert sum(series["modes"]["patch"]["calls"]) == data["modes"]["patch"]["total_calls"]
    assert sum(series["modes"]["single"]["calls"]) == data["modes"]["single"]["total_calls"]
    assert len(series["token_savings"]) == len(series["labels"])


def test_series_0_leaves_the_series_out(client, flag, manage_key):
    assert "series" not in _metrics(client, manage_key, series="0").json()
