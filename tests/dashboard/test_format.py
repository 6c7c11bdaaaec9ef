"""The dashboard's formats: times in UTC with seconds, durations in days and hours, thousands separators."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from dashboard.templatetags.rollout_format import minutes, thousands, utc


def test_a_moment_is_shown_in_utc_with_seconds_and_says_so():
    paris = timezone(timedelta(hours=1))
    assert utc(datetime(2026, 11, 27, 20, 5, 9, tzinfo=paris)) == "2026-11-27 19:05:09 UTC"
    assert utc(datetime(2026, 11, 27, 19, 5, 9, tzinfo=UTC)) == "2026-11-27 19:05:09 UTC"
    assert utc("2026-11-27T19:05:09+00:00") == "2026-11-27 19:05:09 UTC"
    assert utc(None) == ""


@pytest.mark.parametrize(("value", "text"), [
    (0, "0 min"), (45, "45 min"), (60, "1 h"), (61, "1 h 1 min"), (1440, "1 day"), (2160, "1 day 12 h"),
    (10080, "7 days"), (20160 + 90, "14 days 1 h 30 min"), (None, ""),
])
def test_durations_read_as_days_hours_and_minutes(value, text):
    assert minutes(value) == text


@pytest.mark.parametrize(("value", "text"), [
    (0, "0"), (999, "999"), (1000, "1,000"), (1234567, "1,234,567"), (Decimal("12345.50"), "12,345.50"),
    (-4200, "-4,200"), (None, ""),
])
def test_counts_have_thousands_separators(value, text):
    assert thousands(value) == text
