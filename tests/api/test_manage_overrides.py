"""The management API's allow/deny lists: GET (pages, filter by kind), POST and DELETE of
/api/v1/flags/{key}/overrides, their audit entries and their validation."""

from __future__ import annotations

import pytest

from flags import services
from flags.models import AuditEntry, Flag, Source, UserOverride
from tests.api.manage import FLAG, KEY_NAME, OVERRIDES, Api, add, assert_400, state

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("keep_the_test_transaction")]


def test_post_overrides_reports_added_already_listed_duplicates_and_conflicts(api, flag, actor):
    add(actor, "carol", "allow")
    add(actor, "dave", "deny")
    before = state()
    response = api.post(OVERRIDES, {"kind": "allow", "user_ids": ["alice", "bob", "bob", "carol", "dave"],
                                    "note": "beta testers", "reason": "beta"})
    assert response.status_code == 200
    body = response.json()
    assert (body["added"], body["already_listed"], body["duplicates"]) == (2, 1, 1)
    assert body["conflicts"] == [{"user_id": "dave", "list": "deny"}]
    lists = dict(UserOverride.objects.filter(flag__key=FLAG).values_list("user_id", "kind"))
    assert lists == {"alice": "allow", "bob": "allow", "carol": "allow", "dave": "deny"}  # dave not moved
    assert body["version"] == Flag.objects.get(key=FLAG).version == before[0] + 1
    assert AuditEntry.objects.count() == before[3] + 1
    entry = AuditEntry.objects.latest("id")
    assert (entry.source, entry.actor, entry.actor_kind, entry.reason) == ("api", KEY_NAME, "api_key", "beta")
    assert sorted(entry.after["added"]) == ["alice", "bob"]
    alice = UserOverride.objects.get(flag__key=FLAG, user_id="alice")
    assert (alice.note, alice.added_by) == ("beta testers", KEY_NAME)


def test_post_overrides_that_change_nothing_write_no_audit_entry(api, flag, actor):
    add(actor, "carol", "allow")
    before = state()
    body = api.post(OVERRIDES, {"kind": "allow", "user_ids": ["carol"]}).json()
    assert (body["added"], body["already_listed"]) == (0, 1)
    assert state() == before


def test_posted_overrides_take_effect_in_evaluation(api, flag, actor, make_key, django_capture_on_commit_callbacks):
    services.flag_set_rollout(flag=FLAG, percentage=0, enabled=True, actor=actor, source=Source.CLI)
    evaluator = Api(api.client, make_key("svc", "evaluate"))
    url = f"/api/v1/flags/{FLAG}/evaluate"
    assert evaluator.get(url, {"user_id": "alice"}).json()["reason"] == "OUT_OF_ROLLOUT"
    with django_capture_on_commit_callbacks(execute=True):
        assert api.post(OVERRIDES, {"kind": "allow", "user_ids": ["alice"]}).status_code == 200
    assert evaluator.get(url, {"user_id": "alice"}).json()["reason"] == "ALLOW_LIST"


@pytest.mark.parametrize(("user_ids", "index"), [
    (["alice", 7], 1),
    ([None, "alice"], 0),
    (["alice", "bob", "x" * 256], 2),
    (["alice", "a\x00b"], 1),
    ([["alice"]], 0),
    (["alice", {"id": "bob"}, "carol"], 1),
])
def test_post_overrides_with_an_invalid_id_is_400_naming_its_index_and_writes_nothing(api, flag, user_ids, index):
    before = state()
    body = assert_400(api.post(OVERRIDES, {"kind": "allow", "user_ids": user_ids}), f"user_ids[{index}]")
    assert list(body["fields"]) == [f"user_ids[{index}]"]
    assert state() == before


@pytest.mark.parametrize(("payload", "field"), [
    ({"kind": "allow"}, "user_ids"),
    ({"kind": "allow", "user_ids": []}, "user_ids"),
    ({"kind": "allow", "user_ids": "alice,bob"}, "user_ids"),
    ({"user_ids": ["alice"]}, "kind"),
    ({"kind": "block", "user_ids": ["alice"]}, "kind"),
    ({"kind": ["allow"], "user_ids": ["alice"]}, "kind"),
    ({"kind": "allow", "user_ids": ["alice"], "note": 5}, "note"),
    ({"kind": "allow", "user_ids": ["alice"], "note": "n" * 501}, "note"),
    ({"kind": "allow", "user_ids": ["alice"], "reason": ["r"]}, "reason"),
    ({"kind": "allow", "user_ids": ["alice"], "users": ["bob"]}, "users"),
])
def test_post_overrides_with_bad_fields_is_400_naming_the_field_and_writes_nothing(api, flag, payload, field):
    before = state()
    assert_400(api.post(OVERRIDES, payload), field)
    assert state() == before


@pytest.mark.parametrize("field", ["note", "reason"])
def test_post_overrides_with_a_nul_in_free_text_is_400_and_writes_nothing(api, flag, field):
    before = state()
    assert_400(api.post(OVERRIDES, {"kind": "allow", "user_ids": ["alice"], field: "a\x00b"}), field)
    assert state() == before


