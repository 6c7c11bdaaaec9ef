"""The snapshot reloads only what changed (api/snapshot.py): flags whose (id, version) moved are read again with
their lists, the others are kept as the very same objects; gone flags are dropped, new ones added, API keys read
again. Transactional: changes commit and announce themselves as in production (the stamp, Redis when set)."""

from __future__ import annotations

import gc
import gzip
import json

import pytest
from django.db import transaction

from api import snapshot
from api.keys import api_key_create, api_key_revoke, hash_secret
from api.snapshot import SnapshotStore, decode_copy, encode_copy, load_copy, save_copy, store
from flags import selectors, services
from flags.models import Flag, Source
from flags.publish import publish_config_change

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def check_every_time(settings):
    settings.SNAPSHOT_CHECK_INTERVAL = 0  # every get() compares the stamp: no waiting for a periodic check


@pytest.fixture(autouse=True)
def no_copy_in_redis():
    """Redis outlives each test: a copy kept by another test (of other data) must not be restored here."""
    from django.core.cache import cache

    cache.delete_many([snapshot.COPY_CACHE_KEY, snapshot.COPY_CACHE_KEY + ":stamp"])
    yield
    cache.delete_many([snapshot.COPY_CACHE_KEY, snapshot.COPY_CACHE_KEY + ":stamp"])


@pytest.fixture
def three(make_flag, actor):
    """Three flags, each with lists; {key: Flag}."""
    flags = {key: make_flag(key, enabled=True, rollout_percentage=10) for key in ("alpha", "beta", "gamma")}
    for key in flags:
        services.overrides_import(flag=key, kind="allow", user_ids=[f"{key}-{i}" for i in range(50)], actor=actor,
                                  source=Source.CLI)
        services.override_add(flag=key, user_id="shared-user", kind="deny", actor=actor, source=Source.CLI)
    return flags


@pytest.fixture
def read(monkeypatch):
    """The flag ids each reload read again (None: all of them)."""
    calls: list[set[int] | None] = []
    original = selectors.flag_configs_by_id

    def spy(ids=None):  # type: ignore[no-untyped-def]
        calls.append(None if ids is None else set(ids))
        return original(ids)

    monkeypatch.setattr(selectors, "flag_configs_by_id", spy)
    return calls


def _same_content(snap: snapshot.Snapshot) -> None:
    """`snap` holds what a full load from the database holds now."""
    full = snapshot._load()
    assert snap.flags == full.flags
    assert snap.flag_ids == full.flag_ids
    assert snap.keys == full.keys
    assert list(snap.flags) == list(full.flags)  # the same order too (by key): bulk answers list them so


def test_a_change_to_one_flag_reads_only_that_flag_and_keeps_the_others_as_they_are(three, actor, read):
    before = store.get()
    assert read == [None]  # the first load reads everything
    services.flag_set_rollout(flag="beta", percentage=60, actor=actor, source=Source.CLI)
    after = store.get()
    assert read[1:] == [{three["beta"].pk}]
    assert after.flags["beta"].rollout_basis_points == 6000 and after.stamp > before.stamp
    assert after.flags["alpha"] is before.flags["alpha"] and after.flags["gamma"] is before.flags["gamma"]
    assert after.flags["alpha"].allow is before.flags["alpha"].allow
    _same_content(after)


def test_a_list_change_of_one_flag_is_seen_and_only_that_flag_is_read(three, actor, read):
    before = store.get()
    services.override_add(flag="gamma", user_id="newcomer", kind="allow", actor=actor, source=Source.CLI)
    services.override_remove(flag="gamma", user_id="gamma-3", actor=actor, source=Source.CLI)
    after = store.get()
    assert "newcomer" in after.flags["gamma"].allow and "gamma-3" not in after.flags["gamma"].allow
    assert read[1:] == [{three["gamma"].pk}]
    assert after.flags["alpha"] is before.flags["alpha"] and after.flags["beta"] is before.flags["beta"]
    services.overrides_bulk_remove(flag="gamma", user_ids=["gamma-4", "gamma-5"], actor=actor, source=Source.CLI)
    assert not {"gamma-4", "gamma-5"} & store.get().flags["gamma"].allow
    _same_content(store.get())


