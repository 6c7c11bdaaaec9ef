"""The config stamp: how every evaluating process learns, within a second, that something changed."""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Callable, Iterator

from django.core.cache import cache
from django.db import transaction
from django.db.models import F

from .models import ConfigStamp

logger = logging.getLogger(__name__)

STAMP_CACHE_KEY = "rolloutadmin:config-stamp"

# Called in this process after a change commits (the API's snapshot registers itself here, so that a
# process reads its own writes at once instead of at its next periodic check).
listeners: list[Callable[[int], None]] = []


# Set by suppressed(): changes made inside it are rolled back by their caller and announce nothing.
_suppressed: contextvars.ContextVar[bool] = contextvars.ContextVar("publish_suppressed", default=False)


@contextlib.contextmanager
def suppressed() -> Iterator[None]:
    """Announce no change made inside this block: for work that its caller rolls back (a backtest's
    shadow flag). Moving the stamp would also hold its row lock, and so every other change, until then."""
    token = _suppressed.set(True)
    try:
        yield
    finally:
        _suppressed.reset(token)


def publish_config_change() -> int:
    """Move the stamp on, inside the caller's transaction; copy it to the cache once committed."""
    if _suppressed.get():
        return stamp_from_db()
    if not ConfigStamp.objects.filter(pk=1).update(version=F("version") + 1):
        ConfigStamp.objects.get_or_create(pk=1, defaults={"version": 1})
    version = ConfigStamp.objects.values_list("version", flat=True).get(pk=1)
    transaction.on_commit(lambda: _committed(version))
    return version


def _committed(version: int) -> None:
    copy_stamp_to_cache(version)
    for listener in listeners:
        listener(version)


def copy_stamp_to_cache(version: int) -> None:
    try:
        cache.set(STAMP_CACHE_KEY, version, timeout=None)
    except Exception:
        logger.warning("could not copy config stamp %s to the cache; readers fall back to the database", version)


def stamp_from_db() -> int:
    return ConfigStamp.objects.values_list("version", flat=True).filter(pk=1).first() or 0
