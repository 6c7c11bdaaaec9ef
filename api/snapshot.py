"""The in-memory configuration snapshot every evaluating process answers from.

Evaluation must not query the database per request. Each process holds all flags, their lists, their
targeting rules with the segments they name, and the active API keys in memory, and at most every
SNAPSHOT_CHECK_INTERVAL seconds (default 0.25) compares the config stamp with its own: from the cache (Redis)
when one is shared between processes, from the database otherwise, or when Redis does not answer. When
neither answers, the process keeps serving its last snapshot and marks it stale.

A newer stamp reloads only what changed. Every change of a flag, its lists and targeting rules included, moves
that flag's version (flags/services/), and so does a change of a segment its rules name, so the process reads
(id, key, version) of every flag, a thousand small rows, and reads again only the flags whose (id, version)
differ from the ones it holds, with their lists; flags gone are dropped, new ones added, and every unchanged
FlagConfig (with its frozensets, possibly of a million user ids) is kept as the same object. API keys, a few
rows, are read again in full. The first load of a process reads everything (`_load`). Measured here with 1,000
flags and 1 M list entries (bench/bench_snapshot.py): a full load takes about 1.4 s; a change to one small flag
costs a worker about 4 ms of CPU and reaches both workers within 0.3 s.

The reads are ordered so that a config is never older than the version it carries (the stamp first, then
the versions, then each changed flag's row, then its lists): a change committed in between moves the stamp
past the one recorded, and the next check reads that flag again.

Three things keep a big snapshot cheap to hold:
- A user id on several lists is one string (flags.selectors.flag_configs_by_id).
- Once loads brought in SNAPSHOT_GC_FREEZE_ENTRIES list entries or more (default 100,000) since the last
  freeze, the process collects garbage once and freezes what is left (gc.freeze()): the cyclic collector
  then never walks those big sets again. Each full collection used to touch every user id: 53 ms with 1 M
  entries, measured here, a pause for every request in flight (the OFREP p99 went from 15-20 ms to 55-65
  ms). Frozen objects are still freed by reference counting when a reload replaces them; what freezing
  costs is that a reference cycle alive at that moment (a request in flight) is never collected, a few
  kilobytes per freeze. Tests never load that many entries: they never freeze.
- The copy kept for a cold start (save_copy) is gzip members joined together: each flag with a big list is
  compressed once per version and reused, so a change re-encodes what changed, not a million ids.
"""

from __future__ import annotations

import contextlib
import gc
import gzip
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from django.conf import settings
from django.core.cache import cache
from django.db import DatabaseError, close_old_connections, connection

from flags import publish, selectors, targeting
from flags.evaluation import FlagConfig
from rolloutadmin import dbguard, metrics

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
    flag_ids: dict[str, int] = field(default_factory=dict)  # key -> the flag's id; empty in old copies


class ConfigUnavailable(Exception):
    """No snapshot could ever be loaded: the database has not answered since this process started."""


def _active_keys() -> dict[str, KeyInfo]:
    from .models import ApiKey  # the app registry is ready by the time anything asks

    return {
        row["secret_hash"]: KeyInfo(row["id"], row["name"], frozenset(row["scopes"] or ()), row["secret_hash"])
        for row in ApiKey.objects.filter(revoked_at__isnull=True).values("id", "name", "scopes", "secret_hash")
    }


def _load() -> Snapshot:
    """Everything: a process's first snapshot."""
    stamp = publish.stamp_from_db()  # before the rows: a change committed meanwhile moves it past this one
    by_id = selectors.flag_configs_by_id()
    return Snapshot(stamp=stamp, flags={config.key: config for config in by_id.values()}, keys=_active_keys(),
                    flag_ids={config.key: flag_id for flag_id, config in by_id.items()})


@dataclass(frozen=True, slots=True)
class Reload:
    snapshot: Snapshot
    flags_read: int  # flags whose rows and lists were read
    entries_read: int  # list entries read with them