@pytest.mark.parametrize("raw", [b'{"kind": "allow", "user_ids": ["\\udc80"]}',
                                 b'{"kind": "allow", "user_ids": ["\xed\xa0\x80"]}'])
def test_post_overrides_with_a_lone_surrogate_is_400_and_writes_nothing(api, flag, raw):
    before = state()
    response = api.post(OVERRIDES, raw)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_json"
    assert state() == before


def test_overrides_of_an_unknown_flag_are_404(api, flag):
    path = "/api/v1/flags/no_such_flag/overrides"
    before = AuditEntry.objects.count()
    assert api.get(path).status_code == 404
    assert api.post(path, {"kind": "allow", "user_ids": ["alice"]}).status_code == 404
    assert api.delete(path, {"user_ids": ["alice"]}).status_code == 404
    assert AuditEntry.objects.count() == before


def test_get_overrides_pages_newest_first_with_next_cursor(api, flag, actor):
    users = [f"user_{i}" for i in range(5)]
    for user in users:
        add(actor, user)
    seen, cursor, pages = [], None, 0
    while True:
        query = {"limit": 2} if cursor is None else {"limit": 2, "cursor": cursor}
        body = api.get(OVERRIDES, query).json()
        seen += [item["user_id"] for item in body["results"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == users[::-1]
    assert pages == 3
    assert api.get(OVERRIDES).json()["next_cursor"] is None


def test_get_overrides_filters_by_kind(api, flag, actor):
    for user in ("a1", "a2"):
        add(actor, user, "allow")
    for user in ("d1", "d2", "d3"):
        add(actor, user, "deny")
    deny = api.get(OVERRIDES, {"kind": "deny"}).json()["results"]
    assert [item["user_id"] for item in deny] == ["d3", "d2", "d1"]
    assert {item["kind"] for item in deny} == {"deny"}
    allow = api.get(OVERRIDES, {"kind": "allow"}).json()["results"]
    assert [item["user_id"] for item in allow] == ["a2", "a1"]
    assert len(api.get(OVERRIDES).json()["results"]) == 5


@pytest.mark.parametrize(("query", "field"), [({"kind": "block"}, "kind"), ({"limit": 0}, "limit"),
                                              ({"limit": 1001}, "limit"), ({"limit": "ten"}, "limit"),
                                              ({"limit": -1}, "limit"), ({"cursor": "abc"}, "cursor"),
                                              ({"cursor": -5}, "cursor")])
def test_get_overrides_with_bad_query_is_400_naming_it(api, flag, query, field):
    assert_400(api.get(OVERRIDES, query), field)


@pytest.mark.parametrize("name", ["limit", "cursor"])
def test_get_overrides_with_a_superscript_digit_page_parameter_is_400(api, flag, name):
    assert_400(api.get(OVERRIDES, {name: "²"}), name)


def test_delete_overrides_removes_and_reports_not_listed_with_one_audit_entry(api, flag, actor):
    for user in ("alice", "bob"):
        add(actor, user, "allow")
    add(actor, "dave", "deny")
    before = state()
    response = api.delete(OVERRIDES, {"kind": "allow", "user_ids": ["alice", "zed", "dave"], "reason": "done"})
    assert response.status_code == 200
    body = response.json()
    assert (body["removed"], body["not_listed"]) == (1, 1)
    assert body["conflicts"] == [{"user_id": "dave", "list": "deny"}]
    assert dict(UserOverride.objects.filter(flag__key=FLAG).values_list("user_id", "kind")) == {"bob": "allow",
                                                                                                 "dave": "deny"}
    assert body["version"] == Flag.objects.get(key=FLAG).version == before[0] + 1
    assert AuditEntry.objects.count() == before[3] + 1
    entry = AuditEntry.objects.latest("id")
    assert (entry.source, entry.actor, entry.actor_kind, entry.action) == ("api", KEY_NAME, "api_key",
                                                                             "overrides_bulk_remove")


def test_delete_overrides_without_kind_removes_from_either_list(api, flag, actor):
    add(actor, "alice", "allow")
    add(actor, "dave", "deny")
    body = api.delete(OVERRIDES, {"user_ids": ["alice", "dave"]}).json()
    assert (body["removed"], body["conflicts"]) == (2, [])
    assert not UserOverride.objects.filter(flag__key=FLAG).exists()


@pytest.mark.parametrize(("payload", "field"), [({"user_ids": ["alice", 3]}, "user_ids[1]"),
                                                ({"user_ids": []}, "user_ids"),
                                                ({"kind": "both", "user_ids": ["alice"]}, "kind"),
                                                ({"user_ids": ["alice"], "note": "n"}, "note")])
def test_delete_overrides_with_bad_input_is_400_and_removes_nothing(api, flag, actor, payload, field):
    add(actor, "alice", "allow")
    before = state()
    assert_400(api.delete(OVERRIDES, payload), field)
    assert state() == before
