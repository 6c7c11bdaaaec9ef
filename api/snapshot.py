"""The in-memory configuration snapshot every evaluating process answers from.

Evaluation must not query the database per request. Each process holds all flags, their lists and the
active API keys in memory, and at most every SNAPSHOT_CHECK_INTERVAL seconds (default 0.25) compares
the config stamp with its own: from the cache (Redis) when one is shared between processes, from the
database otherwise, or when Redis does not answer. A newer stamp reloads everything in three queries.
When neither answers, the process keeps serving its last snapshot and marks it stale.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field

from django.conf import settings
from django.core.cache import cache
from django.db import DatabaseError, close_old_connections, connection

from flags import publish, selectors
from flags.evaluation import FlagConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class KeyInfo:
    id: int
    name: str
    scopes: frozenset[str]
    secret_hash: str


@dataclass(frozen=True, slots=True)
class Snapshot:
    stamp: int
    flags: dict[str, FlagConfig]
    keys: dict[str, KeyInfo]  # SHA-256 of the secret -> active key
    loaded_at: float = field(default_factory=time.time)


class ConfigUnavailable(Exception):
    """No snapshot could ever be loaded: the database has not answered since this process started."""


def _load() -> Snapshot:
    from .models import ApiKey  # the app registry is ready by the time anything asks

    stamp = publish.stamp_from_db()
    flags = selectors.all_flag_configs()
    keys = {
        row["secret_hash"]: KeyInfo(row["id"], row["name"], frozenset(row["scopes"] or ()), row["secret_hash"])
        for row in ApiKey.objects.filter(revoked_at__isnull=True).values("id", "name", "scopes", "secret_hash")
    }
    return Snapshot(stamp=stamp, flags=flags, keys=keys)


def _refresh_connection() -> None:
    # Drop a connection past its age or broken, as Django does between requests. Never inside a
    # transaction: there Django would see autocommit off and close the caller's own connection.
    if not connection.in_atomic_block:
        close_old_connections()


def _forget_connection() -> None:
    # A failed query can leave the connection unusable; drop it so the next check reconnects.
    with contextlib.suppress(Exception):  # closing a broken connection may fail too
        connection.close()


class SnapshotStore:
    REDIS_RETRY_AFTER = 5.0  # after Redis fails, ask the database for this long before trying it again
    DB_SAFETY_CHECK = 5.0  # even with Redis answering, confirm against the database this often

    def __init__(self) -> None:
        self._snapshot: Snapshot | None = None
        self._lock = threading.Lock()
        self._next_check = 0.0
        self._next_db_check = 0.0
        self._redis_retry_at = 0.0
        self._dirty = False
        self.stale = False
        self._last_used_flush: dict[int, float] = {}

    def reset(self) -> None:
        with self._lock:
            self.__init__()  # type: ignore[misc]

    def mark_dirty(self, _stamp: int | None = None) -> None:
        """This process committed a change: reload on the next request (read your own writes)."""
        self._dirty = True
        self._next_check = 0.0

    def get(self) -> Snapshot:
        snap = self._snapshot
        now = time.monotonic()
        if snap is not None and now < self._next_check and not self._dirty:
            return snap
        # One thread checks; the others keep answering from the current snapshot meanwhile.
        if not self._lock.acquire(blocking=snap is None):
            return snap  # type: ignore[return-value]
        try:
            return self._check(time.monotonic())
        finally:
            self._lock.release()

    def _check(self, now: float) -> Snapshot:
        snap = self._snapshot
        if snap is not None and now < self._next_check and not self._dirty:
            return snap  # another thread checked while this one waited
        self._next_check = now + float(getattr(settings, "SNAPSHOT_CHECK_INTERVAL", 0.25))
        force = self._dirty or snap is None
        self._dirty = False
        stamp = None if force else self._current_stamp(now)
        if stamp is None and not force:
            self.stale = True  # neither Redis nor the database could say whether we are current
            return snap  # type: ignore[return-value]
        if force or stamp > snap.stamp:  # type: ignore[operator, union-attr]
            try:
                _refresh_connection()
                fresh = _load()
            except DatabaseError as exc:
                _forget_connection()
                logger.warning("config reload failed (%s); serving the last snapshot", exc)
                if snap is None:
                    raise ConfigUnavailable(str(exc)) from exc
                self.stale = True
                return snap
            self._snapshot = snap = fresh
            self._next_db_check = now + self.DB_SAFETY_CHECK
        self.stale = False
        return snap  # type: ignore[return-value]

    def _current_stamp(self, now: float) -> int | None:
        cached: int | None = None
        shared_cache = bool(getattr(settings, "REDIS_URL", ""))
        if shared_cache and now >= self._redis_retry_at:
            try:
                cached = cache.get(publish.STAMP_CACHE_KEY)
            except Exception as exc:
                logger.warning("Redis did not answer the config stamp check (%s); using the database", exc)
                self._redis_retry_at = now + self.REDIS_RETRY_AFTER
                cached = None
            if cached is not None and now < self._next_db_check:
                return int(cached)
        try:
            _refresh_connection()
            from_db = publish.stamp_from_db()
        except DatabaseError as exc:
            _forget_connection()
            logger.warning("database did not answer the config stamp check (%s)", exc)
            return int(cached) if cached is not None else None
        self._next_db_check = now + self.DB_SAFETY_CHECK
        if shared_cache and now >= self._redis_retry_at and (cached is None or int(cached) < from_db):
            publish.copy_stamp_to_cache(from_db)
        return max(from_db, int(cached or 0))

    # --- API key last-used times, written at most once a minute per key and process ---

    def touch_key(self, key_id: int) -> None:
        now = time.monotonic()
        if now - self._last_used_flush.get(key_id, -1e9) < 60:
            return
        self._last_used_flush[key_id] = now
        from django.utils import timezone

        from .models import ApiKey

        try:
            ApiKey.objects.filter(pk=key_id).update(last_used_at=timezone.now())
        except DatabaseError:
            _forget_connection()


store = SnapshotStore()
publish.listeners.append(store.mark_dirty)
