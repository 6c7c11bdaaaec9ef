"""The Celery app. Broker and schedule come from Django settings (CELERY_* names)."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "rolloutadmin.settings")

app = Celery("rolloutadmin")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