def test_a_new_flag_appears_and_a_deleted_flag_disappears(three, make_flag):
    before = store.get()
    make_flag("delta", enabled=True, rollout_percentage=100)
    with_new = store.get()
    assert with_new.flags["delta"].rollout_basis_points == 10_000
    assert with_new.flags["alpha"] is before.flags["alpha"]
    # Flags are not deleted through the app (their audit entries protect them): one without any, in SQL.
    doomed = Flag.objects.create(key="doomed", name="doomed", salt="doomed")
    with transaction.atomic():
        publish_config_change()
    assert "doomed" in store.get().flags
    with transaction.atomic():
        Flag.objects.filter(pk=doomed.pk).delete()
        publish_config_change()
    gone = store.get()
    assert "doomed" not in gone.flags and "doomed" not in gone.flag_ids
    assert gone.flags["delta"] is with_new.flags["delta"]
    _same_content(gone)


def test_a_flag_deleted_and_created_again_under_its_key_is_read_again(three, read):
    Flag.objects.create(key="phoenix", name="phoenix", salt="phoenix", rollout_percentage=20)
    with transaction.atomic():
        publish_config_change()
    first = store.get()
    with transaction.atomic():
        Flag.objects.filter(key="phoenix").delete()
        reborn = Flag.objects.create(key="phoenix", name="phoenix", salt="phoenix", rollout_percentage=70)
        publish_config_change()  # same key, same version (1): only the id tells them apart
    again = store.get()
    assert again.flags["phoenix"].rollout_basis_points == 7000 and again.flag_ids["phoenix"] == reborn.pk
    assert read[-1] == {reborn.pk}
    assert again.flags["alpha"] is first.flags["alpha"]


def test_api_key_changes_are_seen_without_reading_any_flag(three, read):
    before = store.get()
    key, secret = api_key_create(name="late-service", scopes="evaluate")
    created = store.get()
    assert hash_secret(secret) in created.keys
    api_key_revoke(key=key)
    revoked = store.get()
    assert hash_secret(secret) not in revoked.keys
    assert read == [None]  # only the first load read flags
    assert revoked.flags["beta"] is before.flags["beta"]


def test_a_process_that_missed_several_changes_catches_up_with_all_of_them(three, make_flag, actor, read):
    for index in range(4):  # unchanged flags: most of them, so that only the changed ones are asked for by id
        make_flag(f"steady-{index}")
    old_key, old_secret = api_key_create(name="retiring", scopes="evaluate")
    Flag.objects.create(key="doomed", name="doomed", salt="doomed")
    with transaction.atomic():
        publish_config_change()
    other = SnapshotStore()  # another process: nothing tells it of this one's changes but the stamp
    held = other.get()
    services.flag_set_rollout(flag="alpha", percentage=30, actor=actor, source=Source.CLI)
    services.flag_set_rollout(flag="alpha", percentage=40, actor=actor, source=Source.CLI)
    services.override_add(flag="beta", user_id="late-user", kind="allow", actor=actor, source=Source.CLI)
    make_flag("epsilon")
    with transaction.atomic():
        Flag.objects.filter(key="doomed").delete()
        publish_config_change()
    _key, secret = api_key_create(name="missed", scopes="evaluate")
    api_key_revoke(key=old_key)
    caught_up = other.get()
    assert caught_up.flags["alpha"].rollout_basis_points == 4000
    assert "late-user" in caught_up.flags["beta"].allow
    assert "epsilon" in caught_up.flags and "doomed" not in caught_up.flags
    assert hash_secret(secret) in caught_up.keys and hash_secret(old_secret) not in caught_up.keys
    assert caught_up.flags["gamma"] is held.flags["gamma"]
    assert read[-1] == {three["alpha"].pk, three["beta"].pk, Flag.objects.get(key="epsilon").pk}
    _same_content(caught_up)