def _load_changes(held: Snapshot) -> Reload:
    """`held` brought up to date: only the flags whose (id, version) moved are read again (module docstring)."""
    stamp = publish.stamp_from_db()
    current = selectors.flag_versions()
    changed = {flag_id for flag_id, key, version in current
               if held.flag_ids.get(key) != flag_id or held.flags[key].version != version}
    # Most of them (an old copy without ids): one plain query beats lists of ids.
    fresh = {} if not changed else selectors.flag_configs_by_id(None if len(changed) > len(current) // 2 else changed)
    flags: dict[str, FlagConfig] = {}
    flag_ids: dict[str, int] = {}
    for flag_id, key, _version in current:
        config = fresh.get(flag_id) if flag_id in changed else held.flags[key]
        if config is not None:  # None: deleted between the two reads
            flags[key], flag_ids[key] = config, flag_id
    snapshot = Snapshot(stamp=stamp, flags=flags, keys=_active_keys(), flag_ids=flag_ids)
    read = [config for flag_id, config in fresh.items() if flag_id in changed]
    return Reload(snapshot, len(read), sum(len(c.allow) + len(c.deny) for c in read))


def _freeze_big_heap(entries: int) -> bool:
    """Once `entries` list entries were loaded since the last freeze: collect once, then keep the cyclic
    collector off what is left (module docstring). Whether it froze."""
    threshold = int(getattr(settings, "SNAPSHOT_GC_FREEZE_ENTRIES", 100_000))
    if threshold <= 0 or entries < threshold:
        return False
    gc.collect()
    gc.freeze()
    return True


# --- copies kept for a cold start in an outage -------------------------------------------------------------
#
# A process that starts while the database is down has nothing to answer from. Every served process that
# loads a newer snapshot keeps a copy in Redis (for every node) and in the var directory (for this host), as
# gzipped JSON: never pickle, so that whoever can write to Redis cannot run code here. A copy holds what the
# database holds for evaluation: flags, lists and the SHA-256 hashes of the active API keys (never a secret).

COPY_CACHE_KEY = "rolloutadmin:snapshot-copy"
COPY_FORMAT = 1


def _copy_path() -> Path:
    return Path(settings.VAR_DIR) / "snapshot" / "snapshot.json.gz"


# A flag with at least this many list entries is a gzip member of its own, compressed once per version.
COPY_PART_MIN_ENTRIES = 1_000
_GZIP_COMMA = gzip.compress(b",", compresslevel=1)

# id(FlagConfig) -> (that config, its compressed JSON): the config is held so that its id is not reused.
CopyParts = dict[int, tuple[FlagConfig, bytes]]


def _flag_body(f: FlagConfig, flag_id: int | None) -> dict[str, object]:
    body: dict[str, object] = {"key": f.key, "enabled": f.enabled, "rollout_basis_points": f.rollout_basis_points,
                               "bucketing": f.bucketing, "salt": f.salt, "version": f.version,
                               "allow": sorted(f.allow), "deny": sorted(f.deny), "client_side": f.client_side}
    if flag_id is not None:
        body["id"] = flag_id
    if f.rules:
        body["rules"] = [targeting.rule_json(rule) for rule in f.rules]
    return body


def _segments_body(flags: Iterable[FlagConfig]) -> list[dict[str, object]]:
    """The segments the flags' rules name, once each (a copy's top level; rules name them by key)."""
    segments = {rule.segment.key: rule.segment for f in flags for rule in f.rules if rule.segment is not None}
    return [{"key": s.key, "conditions": [c.as_json() for c in s.conditions], "included": sorted(s.included),
             "excluded": sorted(s.excluded)} for s in segments.values()]


def _dumps(body: object) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def encode_copy(snap: Snapshot, parts: CopyParts | None = None) -> bytes:
    """`snap` as gzipped JSON. With `parts`, kept by the caller from one copy to the next, each flag with a big
    list is its own gzip member, compressed once per version: gzip readers join members, so the result is
    one JSON document, and a change costs what changed (module docstring)."""
    big = [] if parts is None else [f for f in snap.flags.values()
                                    if len(f.allow) + len(f.deny) >= COPY_PART_MIN_ENTRIES]
    big_keys = {f.key for f in big}
    keys = [{"id": k.id, "name": k.name, "scopes": sorted(k.scopes), "secret_hash": k.secret_hash}
            for k in snap.keys.values()]
    small = [_flag_body(f, snap.flag_ids.get(f.key)) for f in snap.flags.values() if f.key not in big_keys]
    body = {"format": COPY_FORMAT, "stamp": snap.stamp, "loaded_at": snap.loaded_at, "keys": keys,
            "segments": _segments_body(snap.flags.values()), "flags": small}
    text = _dumps(body)
    if parts is None:
        return gzip.compress(text, compresslevel=1)
    members = [gzip.compress(text[:-2], compresslevel=1)]  # open: the flags list is the last item
    kept: CopyParts = {}
    for index, f in enumerate(big):
        held = parts.get(id(f))
        data = held[1] if held is not None and held[0] is f else gzip.compress(
            _dumps(_flag_body(f, snap.flag_ids.get(f.key))), compresslevel=1)
        kept[id(f)] = (f, data)
        if small or index:
            members.append(_GZIP_COMMA)
        members.append(data)
    members.append(gzip.compress(b"]}", compresslevel=1))
    parts.clear()
    parts.update(kept)  # only the flags of this snapshot: replaced configs and their lists are let go
    return b"".join(members)


def decode_copy(data: bytes) -> Snapshot:
    body = json.loads(gzip.decompress(data))
    if body.get("format") != COPY_FORMAT:
        raise ValueError(f"unknown snapshot copy format {body.get('format')!r}")
    segments = {s["key"]: targeting.segment_from_json(s) for s in body.get("segments", [])}
    flags = {
        f["key"]: FlagConfig(key=f["key"], enabled=bool(f["enabled"]),
                             rollout_basis_points=int(f["rollout_basis_points"]), bucketing=f["bucketing"],
                             salt=f["salt"], version=int(f["version"]), allow=frozenset(f["allow"]),
                             deny=frozenset(f["deny"]), client_side=bool(f.get("client_side", False)),
                             rules=targeting.rules_from_json(f.get("rules", []), segments))
        for f in body["flags"]
    }
    keys = {k["secret_hash"]: KeyInfo(int(k["id"]), k["name"], frozenset(k["scopes"]), k["secret_hash"])
            for k in body["keys"]}
    flag_ids = {f["key"]: int(f["id"]) for f in body["flags"] if "id" in f}  # older copies have none
    return Snapshot(stamp=int(body["stamp"]), flags=flags, keys=keys, loaded_at=float(body["loaded_at"]),
                    flag_ids=flag_ids)


def save_copy(snap: Snapshot, parts: CopyParts | None = None) -> None:
    """Keep `snap` in Redis and on disk unless a copy of the same or a newer config is there already.
    `parts`: see encode_copy."""
    data: bytes | None = None
    if getattr(settings, "REDIS_URL", ""):
        try:
            kept = cache.get(COPY_CACHE_KEY + ":stamp")
            if kept is None or int(kept) < snap.stamp:
                data = encode_copy(snap, parts)
                cache.set_many({COPY_CACHE_KEY: data, COPY_CACHE_KEY + ":stamp": snap.stamp}, timeout=None)
        except Exception as exc:
            logger.warning("could not keep a copy of the snapshot in Redis (%s)", exc)
    path = _copy_path()
    try:
        stamp_file = path.with_suffix(".stamp")
        kept_text = stamp_file.read_text() if stamp_file.exists() else ""
        if not kept_text.strip().isdigit() or int(kept_text) < snap.stamp:
            path.parent.mkdir(parents=True, exist_ok=True)
            data = data or encode_copy(snap, parts)
            for target, content in ((path, data), (stamp_file, str(snap.stamp).encode())):
                with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as out:
                    out.write(content)
                os.replace(out.name, target)  # atomic: a reader sees the old copy or the new one
    except OSError as exc:
        logger.warning("could not keep a copy of the snapshot in %s (%s)", path.parent, exc)


def load_copy() -> Snapshot | None:
    """The newest readable copy: Redis's or this host's, whichever holds the later config; None if none."""
    found: list[Snapshot] = []
    sources: list[tuple[str, Callable[[], bytes | None]]] = [("disk", lambda: _copy_path().read_bytes()
                                                               if _copy_path().exists() else None)]
    if getattr(settings, "REDIS_URL", ""):
        sources.insert(0, ("Redis", lambda: cache.get(COPY_CACHE_KEY)))
    for name, read in sources:
        try:
            data = read()
            if data:
                found.append(decode_copy(data))
        except Exception as exc:  # unreadable or corrupt: try the other one
            logger.warning("the snapshot copy in %s is unusable (%s)", name, exc)
    return max(found, key=lambda snap: snap.stamp, default=None)


REFRESH_THREAD = "snapshot-refresh"


def _refresh_connection() -> None:
    # Drop a connection past its age or broken, as Django does between requests. Never inside a
    # transaction: there Django would see autocommit off and close the caller's own connection. Never in
    # the background thread either: it keeps one connection for good (dropped only after an error), where
    # closing it after every check (CONN_MAX_AGE 0 on SQLite) would open and close a connection four times
    # a second per process, and on SQLite each opening takes locks that a writer then finds busy.
    if not connection.in_atomic_block and threading.current_thread().name != REFRESH_THREAD:
        close_old_connections()


def _forget_connection() -> None:
    # A failed query can leave the connection unusable; drop it so the next check reconnects.
    with contextlib.suppress(Exception):  # closing a broken connection may fail too
        connection.close()


class SnapshotStore:
    """This process's snapshot, and how it keeps it current.

    Two ways to check for changes. On request (the default, and what the test suite uses): the request that
    finds the periodic check due makes it, while the process's other threads answer from the snapshot they
    have. In the background (`serve()`, called by rolloutadmin/wsgi.py in a server): a thread of this process
    makes every check, so that no request ever waits on Redis or the database; requests only wake it. Either
    way a process that committed a change itself reloads before its next answer (read your own writes), and
    a process with no snapshot at all loads one before answering.

    Served processes also keep the last snapshot they loaded in Redis and on local disk (save_copy below),
    so that a process starting while the database is down answers from it, marked stale.
    """

    REDIS_RETRY_AFTER = 5.0  # after Redis fails, ask the database for this long before trying it again
    DB_SAFETY_CHECK = 5.0  # even with Redis answering, confirm against the database this often
    STAMP_QUERY_LIMIT = 2.0  # a stamp check waits this long for the database, at most (rolloutadmin/dbguard.py)

    def __init__(self) -> None:
        self._snapshot: Snapshot | None = None
        self._lock = threading.Lock()
        self._next_check = 0.0
        self._next_db_check = 0.0
        self._redis_retry_at = 0.0
        self._dirty = False
        self._failed = False  # the last check could not confirm the snapshot, or it was restored from a copy
        self._check_started: float | None = None  # when the check in flight began (monotonic)
        self._last_used_flush: dict[int, float] = {}
        self._touches: dict[int, float] = {}  # key id -> wall time, waiting for the background thread
        self._copy_pending: Snapshot | None = None
        self._copy_parts: CopyParts = {}
        self._entries_unfrozen = 0  # list entries loaded since the last gc.freeze()
        self._background = False
        self._persist = False
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.confirmed_at = 0.0  # wall time of the last check that showed the snapshot current
        self.reloads = 0

    def reset(self) -> None:
        with self._lock:
            self._stop_thread()
            self.__init__()  # type: ignore[misc]

    # --- serving mode ---

    def serve(self) -> None:
        """Check in the background and keep copies, as settings say (SNAPSHOT_BACKGROUND, SNAPSHOT_PERSIST).
        Called once per server process; a forked child starts its own thread on its first request.
        SNAPSHOT_CHECK_INTERVAL=0 asks for a check before every answer: that stays on request."""
        interval = float(getattr(settings, "SNAPSHOT_CHECK_INTERVAL", 0.25))
        self._background = bool(getattr(settings, "SNAPSHOT_BACKGROUND", True)) and interval > 0
        self._persist = bool(getattr(settings, "SNAPSHOT_PERSIST", True))
        if self._background:
            self._ensure_thread()

    def _ensure_thread(self) -> None:
        thread = self._thread
        if thread is not None and thread.is_alive():
            return
        with _thread_start_lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._thread = threading.Thread(target=self._run, name=REFRESH_THREAD, daemon=True)
            self._thread.start()

    def _stop_thread(self) -> None:
        self._background = False
        self._wake.set()

    def _run(self) -> None:
        me = threading.current_thread()
        while self._background and self._thread is me:
            self._wake.wait(float(getattr(settings, "SNAPSHOT_CHECK_INTERVAL", 0.25)))
            self._wake.clear()
            if not self._background:
                break
            try:
                if self._due(time.monotonic()):
                    with self._lock:
                        self._check(time.monotonic())
                self._flush_touches()
                pending, self._copy_pending = self._copy_pending, None
                if pending is not None:
                    save_copy(pending, self._copy_parts)
            except Exception:  # the thread must outlive any single failure
                logger.exception("background snapshot check failed")
                _forget_connection()

    # --- reading ---

    @property
    def stale(self) -> bool:
        """Whether the snapshot may be out of date: the last check could not confirm it, or the check in
        flight has waited longer than SNAPSHOT_STALE_AFTER seconds for Redis or the database."""
        if self._failed:
            return True
        started = self._check_started
        return started is not None and time.monotonic() - started > float(
            getattr(settings, "SNAPSHOT_STALE_AFTER", 3.0))

    def mark_dirty(self, _stamp: int | None = None) -> None:
        """This process committed a change: reload on the next request (read your own writes)."""
        self._dirty = True
        self._next_check = 0.0

    def _due(self, now: float) -> bool:
        return self._dirty or self._snapshot is None or now >= self._next_check

    def get(self) -> Snapshot:
        snap = self._snapshot
        if snap is not None and not self._dirty:
            if self._background:
                if time.monotonic() >= self._next_check:
                    self._ensure_thread()  # a forked worker has none yet; a thread may have died
                    self._wake.set()
                return snap
            if time.monotonic() < self._next_check:
                return snap
        # One thread checks; the others keep answering from the current snapshot meanwhile. A process that
        # committed a change waits for the check in flight, then reloads: it reads its own writes.
        if not self._lock.acquire(blocking=snap is None or self._dirty):
            return snap  # type: ignore[return-value]
        try:
            return self._check(time.monotonic())
        finally:
            self._lock.release()

    def _check(self, now: float) -> Snapshot:
        snap = self._snapshot
        if snap is not None and not self._due(now):
            return snap  # another thread checked while this one waited
        self._next_check = now + float(getattr(settings, "SNAPSHOT_CHECK_INTERVAL", 0.25))
        force = self._dirty or snap is None
        self._dirty = False
        self._check_started = now
        try:
            return self._check_now(snap, force, now)
        finally:
            self._check_started = None

    def _check_now(self, snap: Snapshot | None, force: bool, now: float) -> Snapshot:
        stamp = None if force else self._current_stamp(now)
        if stamp is None and not force:
            self._failed = True  # neither Redis nor the database could say whether we are current
            metrics.snapshot_stale(True)
            return snap  # type: ignore[return-value]
        if force or stamp > snap.stamp:  # type: ignore[operator, union-attr]
            try:
                _refresh_connection()
                started, started_cpu = time.perf_counter(), time.thread_time()
                with dbguard.time_limit(dbguard.statement_limit()):
                    if snap is None:
                        fresh = _load()
                        read = len(fresh.flags)
                        entries = sum(len(f.allow) + len(f.deny) for f in fresh.flags.values())
                    else:
                        change = _load_changes(snap)
                        fresh, read, entries = change.snapshot, change.flags_read, change.entries_read
                took, took_cpu = time.perf_counter() - started, time.thread_time() - started_cpu
            except DatabaseError as exc:
                _forget_connection()
                logger.warning("config reload failed (%s); serving the last snapshot", exc)
                metrics.snapshot_reload("failed")
                if snap is None:
                    snap = self._restore()
                    if snap is None:
                        raise ConfigUnavailable(str(exc)) from exc
                self._failed = True
                metrics.snapshot_stale(True)
                return snap
            self._snapshot = snap = fresh
            self.reloads += 1
            metrics.snapshot_reload("ok")
            # The CPU time is what a reload costs the process's other threads (the GIL); the wall time also
            # counts the waits on the database and for the GIL. bench/bench_snapshot.py reads these lines.
            logger.debug("config snapshot: config version %s, %s of %s flag(s) read (%s list entries) in %.1f ms, "
                        "%.1f ms CPU", fresh.stamp, read, len(fresh.flags), entries, took * 1000, took_cpu * 1000)
            self._entries_unfrozen += entries
            if _freeze_big_heap(self._entries_unfrozen):
                self._entries_unfrozen = 0
            self._next_db_check = now + self.DB_SAFETY_CHECK
            if self._persist:
                if self._background:
                    self._copy_pending = fresh  # the background thread keeps it: no request waits on that
                    self._wake.set()
                else:
                    save_copy(fresh, self._copy_parts)
        self._failed = False
        self.confirmed_at = time.time()
        metrics.snapshot_confirmed(snap.stamp, self.confirmed_at)  # type: ignore[union-attr]
        return snap  # type: ignore[return-value]

    def _restore(self) -> Snapshot | None:
        """The newest copy another process kept (Redis, then this host's disk), or None."""
        if not self._persist:
            return None
        restored = load_copy()
        if restored is None:
            return None
        logger.warning("database unreachable at start: answering from the kept snapshot of config version %s "
                       "(saved %s), marked stale", restored.stamp, time.strftime(
                           "%Y-%m-%dT%H:%M:%SZ", time.gmtime(restored.loaded_at)))
        self._snapshot = restored
        metrics.snapshot_reload("restored")
        return restored

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
            with dbguard.time_limit(self.STAMP_QUERY_LIMIT):
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
        if self._background:  # the background thread writes it: a request never waits on the database
            self._touches[key_id] = time.time()
            self._wake.set()
            return
        _write_last_used({key_id: time.time()})

    def _flush_touches(self) -> None:
        if not self._touches:
            return
        pending, self._touches = self._touches, {}
        _write_last_used(pending)


def _write_last_used(times: dict[int, float]) -> None:
    from .models import ApiKey  # as in _load: the app registry is ready by the time anything asks

    try:
        _refresh_connection()
        with dbguard.time_limit(SnapshotStore.STAMP_QUERY_LIMIT):
            for key_id, when in times.items():
                ApiKey.objects.filter(pk=key_id).update(last_used_at=datetime.fromtimestamp(when, UTC))
    except DatabaseError:
        _forget_connection()


_thread_start_lock = threading.Lock()


store = SnapshotStore()
publish.listeners.append(store.mark_dirty)
