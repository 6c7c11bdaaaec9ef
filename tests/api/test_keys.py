"""API keys: created with a secret shown once and stored as a SHA-256 hash; the CLI commands; the admin."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from io import StringIO

import pytest
from django.contrib.messages.storage.cookie import CookieStorage
from django.contrib.sessions.models import Session
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone

from api.keys import SECRET_PREFIX, api_key_create, api_key_revoke, hash_secret
from api.models import ApiKey

pytestmark = pytest.mark.django_db

FLAG = "patch_mode_enabled"
OFREP = f"/ofrep/v1/evaluate/flags/{FLAG}"
SECRET_RE = re.compile(re.escape(SECRET_PREFIX) + r"[A-Za-z0-9_-]+")


@pytest.fixture(autouse=True)
def keep_the_test_transaction(monkeypatch):
    # The snapshot calls close_old_connections() before it reloads, as a long-running server process must.
    # Inside a test's transaction (autocommit off) Django would take that as a reason to close the very
    # connection holding the transaction, so the tests keep it.
    monkeypatch.setattr("api.snapshot.close_old_connections", lambda: None)


def evaluate(client, secret: str):
    return client.post(OFREP, {"context": {"targetingKey": "user_1"}}, content_type="application/json",
                       HTTP_AUTHORIZATION=f"Bearer {secret}")


def every_stored_value() -> list[str]:
    """Every column of every row of the API key table, read with plain SQL (no model field is skipped)."""
    table = connection.ops.quote_name(ApiKey._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT * FROM {table}")  # noqa: S608 - a quoted table name, no input
        return [str(value) for row in cursor.fetchall() for value in row]


def token_bytes(secret: str) -> bytes:
    token = secret.removeprefix(SECRET_PREFIX)
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


# --- api_key_create / api_key_revoke -----------------------------------------------------------------------


def test_create_stores_only_the_sha256_of_the_secret(db):
    key, secret = api_key_create(name="billing", scopes="evaluate", created_by="test")
    key.refresh_from_db()
    assert key.secret_hash == hashlib.sha256(secret.encode()).hexdigest() == hash_secret(secret)
    token = secret.removeprefix(SECRET_PREFIX)
    for value in every_stored_value():
        assert secret not in value and token not in value


def test_secret_has_at_least_32_random_bytes_after_the_prefix(db):
    secrets = [api_key_create(name=f"svc-{i}", scopes="evaluate")[1] for i in range(5)]
    for secret in secrets:
        assert secret.startswith(SECRET_PREFIX)
        assert SECRET_RE.fullmatch(secret)
        assert len(token_bytes(secret)) >= 32
    assert len(set(secrets)) == 5
    assert len({token_bytes(s)[:8] for s in secrets}) == 5  # no shared leading bytes: not a counter


def test_prefix_is_the_visible_start_of_the_secret(db):
    key, secret = api_key_create(name="billing", scopes="evaluate")
    assert len(key.prefix) >= len(SECRET_PREFIX) + 4
    assert secret.startswith(key.prefix) and key.prefix != secret
    assert key.prefix in str(key)
    assert ApiKey.objects.get(name="billing").prefix == key.prefix


def test_scopes_are_parsed_and_normalised(db):
    key, _ = api_key_create(name="multi", scopes=" manage , evaluate,evaluate ")
    assert ApiKey.objects.get(pk=key.pk).scopes == ["evaluate", "manage"]
    key, _ = api_key_create(name="listed", scopes=["ingest", "evaluate"])
    assert ApiKey.objects.get(pk=key.pk).scopes == ["evaluate", "ingest"]


def test_duplicate_name_is_a_validation_error_and_keeps_one_key(db):
    api_key_create(name="billing", scopes="evaluate")
    with pytest.raises(ValidationError) as error:
        api_key_create(name="billing", scopes="manage")
    assert "name" in error.value.message_dict
    assert ApiKey.objects.filter(name="billing").count() == 1
    assert ApiKey.objects.get(name="billing").scopes == ["evaluate"]


@pytest.mark.parametrize("scopes", ["", " , ", "admin", "evaluate,admin", "EVALUATE", [], ["manage", "root"]])
def test_bad_scopes_are_a_validation_error_and_create_nothing(db, scopes):
    with pytest.raises(ValidationError) as error:
        api_key_create(name="billing", scopes=scopes)
    assert "scopes" in error.value.message_dict
    assert not ApiKey.objects.exists()


@pytest.mark.parametrize("name", ["", " billing", "bill ing", "-billing", "x" * 101, "billing/v2", None, 7])
def test_bad_names_are_a_validation_error(db, name):
    with pytest.raises(ValidationError) as error:
        api_key_create(name=name, scopes="evaluate")
    assert "name" in error.value.message_dict
    assert not ApiKey.objects.exists()


def test_revoke_sets_revoked_at_once(db):
    key, _ = api_key_create(name="billing", scopes="evaluate")
    revoked = api_key_revoke(key=key)
    assert revoked.revoked_at is not None and not revoked.is_active
    again = api_key_revoke(key=key)
    assert again.revoked_at == revoked.revoked_at


def test_last_used_at_is_set_by_an_authenticated_request(client, flag):
    key, secret = api_key_create(name="svc", scopes="evaluate")
    assert ApiKey.objects.get(pk=key.pk).last_used_at is None
    start = timezone.now()
    assert evaluate(client, secret).status_code == 200
    used = ApiKey.objects.get(pk=key.pk).last_used_at
    assert used is not None and start <= used <= timezone.now()


def test_last_used_at_is_not_set_by_a_request_the_key_may_not_make(client, flag):
    key, secret = api_key_create(name="collector", scopes="ingest")
    assert evaluate(client, secret).status_code == 403
    assert ApiKey.objects.get(pk=key.pk).last_used_at is None


# --- manage.py create_api_key / revoke_api_key ---------------------------------------------------------------


def run(*args, **options) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command(*args, stdout=out, stderr=err, **options)
    return out.getvalue(), err.getvalue()


def test_create_api_key_prints_the_secret_alone_on_stdout(db):
    out, err = run("create_api_key", "billing", scopes="evaluate,ingest")
    lines = out.splitlines()
    assert len(lines) == 1
    secret = lines[0].strip()
    key = ApiKey.objects.get(name="billing")
    assert hash_secret(secret) == key.secret_hash
    assert key.scopes == ["evaluate", "ingest"]
    assert secret not in err and "billing" in err
    assert key.created_by.startswith("cli:")


def test_create_api_key_secret_works_for_the_api(client, flag):
    out, _ = run("create_api_key", "svc", scopes="evaluate")
    assert evaluate(client, out.strip()).status_code == 200


@pytest.mark.parametrize("scopes", ["admin", "evaluate,root", ""])
def test_create_api_key_with_a_bad_scope_is_a_command_error(db, scopes):
    with pytest.raises(CommandError, match="scopes"):
        run("create_api_key", "billing", scopes=scopes)
    assert not ApiKey.objects.exists()


def test_create_api_key_with_a_taken_name_is_a_command_error(db):
    run("create_api_key", "billing", scopes="evaluate")
    with pytest.raises(CommandError, match="already exists"):
        run("create_api_key", "billing", scopes="manage")
    assert ApiKey.objects.get().scopes == ["evaluate"]


def test_create_api_key_needs_scopes(db):
    with pytest.raises(CommandError):
        run("create_api_key", "billing")
    assert not ApiKey.objects.exists()


def test_revoke_api_key_revokes_and_the_key_stops_working(client, flag, django_capture_on_commit_callbacks):
    key, secret = api_key_create(name="billing", scopes="evaluate")
    assert evaluate(client, secret).status_code == 200
    with django_capture_on_commit_callbacks(execute=True):
        out, _ = run("revoke_api_key", "billing")
    assert "billing" in out
    assert ApiKey.objects.get(pk=key.pk).revoked_at is not None
    assert evaluate(client, secret).status_code == 401


def test_revoke_api_key_of_an_unknown_name_is_a_command_error(db):
    api_key_create(name="billing", scopes="evaluate")
    with pytest.raises(CommandError, match="unknown"):
        run("revoke_api_key", "no-such-key")
    assert ApiKey.objects.get(name="billing").revoked_at is None


# --- the admin -------------------------------------------------------------------------------------------


def cookie_contents(response) -> list[str]:
    """Every cookie the response sets, raw and (for the messages cookie, which is compressed) decoded."""
    contents = []
    for name, morsel in response.cookies.items():
        contents.append(morsel.OutputString())
        if name == CookieStorage.cookie_name and morsel.value:
            decoded = CookieStorage(HttpRequest())._decode(morsel.value)
            assert decoded is not None, "a messages cookie that does not decode"
            contents.extend(str(message) for message in decoded)
    return contents


def every_session_value() -> list[str]:
    """Everything stored in every session, decoded (the database session backend)."""
    return [json.dumps(session.get_decoded(), default=str) for session in Session.objects.all()]


@pytest.mark.parametrize("button", [{}, {"_continue": "1"}, {"_addanother": "1"}])
def test_admin_add_shows_the_secret_in_the_response_only(admin_client, client, flag, button):
    response = admin_client.post(reverse("admin:api_apikey_add"),
                                 {"name": "from-admin", "scopes": ["evaluate"], **button})
    # The page itself, not a redirect: nothing has to carry the secret to a second request.
    assert response.status_code == 200
    body = response.content.decode()
    secrets_shown = SECRET_RE.findall(body)
    assert len(secrets_shown) == 1
    secret = secrets_shown[0]
    assert "Copy this secret now" in body and reverse("admin:api_apikey_changelist") in body
    key = ApiKey.objects.get(name="from-admin")
    assert key.secret_hash == hash_secret(secret)
    assert key.scopes == ["evaluate"]
    assert "no-store" in response["Cache-Control"]
    # Neither a cookie (the messages cookie included, decoded) nor any session holds it.
    assert not any(secret in value for value in cookie_contents(response))
    assert secret not in str(response.headers)
    assert not any(secret in value for value in every_session_value())
    assert secret not in json.dumps(dict(admin_client.session.items()), default=str)
    assert evaluate(client, secret).status_code == 200


def test_admin_secret_is_not_shown_again(admin_client):
    response = admin_client.post(reverse("admin:api_apikey_add"), {"name": "from-admin", "scopes": ["evaluate"]})
    secret = SECRET_RE.search(response.content.decode()).group(0)
    key = ApiKey.objects.get(name="from-admin")
    # A second request, as the "back" link makes: no pending message or anything else brings it back.
    for url in (reverse("admin:api_apikey_changelist"), reverse("admin:api_apikey_change", args=[key.pk]),
                reverse("admin:api_apikey_add"), reverse("admin:index")):
        page = admin_client.get(url)
        assert page.status_code == 200
        assert secret not in page.content.decode()
        assert not any(secret in value for value in cookie_contents(page))
    assert key.prefix in admin_client.get(reverse("admin:api_apikey_changelist")).content.decode()


@pytest.mark.parametrize("name", ["bill ing", "-billing", "billing/v2", "é"])
def test_admin_add_with_a_bad_name_shows_the_error_and_creates_nothing(admin_client, name):
    response = admin_client.post(reverse("admin:api_apikey_add"), {"name": name, "scopes": ["evaluate"]})
    assert response.status_code == 200  # the form again, with its error (it was a 500)
    assert "starting with a letter or digit" in " ".join(response.context["adminform"].form.errors["name"])
    assert not ApiKey.objects.exists()
    assert not SECRET_RE.search(response.content.decode())


def test_admin_add_with_a_taken_name_shows_the_error_and_creates_nothing(admin_client):
    api_key_create(name="taken", scopes="evaluate")
    response = admin_client.post(reverse("admin:api_apikey_add"), {"name": "taken", "scopes": ["manage"]})
    assert response.status_code == 200  # the form again, with its error
    assert response.context["adminform"].form.errors
    assert ApiKey.objects.count() == 1
    assert not SECRET_RE.search(response.content.decode())


def test_admin_add_without_scopes_creates_nothing(admin_client):
    response = admin_client.post(reverse("admin:api_apikey_add"), {"name": "no-scopes"})
    assert response.status_code == 200
    assert "scopes" in response.context["adminform"].form.errors
    assert not ApiKey.objects.exists()


def test_admin_revoke_action_revokes_and_the_key_stops_working(admin_client, client, flag,
                                                                django_capture_on_commit_callbacks):
    key, secret = api_key_create(name="billing", scopes="evaluate")
    other, other_secret = api_key_create(name="other", scopes="evaluate")
    assert evaluate(client, secret).status_code == 200
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(reverse("admin:api_apikey_changelist"),
                                     {"action": "revoke", "_selected_action": [key.pk]}, follow=True)
    assert response.status_code == 200
    assert ApiKey.objects.get(pk=key.pk).revoked_at is not None
    assert ApiKey.objects.get(pk=other.pk).revoked_at is None
    assert evaluate(client, secret).status_code == 401
    assert evaluate(client, other_secret).status_code == 200


def test_admin_never_shows_the_secret_hash_as_an_editable_field(admin_client):
    key, _ = api_key_create(name="billing", scopes="evaluate")
    page = admin_client.get(reverse("admin:api_apikey_change", args=[key.pk])).content.decode()
    assert key.secret_hash not in page
    assert key.prefix in page
