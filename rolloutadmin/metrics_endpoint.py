"""`GET /metrics`: Prometheus text format, for every process of this host (rolloutadmin/metrics.py).

Counters and histograms come from the processes that count them (the gunicorn workers, the Celery worker
and beat: whichever share PROMETHEUS_MULTIPROC_DIR). What the database holds is read at scrape time, under
a 2-second limit: open alerts by severity, notifications failed and pending. `rolloutadmin_database_up`
says whether that read worked; when it did not, the rest of the answer still comes, so that Prometheus can
alert on the outage instead of losing the scrape.

With METRICS_TOKEN set, the scraper must send `Authorization: Bearer <token>`; without it the endpoint is
open, so serve it on a private network only (deploy/README.md).
"""

from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Iterator
from typing import Any

from django.conf import settings
from django.db import DatabaseError
from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

from alerts.models import OPEN_STATES, Alert, Notification, NotificationStatus, Severity

from . import dbguard, metrics
from .metric_files import forget_gone_live_gauges

logger = logging.getLogger(__name__)

DATABASE_LIMIT = 2.0  # seconds for the scrape-time reads


class DatabaseCollector:
    """Scrape-time gauges read from the database."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("rolloutadmin_database_up", "1 when the scrape could read the database.")
        try:
            with dbguard.time_limit(DATABASE_LIMIT):
                open_alerts = dict(Alert.objects.filter(state__in=OPEN_STATES).values_list("severity")
                                   .annotate(n=Count("id")).order_by())
                notifications = dict(Notification.objects.filter(
                    status__in=[NotificationStatus.FAILED, NotificationStatus.PENDING]).values_list("status")
                                     .annotate(n=Count("id")).order_by())
        except DatabaseError as exc:
            logger.warning("metrics: the database did not answer (%s)", " ".join(str(exc).split())[:200])
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        alerts = GaugeMetricFamily("rolloutadmin_alerts_open", "Alerts firing or acknowledged, by severity.",
                                   labels=["severity"])
        for severity in Severity.values:
            alerts.add_metric([severity], open_alerts.get(severity, 0))
        yield alerts
        failed = GaugeMetricFamily("rolloutadmin_notifications_failed",
                                   "Notifications given up on (their error is on the alert's page).")
        failed.add_metric([], notifications.get(NotificationStatus.FAILED, 0))
        yield failed
        pending = GaugeMetricFamily("rolloutadmin_notifications_pending", "Notifications not sent yet.")
        pending.add_metric([], notifications.get(NotificationStatus.PENDING, 0))
        yield pending


def render() -> bytes:
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
    registry: Any
    if metrics.MULTIPROCESS and directory:
        forget_gone_live_gauges(directory)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, directory)
    else:
        registry = CollectorRegistry()
        registry.register(_Default())
    registry.register(DatabaseCollector())
    return generate_latest(registry)


class _Default:
    """This process's own values (no multiprocess directory)."""

    def collect(self) -> Iterator[Any]:
        yield from REGISTRY.collect()


def _authorised(request: HttpRequest) -> bool:
    token = str(getattr(settings, "METRICS_TOKEN", "") or "")
    if not token:
        return True
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


@csrf_exempt
def metrics_view(request: HttpRequest) -> HttpResponse:
    if request.method not in ("GET", "HEAD"):
        response = HttpResponse(b'{"error":"method_not_allowed","message":"use GET"}', status=405,
                                content_type="application/json")
        response["Allow"] = "GET, HEAD"
        return response
    if not _authorised(request):
        response = HttpResponse(b'{"error":"unauthorized","message":"send Authorization: Bearer <METRICS_TOKEN>"}',
                                status=401, content_type="application/json")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    response = HttpResponse(render(), content_type=CONTENT_TYPE_LATEST)
    response["Cache-Control"] = "no-store"
    return response
