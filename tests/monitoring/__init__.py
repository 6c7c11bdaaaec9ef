"""Tests of the monitoring app: histograms, ingestion, metrics, the API endpoints and the commands."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any


def record(**overrides: Any) -> dict[str, Any]:
    """A valid execution record as a sender would post it; keyword arguments replace or add fields."""
    base: dict[str, Any] = {"user_id": "user-1", "mode": "patch", "latency_ms": 150.0, "tokens_used": 800,
                            "success": True}
    base.update(overrides)
    return base


def at(moment: datetime) -> str:
    return moment.isoformat()


def exact_percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of the raw values: the smallest value with at least `fraction` of them at or below."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(fraction * len(ordered))) - 1]
