"""Fixtures of the alert tests: the moments checks and plans are judged at, and notifications by email."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from django.utils import timezone

from tests.alerts import begin_stage, minute_ago


@pytest.fixture
def t():
    """A whole minute three hours back."""
    return minute_ago()


@pytest.fixture
def stage(flag, t):
    """The flag at 20% since `t`."""
    begin_stage(flag, t, 20)
    return t


@pytest.fixture
def emails(settings):
    """Notifications by email only, delivered at once (Celery eager) when on_commit callbacks run."""
    settings.ALERT_EMAILS = ["ops@example.com"]
    settings.ALERT_WEBHOOK_URL = ""
    settings.CELERY_TASK_ALWAYS_EAGER = True
    return settings


@pytest.fixture
def t0() -> datetime:
    """A whole minute after the flag's creation: plans start here."""
    return timezone.now().replace(second=0, microsecond=0) + timedelta(hours=1)