def test_a_user_id_on_several_lists_is_one_string(three):
    snap = store.get()
    denied = [next(iter(snap.flags[key].deny)) for key in ("alpha", "beta", "gamma")]
    assert denied == ["shared-user"] * 3
    assert denied[0] is denied[1] is denied[2]


def test_a_copy_restored_at_start_is_brought_up_to_date_flag_by_flag(three, actor, settings, tmp_path,
                                                                      monkeypatch, read):
    from django.db import DatabaseError

    settings.VAR_DIR = tmp_path
    settings.SNAPSHOT_PERSIST = True
    store.serve()  # background off here (conftest): loads and keeps a copy on request
    store.get()
    store.reset()

    def down() -> snapshot.Snapshot:
        raise DatabaseError("connection refused")

    with monkeypatch.context() as outage:
        outage.setattr(snapshot, "_load", down)
        store.serve()
        restored = store.get()
    assert store.stale and restored.flag_ids == {key: flag.pk for key, flag in three.items()}
    services.flag_set_rollout(flag="alpha", percentage=80, actor=actor, source=Source.CLI)
    current = store.get()
    assert not store.stale
    assert current.flags["alpha"].rollout_basis_points == 8000
    assert current.flags["beta"] is restored.flags["beta"]
    assert read[-1] == {three["alpha"].pk}
    _same_content(current)


def test_a_copy_from_before_flag_ids_were_kept_is_read_again_in_full(three, settings, tmp_path, read):
    settings.VAR_DIR = tmp_path
    body = json.loads(gzip.decompress(encode_copy(store.get())))
    for flag in body["flags"]:
        del flag["id"]
    old = decode_copy(gzip.compress(json.dumps(body).encode()))
    assert old.flag_ids == {} and old.flags == store.get().flags
    caught_up = snapshot._load_changes(old).snapshot
    assert read[-1] is None  # every flag was unknown: one query for all of them
    _same_content(caught_up)


def test_a_copy_in_parts_round_trips_and_reuses_the_parts_of_unchanged_flags(three, actor, monkeypatch,
                                                                              settings, tmp_path):
    settings.VAR_DIR = tmp_path
    monkeypatch.setattr(snapshot, "COPY_PART_MIN_ENTRIES", 40)  # alpha, beta and gamma have 51 entries each
    parts: snapshot.CopyParts = {}
    first = store.get()
    assert decode_copy(encode_copy(first, parts)) == first
    assert {config.key for config, _data in parts.values()} == {"alpha", "beta", "gamma"}
    kept = {config.key: data for config, data in parts.values()}
    services.flag_set_rollout(flag="beta", percentage=90, actor=actor, source=Source.CLI)
    second = store.get()
    save_copy(second, parts)
    assert load_copy() == second
    now = {config.key: data for config, data in parts.values()}
    assert now["alpha"] is kept["alpha"] and now["gamma"] is kept["gamma"]  # compressed once, reused
    assert now["beta"] is not kept["beta"]
    assert all(config is second.flags[config.key] for config, _data in parts.values())  # no old config held


def test_the_heap_is_frozen_once_loads_brought_in_many_entries_since_the_last_freeze(three, actor, settings):
    frozen_before = gc.get_freeze_count()
    store.get()  # 153 entries: far below the default threshold
    assert gc.get_freeze_count() == frozen_before
    store.reset()
    settings.SNAPSHOT_GC_FREEZE_ENTRIES = 250
    try:
        store.get()  # 153 entries: not yet
        assert gc.get_freeze_count() == frozen_before
        services.overrides_import(flag="alpha", kind="allow", user_ids=[f"more-{i}" for i in range(60)],
                                  actor=actor, source=Source.CLI)
        store.get()  # alpha again, 111 entries: 264 since the last freeze
        assert gc.get_freeze_count() > frozen_before
    finally:
        gc.unfreeze()  # the test process's objects go back to the collector
