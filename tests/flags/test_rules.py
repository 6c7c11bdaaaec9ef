"""flags.rules: what a user id and a flag key may be, at the edges, and that every edge asks it.

The rule is pure, so most cases need no database; the last section sends the same inputs through the model's
validator, the lean evaluation path (OFREP and the JSON API, through Django's test client) and ingestion, and
expects the same verdict from each.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from django.core.exceptions import ValidationError

from api import hot
from flags import rules, services
from flags.models import KEY_VALIDATOR, MODE_VALIDATOR, Flag, Source, UserOverride, validate_user_id
from flags.rules import (
    BLANK,
    HAS_NUL,
    KEY_MAX_LENGTH,
    LONE_SURROGATE,
    MODE_MAX_LENGTH,
    NOT_A_STRING,
    TOO_LONG,
    USER_ID_MAX_LENGTH,
    is_flag_key,
    is_mode,
    user_id_problem,
)
from monitoring import services as ingestion
from monitoring.models import ExecutionRecord, Rollup
from tests.monitoring import record

VALID_USER_IDS = [
    "user_42",
    "u",
    "u" * USER_ID_MAX_LENGTH,
    " padded ",  # kept as it is: only an id that is nothing but whitespace is blank
    "a b",
    "jürgen",
    "用户-7",
    "user_\U0001f680",  # outside the BMP: one character, however many bytes or UTF-16 units
    "\U0001f680" * USER_ID_MAX_LENGTH,  # the limit counts characters, not bytes
    "0",
]
INVALID_USER_IDS = [
    ("", BLANK),
    (" ", BLANK),
    ("   ", BLANK),
    ("\t\n\r\x0b\x0c", BLANK),
    ("\u3000\u00a0", BLANK),  # unicode whitespace is blank too
    (" " * (USER_ID_MAX_LENGTH + 1), BLANK),  # blank is the first thing said
    ("u" * (USER_ID_MAX_LENGTH + 1), TOO_LONG),
    ("\U0001f680" * (USER_ID_MAX_LENGTH + 1), TOO_LONG),
    ("a\x00b", HAS_NUL),
    ("\x00", HAS_NUL),  # NUL is no whitespace: not blank, but refused
    ("\x00" * (USER_ID_MAX_LENGTH + 1), TOO_LONG),
    ("user-\ud800", LONE_SURROGATE),
    ("\udc80", LONE_SURROGATE),
    ("jürgen\udcff", LONE_SURROGATE),  # what os.fsdecode makes of a stray byte on a command line
    (None, NOT_A_STRING),
    (42, NOT_A_STRING),
    (True, NOT_A_STRING),
    (b"user_42", NOT_A_STRING),
    (["user_42"], NOT_A_STRING),
    ({"id": "user_42"}, NOT_A_STRING),
]


# --- the rule itself ------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", VALID_USER_IDS)
def test_a_valid_user_id_has_no_problem(value):
    assert user_id_problem(value) is None


@pytest.mark.parametrize(("value", "problem"), INVALID_USER_IDS)
def test_an_invalid_user_id_gets_its_first_problem(value, problem):
    assert user_id_problem(value) == problem


def test_the_length_limit_is_255_characters_inclusive():
    assert USER_ID_MAX_LENGTH == 255
    assert user_id_problem("x" * 255) is None
    assert user_id_problem("x" * 256) == TOO_LONG


def test_every_problem_has_one_sentence_and_the_messages_name_the_limit():
    assert set(rules.USER_ID_SENTENCES) == {NOT_A_STRING, BLANK, TOO_LONG, HAS_NUL, LONE_SURROGATE}
    assert str(USER_ID_MAX_LENGTH) in TOO_LONG
    assert str(USER_ID_MAX_LENGTH) in rules.USER_ID_SENTENCES[TOO_LONG][0]


@pytest.mark.parametrize("value", ["patch_mode_enabled", "a", "0", "a-b_c9", "a" * KEY_MAX_LENGTH])
def test_a_slug_of_up_to_100_characters_is_a_flag_key(value):
    assert is_flag_key(value)
    KEY_VALIDATOR(value)


@pytest.mark.parametrize("value", ["", "-a", "_a", "Abc", "a b", "a.b", "a\n", "a\x00", "ключ",
                                   "a" * (KEY_MAX_LENGTH + 1), None, 7, ["a"]])
def test_anything_else_is_no_flag_key(value):
    assert not is_flag_key(value)


@pytest.mark.parametrize("value", ["", "-a", "Abc", "a b", "a\n", "ключ"])
def test_the_models_key_validator_refuses_what_the_rule_refuses(value):
    with pytest.raises(ValidationError):
        KEY_VALIDATOR(value)


def test_a_mode_is_a_slug_of_up_to_50_characters():
    assert is_mode("patch") and is_mode("a" * MODE_MAX_LENGTH)
    assert not is_mode("a" * (MODE_MAX_LENGTH + 1)) and not is_mode("Patch") and not is_mode(None)


def test_the_models_take_their_limits_and_patterns_from_the_rules():
    assert Flag._meta.get_field("key").max_length == KEY_MAX_LENGTH
    assert Flag._meta.get_field("treatment_mode").max_length == MODE_MAX_LENGTH
    assert UserOverride._meta.get_field("user_id").max_length == USER_ID_MAX_LENGTH
    assert validate_user_id in UserOverride._meta.get_field("user_id").validators
    assert ExecutionRecord._meta.get_field("user_id").max_length == USER_ID_MAX_LENGTH
    assert ExecutionRecord._meta.get_field("flag_key").max_length == KEY_MAX_LENGTH
    assert Rollup._meta.get_field("mode").max_length == MODE_MAX_LENGTH
    assert KEY_VALIDATOR.regex.pattern == MODE_VALIDATOR.regex.pattern == rules.SLUG_PATTERN


def test_the_rules_module_imports_no_django():
    source = Path(rules.__file__).read_text(encoding="utf-8")
    assert not re.search(r"^\s*(from|import) django", source, re.MULTILINE)


# --- every caller gives the same verdict ----------------------------------------------------------------

ALL_INPUTS = [(value, None) for value in VALID_USER_IDS] + INVALID_USER_IDS


def _ids(cases):
    return [repr(value)[:30] for value, _problem in cases]


@pytest.mark.parametrize(("value", "problem"), ALL_INPUTS, ids=_ids(ALL_INPUTS))
def test_the_model_validator_says_the_rules_sentence(value, problem):
    if problem is None:
        validate_user_id(value)
        return
    with pytest.raises(ValidationError) as caught:
        validate_user_id(value)
    message, code = rules.USER_ID_SENTENCES[problem]
    assert caught.value.messages == [message] and caught.value.code == code


@pytest.mark.parametrize(("value", "problem"), ALL_INPUTS, ids=_ids(ALL_INPUTS))
def test_ingestion_accepts_exactly_what_the_rule_accepts(value, problem):
    if problem is None:
        assert [clean.user_id for clean in ingestion.validate([record(user_id=value)])] == [value]
        return
    with pytest.raises(ingestion.BatchRejected) as caught:
        ingestion.validate([record(user_id=value)])
    assert [e.as_dict() for e in caught.value.errors] == [
        {"index": 0, "field": "user_id", "reason": "required: a non-blank string of at most 255 characters"}]


@pytest.mark.parametrize(("value", "problem"), ALL_INPUTS, ids=_ids(ALL_INPUTS))
def test_the_ofrep_targeting_key_check_accepts_exactly_what_the_rule_accepts(value, problem):
    user_id, code, _details = hot._targeting_key({"targetingKey": value})
    assert (user_id == value) if problem is None else (user_id is None)
    if problem is not None:  # no key at all (None) or a blank one is OFREP's "missing"
        assert code == ("TARGETING_KEY_MISSING" if problem == BLANK or value is None else "INVALID_CONTEXT")


# Through HTTP: JSON cannot carry bytes or a lone surrogate (such a body is refused first) and the query
# string cannot carry a non-string, so those cases stay with the direct checks above.
JSON_INPUTS = [(v, p) for v, p in ALL_INPUTS if p != LONE_SURROGATE and not isinstance(v, bytes)]
QUERY_INPUTS = [(v, p) for v, p in JSON_INPUTS if isinstance(v, str)]
FLAG = "patch_mode_enabled"


@pytest.fixture
def live_flag(db, flag, actor, monkeypatch):
    # As tests/api/test_evaluate_api.py: keep the test's connection when the snapshot reloads.
    monkeypatch.setattr("api.snapshot.close_old_connections", lambda: None)
    services.flag_set_rollout(flag=FLAG, percentage=50, enabled=True, actor=actor, source=Source.CLI)
    return FLAG


@pytest.fixture
def bearer(make_key) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {make_key('svc', 'evaluate')}"}


@pytest.mark.parametrize(("value", "problem"), JSON_INPUTS, ids=_ids(JSON_INPUTS))
def test_the_json_evaluation_api_says_the_rules_problem(client, live_flag, bearer, value, problem):
    response = client.post("/api/v1/evaluate", json.dumps({"user_ids": [value], "flags": [FLAG]}),
                           content_type="application/json", **bearer)
    if problem is None:
        assert response.status_code == 200
        assert [r["user_id"] for r in response.json()["results"]] == [value]
    else:
        assert response.status_code == 400
        assert response.json()["fields"] == {"user_ids[0]": [problem]}


@pytest.mark.parametrize(("value", "problem"), QUERY_INPUTS, ids=_ids(QUERY_INPUTS))
def test_evaluate_one_says_the_rules_problem(client, live_flag, bearer, value, problem):
    response = client.get(f"/api/v1/flags/{FLAG}/evaluate", {"user_id": value}, **bearer)
    if problem is None:
        assert response.status_code == 200 and response.json()["user_id"] == value
    else:
        assert response.status_code == 400 and response.json()["fields"] == {"user_id": [problem]}


@pytest.mark.parametrize(("value", "problem"), JSON_INPUTS, ids=_ids(JSON_INPUTS))
def test_ofrep_accepts_exactly_what_the_rule_accepts(client, live_flag, bearer, value, problem):
    response = client.post(f"/ofrep/v1/evaluate/flags/{FLAG}", json.dumps({"context": {"targetingKey": value}}),
                           content_type="application/json", **bearer)
    if problem is None:
        assert response.status_code == 200
    else:
        assert response.status_code == 400
        expected = "TARGETING_KEY_MISSING" if problem == BLANK or value is None else "INVALID_CONTEXT"
        assert response.json()["errorCode"] == expected
