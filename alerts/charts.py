"""What the flag page's charts draw: the metric series of both modes, and (from the alerts app, which
builds on flags and monitoring) what explains them."""

from __future__ import annotations

from typing import Any

from flags.models import Flag
from monitoring import selectors as metrics


def chart_data(flag: Flag, window: str) -> dict[str, Any]:
    return {"series": metrics.series(flag, window), "treatment": flag.treatment_mode, "baseline": flag.baseline_mode}
