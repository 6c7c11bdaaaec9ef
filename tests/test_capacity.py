"""Evaluations never wait behind the database (rolloutadmin/dbguard.py, api/snapshot.py serving mode).

In-process: the snapshot's background checks (a request never waits on a hung stamp check, and says stale
when the check takes too long), kept copies for a cold start, the database slots. Against real processes:
gunicorn with PostgreSQL behind a TCP proxy that freezes (a hung server: connections open, nothing
answered) or refuses.
"""

from __future__ import annotations

import gzip
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.http import HttpResponse
from django.test import RequestFactory

from api.snapshot import Snapshot, decode_copy, encode_copy, load_copy, save_copy, store
from flags import publish
from flags.evaluation import FlagConfig
from flags.models import Flag
from rolloutadmin import dbguard
from tests.monitoring import record

pytestmark = pytest.mark.django_db(transaction=True)

FLAG = "patch_mode_enabled"
OFREP = f"/ofrep/v1/evaluate/flags/{FLAG}"


def wait_for(predicate, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@pytest.fixture(autouse=True)
def no_copy_in_redis():
    """Redis outlives each test: a copy kept by an earlier test (of other data) must not be restored here."""
    from django.core.cache import cache

    from api.snapshot import COPY_CACHE_KEY

    cache.delete_many([COPY_CACHE_KEY, COPY_CACHE_KEY + ":stamp"])
    yield
    cache.delete_many([COPY_CACHE_KEY, COPY_CACHE_KEY + ":stamp"])


@pytest.fixture
def serving(settings):
    """This process's store in serving mode (background checks), as in a server; back to normal after."""
    settings.SNAPSHOT_BACKGROUND = True
    settings.SNAPSHOT_CHECK_INTERVAL = 0.05
    settings.SNAPSHOT_STALE_AFTER = 0.3
    store.reset()
    store.serve()
    yield store
    store.reset()


# --- the background check -------------------------------------------------------------------------------


def test_in_serving_mode_a_change_made_elsewhere_arrives_without_a_request_checking(serving, flag):
    first = serving.get()
    assert first.flags[FLAG].rollout_basis_points == 0
    # Another process's change: the rows and the stamp move, nothing tells this process directly.
    Flag.objects.filter(key=FLAG).update(rollout_percentage=40, version=2)
    publish.copy_stamp_to_cache(publish.publish_config_change())
    assert wait_for(lambda: serving.get().flags[FLAG].rollout_basis_points == 4000)
    assert serving.reloads >= 2 and not serving.stale


def test_a_hung_stamp_check_never_holds_a_request_and_turns_stale_then_current_again(serving, flag, monkeypatch):
    serving.get()
    release = threading.Event()
    entered = threading.Event()
    real = publish.stamp_from_db

    def hung() -> int:
        entered.set()
        release.wait(10)
        return real()

    monkeypatch.setattr(publish, "stamp_from_db", hung)
    monkeypatch.setattr("django.core.cache.cache.get", lambda *a, **k: None)  # Redis has no stamp: ask the DB
    serving._next_db_check = 0.0
    assert entered.wait(5), "the background thread should have started a stamp check"
    timings = []
    for _ in range(50):
        started = time.perf_counter()
        snap = serving.get()
        timings.append(time.perf_counter() - started)
        assert snap.flags[FLAG].key == FLAG
    assert max(timings) < 0.5  # each answered from memory while the check hangs (it hangs for 10 s)
    assert wait_for(lambda: serving.stale, 3), "a check hanging past SNAPSHOT_STALE_AFTER marks answers stale"
    release.set()
    assert wait_for(lambda: not serving.stale, 5)


def test_a_process_reads_its_own_writes_at_once_in_serving_mode(serving, flag, actor):
    from flags import services
    from flags.models import Source

    serving.get()
    services.flag_update(flag=FLAG, rollout_percentage=70, enabled=True, actor=actor, source=Source.CLI,
                         reason="test")
    assert serving.get().flags[FLAG].rollout_basis_points == 7000  # no wait: this process committed it


def test_api_key_last_use_is_written_by_the_background_thread(serving, make_key, client, flag):
    from api.models import ApiKey

    secret = make_key("svc", "evaluate")
    response = client.post(OFREP, {"context": {"targetingKey": "u1"}}, content_type="application/json",
                           HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert response.status_code == 200
    assert wait_for(lambda: ApiKey.objects.get(name="svc").last_used_at is not None, 5)


# --- copies for a cold start ----------------------------------------------------------------------------


def _snapshot(stamp: int, percentage: int = 25) -> Snapshot:
    from api.snapshot import KeyInfo

    flag = FlagConfig(key=FLAG, enabled=True, rollout_basis_points=percentage * 100, version=3,
                      allow=frozenset({"ann", "zoë"}), deny=frozenset({"bob"}))
    key = KeyInfo(7, "svc", frozenset({"evaluate"}), "ab" * 32)
    return Snapshot(stamp=stamp, flags={FLAG: flag}, keys={key.secret_hash: key}, loaded_at=1_700_000_000.5)


def test_a_copy_round_trips_exactly_and_is_json_not_pickle():
    original = _snapshot(12)
    data = encode_copy(original)
    assert json.loads(gzip.decompress(data))["stamp"] == 12  # plain JSON: nothing in it can run code
    copy = decode_copy(data)
    assert copy == original


def test_a_copy_of_an_unknown_format_is_refused():
    body = json.loads(gzip.decompress(encode_copy(_snapshot(1))))
    body["format"] = 99
    with pytest.raises(ValueError, match="format"):
        decode_copy(gzip.compress(json.dumps(body).encode()))


def test_save_keeps_the_newest_copy_and_load_prefers_the_newer_source(settings, tmp_path):
    settings.VAR_DIR = tmp_path
    save_copy(_snapshot(5, percentage=50))
    save_copy(_snapshot(4, percentage=10))  # older: must not replace the kept one
    assert load_copy().stamp == 5 and load_copy().flags[FLAG].rollout_basis_points == 5000
    (tmp_path / "snapshot" / "snapshot.json.gz").write_bytes(b"not gzip")  # a damaged disk copy
    kept = load_copy()
    if settings.REDIS_URL:
        assert kept is not None and kept.stamp == 5  # Redis still has it
    else:
        assert kept is None  # the only copy is unusable: nothing, not a crash


def test_a_worker_starting_in_an_outage_answers_from_the_kept_copy_marked_stale(settings, tmp_path, flag, client,
                                                                                 make_key, monkeypatch):
    from django.db import DatabaseError

    settings.VAR_DIR = tmp_path
    settings.SNAPSHOT_PERSIST = True
    secret = make_key("svc", "evaluate")
    store.reset()
    store.serve()  # background off here (conftest): loads and keeps a copy on request
    loaded = store.get()
    store.reset()

    def down():
        raise DatabaseError("connection refused")

    monkeypatch.setattr("api.snapshot._load", down)
    store.serve()
    answer = client.post(OFREP, {"context": {"targetingKey": "u1"}}, content_type="application/json",
                         HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert answer.status_code == 200, answer.content
    assert answer.json()["metadata"]["stale"] is True
    assert answer.json()["metadata"]["version"] == loaded.flags[FLAG].version


# --- database slots -------------------------------------------------------------------------------------


def test_slots_shed_database_requests_at_once_when_the_holders_are_stuck_and_never_evaluations(settings):
    settings.DB_REQUEST_SLOTS = 2
    settings.DB_SLOT_STUCK = 0.05
    settings.DB_SLOT_WAIT = 5
    release = threading.Event()
    served: list[str] = []

    def view(request):  # type: ignore[no-untyped-def]
        served.append(request.path)
        release.wait(10)
        return HttpResponse("ok")

    middleware = dbguard.DatabaseSlotsMiddleware(view)
    factory = RequestFactory()
    with ThreadPoolExecutor(2) as pool:
        holders = [pool.submit(middleware, factory.get("/api/v1/flags")) for _ in range(2)]
        assert wait_for(lambda: len(served) == 2, 5)
        time.sleep(0.1)  # the holders are now "stuck" (past DB_SLOT_STUCK)
        started = time.monotonic()
        shed = middleware(factory.get("/api/v1/audit"))
        waited = time.monotonic() - started
        assert shed.status_code == 503 and shed["Retry-After"].isdigit()
        assert json.loads(shed.content)["error"] == "unavailable"
        assert waited < 2.5  # at once, not after DB_SLOT_WAIT (5 s)
        page = middleware(factory.get("/flags/"))
        assert page.status_code == 503 and b"retrying" in page.content.lower()
        # Health checks and the evaluation endpoints never take a slot.
        release_later = threading.Timer(0.2, release.set)
        release_later.start()
        assert middleware(factory.get("/healthz")).status_code == 200
        assert middleware(factory.get("/metrics")).status_code == 200  # the scrape says database_up 0 itself
        assert middleware(factory.post(OFREP)).status_code == 200
        assert all(f.result().status_code == 200 for f in holders)
    assert served.count("/api/v1/audit") == 0 and {"/healthz", "/metrics", OFREP} <= set(served)


def test_a_persons_change_waits_for_a_slot_the_refreshes_hold_instead_of_being_shed(settings):
    """The kill switch pressed while the dashboard's own refreshes hold every slot (slowly: past
    DB_SLOT_STUCK) waits for one; the machine API's requests are shed at once as before."""
    settings.DB_REQUEST_SLOTS = 2
    settings.DB_SLOT_STUCK = 0.05
    settings.DB_SLOT_WAIT = 5
    settings.DB_SLOT_WAIT_CHANGE = 5
    release = threading.Event()

    def view(request):  # type: ignore[no-untyped-def]
        if request.method == "GET":
            release.wait(10)
        return HttpResponse("ok")

    middleware = dbguard.DatabaseSlotsMiddleware(view)
    factory = RequestFactory()
    with ThreadPoolExecutor(2) as pool:
        refreshes = [pool.submit(middleware, factory.get("/flags/f/?partial=metrics")) for _ in range(2)]
        assert wait_for(lambda: len(middleware.holders) == 2, 5)
        time.sleep(0.1)  # past DB_SLOT_STUCK
        assert middleware(factory.post("/api/v1/flags/f/overrides")).status_code == 503
        threading.Timer(0.3, release.set).start()
        started = time.monotonic()
        assert middleware(factory.post("/flags/f/enabled", {"enabled": "off"})).status_code == 200
        assert 0.2 < time.monotonic() - started < 4
        assert all(f.result().status_code == 200 for f in refreshes)


def test_a_persons_change_is_still_shed_after_its_own_bounded_wait(settings):
    settings.DB_REQUEST_SLOTS = 1
    settings.DB_SLOT_WAIT_CHANGE = 0.2
    release = threading.Event()

    def view(request):  # type: ignore[no-untyped-def]
        release.wait(10)
        return HttpResponse("ok")

    middleware = dbguard.DatabaseSlotsMiddleware(view)
    factory = RequestFactory()
    with ThreadPoolExecutor(1) as pool:
        holder = pool.submit(middleware, factory.get("/flags/"))
        assert wait_for(lambda: middleware.holders, 5)
        started = time.monotonic()
        assert middleware(factory.post("/flags/f/enabled", {"enabled": "off"})).status_code == 503
        assert time.monotonic() - started < 2
        release.set()
        assert holder.result().status_code == 200


def test_a_request_waits_briefly_for_a_slot_freed_by_a_quick_one(settings):
    settings.DB_REQUEST_SLOTS = 1
    settings.DB_SLOT_STUCK = 5
    settings.DB_SLOT_WAIT = 5
    release = threading.Event()

    def view(request):  # type: ignore[no-untyped-def]
        if request.path == "/first":
            release.wait(5)
        return HttpResponse("ok")

    middleware = dbguard.DatabaseSlotsMiddleware(view)
    factory = RequestFactory()
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(middleware, factory.get("/first"))
        assert wait_for(lambda: middleware.holders, 5)
        threading.Timer(0.1, release.set).start()
        assert middleware(factory.get("/second")).status_code == 200  # waited for the slot, was not shed
        assert first.result().status_code == 200


# --- real processes: PostgreSQL hung behind a proxy -------------------------------------------------------


def test_the_watchdog_ends_a_query_waiting_on_a_hung_server(proxied_postgres):
    import psycopg

    proxy, url = proxied_postgres
    raw = psycopg.connect(url, autocommit=True)

    class Wrapper:  # what cut_connection reads from Django's connection wrapper
        vendor = "postgresql"
        connection = raw

    raw.execute("select 1")
    proxy.freeze()
    outcome: list[BaseException | None] = []

    def query() -> None:
        try:
            raw.execute("select 1")
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=query, daemon=True)
    thread.start()
    thread.join(0.5)
    assert thread.is_alive(), "with the proxy frozen the query hangs"
    watchdog = dbguard.Watchdog()
    watchdog.watch(Wrapper(), 0.0)
    assert watchdog.sweep(time.monotonic() + 1) == 1
    thread.join(5)
    assert not thread.is_alive() and isinstance(outcome[0], psycopg.OperationalError)
    proxy.thaw()
    raw.close()


def test_with_postgres_hung_evaluations_keep_answering_while_database_requests_pile_up(servers, keys,
                                                                                       proxied_postgres):
    from monitoring.models import ExecutionRecord

    proxy, url = proxied_postgres
    # No Redis: the database is the only source of the stamp, so the hung checks show as stale.
    server = servers(DATABASE_URL=url, REDIS_URL="", DB_STATEMENT_TIMEOUT_MS="1500", DB_CONNECT_TIMEOUT="2")
    ofrep = {"context": {"targetingKey": "u1"}}
    assert server.request("POST", OFREP, ofrep, keys["evaluate"])[0] == 200
    assert server.request("GET", "/api/v1/flags", None, keys["manage"])[0] == 200
    before = ExecutionRecord.objects.count()
    proxy.freeze()

    def database_bound(i: int):  # type: ignore[no-untyped-def]
        if i % 2:
            return server.request("POST", "/api/v1/executions", {"records": [record(user_id=f"h{i}")]},
                                  keys["ingest"], timeout=30)
        return server.request("GET", "/api/v1/flags", None, keys["manage"], timeout=30)

    with ThreadPoolExecutor(20) as pool:
        piled = [pool.submit(database_bound, i) for i in range(20)]
        time.sleep(0.3)  # they are in: holding slots or being shed
        answers = [server.request("POST", OFREP, ofrep, keys["evaluate"], timeout=3) for _ in range(100)]
        results = [f.result() for f in piled]
    assert [a[0] for a in answers] == [200] * 100  # none waited behind the hung database
    assert {a[1]["value"] for a in answers} == {answers[0][1]["value"]}
    for status, body, headers in results:  # shed at once, or cut by the watchdog: a JSON 503 either way
        assert status == 503 and body["error"] == "unavailable" and headers["Retry-After"].isdigit(), body
    proxy.thaw()
    assert wait_for(lambda: server.request("GET", "/api/v1/flags", None, keys["manage"])[0] == 200, 15)
    assert ExecutionRecord.objects.count() == before  # nothing half-written during the hang
    log = server.log.read_text()
    assert "database slots full" in log and "connection cut" in log and "Traceback" not in log


def test_a_worker_starting_while_postgres_is_down_answers_from_the_kept_copy(servers, keys, proxied_postgres):
    proxy, url = proxied_postgres
    first = servers(var="var-a", DATABASE_URL=url, REDIS_URL="")
    fresh = first.request("POST", OFREP, {"context": {"targetingKey": "u1"}}, keys["evaluate"])
    assert fresh[0] == 200 and fresh[1]["metadata"]["stale"] is False
    assert wait_for(lambda: (first.var_dir / "snapshot" / "snapshot.json.gz").exists(), 5)
    first.stop()
    proxy.cut()
    # Same host (same var directory): the copy on disk. No Redis in this test, so that is the only source.
    second = servers(var="var-a", DATABASE_URL=url, REDIS_URL="", DB_CONNECT_TIMEOUT="1")
    for _ in range(6):  # whichever worker answers
        status, body, _ = second.request("POST", OFREP, {"context": {"targetingKey": "u1"}}, keys["evaluate"])
        assert status == 200 and body["metadata"]["stale"] is True and body["value"] == fresh[1]["value"]
    assert "answering from the kept snapshot" in second.log.read_text()
    # A host with no copy at all has nothing to answer from: a clear 503, not a wrong answer.
    third = servers(var="var-b", DATABASE_URL=url, REDIS_URL="", DB_CONNECT_TIMEOUT="1")
    status, body, headers = third.request("POST", OFREP, {"context": {"targetingKey": "u1"}}, keys["evaluate"])
    assert status == 503 and body["errorCode"] == "GENERAL" and headers["Retry-After"].isdigit()
    proxy.restore()
    assert wait_for(lambda: third.request("POST", OFREP, {"context": {"targetingKey": "u1"}},
                                          keys["evaluate"])[0] == 200, 15)
