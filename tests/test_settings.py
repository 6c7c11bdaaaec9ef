"""Settings come from the environment and fail loudly when production needs something missing."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROBE = (
    "import django, json; from django.conf import settings; django.setup(); "
    "print(json.dumps({'debug': settings.DEBUG, 'key': settings.SECRET_KEY, 'db': settings.DATABASES['default']"
    "['ENGINE'], 'broker': settings.CELERY_BROKER_URL, 'cache': settings.CACHES['default']['BACKEND']}))"
)


def probe(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return run_python(tmp_path, ["-c", PROBE], **env)


# The process's own settings, and what the test session itself sets (the browser tests allow Django's
# synchronous ORM under Playwright's event loop): a deployment has none of them.
OWN_VARIABLES = {"DEBUG", "SECRET_KEY", "DATABASE_URL", "REDIS_URL", "ALLOWED_HOSTS", "HTTPS", "HSTS_PRELOAD",
                 "DJANGO_ALLOW_ASYNC_UNSAFE"}


def run_python(tmp_path: Path, args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in OWN_VARIABLES}
    clean.update({"ROLLOUTADMIN_VAR_DIR": str(tmp_path / "var"), "DJANGO_SETTINGS_MODULE": "rolloutadmin.settings"})
    clean.update(env)
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=clean, capture_output=True, text=True, timeout=60)


def test_secret_key_is_required_when_debug_is_off(tmp_path):
    result = probe(tmp_path, DEBUG="0")
    assert result.returncode != 0
    assert "SECRET_KEY is required when DEBUG is off" in result.stderr


def test_debug_generates_one_secret_key_into_var_and_keeps_it(tmp_path):
    first = probe(tmp_path, DEBUG="1")
    second = probe(tmp_path, DEBUG="1")
    assert first.returncode == 0, first.stderr
    key_file = tmp_path / "var" / "secret_key"
    assert key_file.exists() and oct(key_file.stat().st_mode & 0o777) == "0o600"
    assert '"key": "' + key_file.read_text().strip() + '"' in first.stdout
    assert first.stdout == second.stdout


def test_embedded_defaults_without_urls(tmp_path):
    result = probe(tmp_path, DEBUG="0", SECRET_KEY="s" * 50)
    assert result.returncode == 0, result.stderr
    assert '"db": "django.db.backends.sqlite3"' in result.stdout
    assert '"broker": "filesystem://"' in result.stdout
    assert "LocMemCache" in result.stdout
    assert (tmp_path / "var" / "celery" / "broker").is_dir()


def test_urls_switch_to_postgres_and_redis(tmp_path):
    result = probe(tmp_path, DEBUG="1", DATABASE_URL="postgres://u@127.0.0.1:5432/db",
                   REDIS_URL="redis://127.0.0.1:6379/3")
    assert result.returncode == 0, result.stderr
    assert "postgresql" in result.stdout and '"broker": "redis://127.0.0.1:6379/3"' in result.stdout
    assert "RedisCache" in result.stdout


def test_an_sqlite_database_url_gets_the_same_locking_options_as_the_embedded_default(tmp_path):
    # Without them a deferred transaction that reads, then writes after another process wrote, fails at
    # once with "database is locked" (seen with two gunicorn servers on one file).
    show = ("import django, json; from django.conf import settings; django.setup(); "
            "print(json.dumps(settings.DATABASES['default']['OPTIONS']))")
    embedded = run_python(tmp_path, ["-c", show], DEBUG="1")
    by_url = run_python(tmp_path, ["-c", show], DEBUG="1", DATABASE_URL=f"sqlite:///{tmp_path}/other.sqlite3")
    assert embedded.returncode == 0 and by_url.returncode == 0, (embedded.stderr, by_url.stderr)
    options = json.loads(by_url.stdout)
    assert options == json.loads(embedded.stdout)
    assert options["transaction_mode"] == "IMMEDIATE" and options["timeout"] >= 20
    assert "journal_mode=WAL" in options["init_command"]


@pytest.mark.parametrize("value", ["maybe", "2"])
def test_a_debug_value_that_is_not_a_boolean_is_an_error(tmp_path, value):
    result = probe(tmp_path, DEBUG=value)
    assert result.returncode != 0 and "DEBUG must be a boolean" in result.stderr


# --- TLS deployments (HTTPS=1) -------------------------------------------------------------------------------

# The production settings the README documents: DEBUG off, a long random SECRET_KEY, the site's host, HTTPS=1.
PRODUCTION = {"DEBUG": "0", "SECRET_KEY": secrets.token_urlsafe(50), "ALLOWED_HOSTS": "flags.example.com",
              "HTTPS": "1"}
DEPLOY_WARNINGS = ["security.W004", "security.W008", "security.W012", "security.W016"]


def check_deploy(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return run_python(tmp_path, ["manage.py", "check", "--deploy", "--fail-level", "WARNING"], **env)


def test_check_deploy_passes_with_the_documented_production_settings(tmp_path):
    result = check_deploy(tmp_path, **PRODUCTION)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout
    for warning in DEPLOY_WARNINGS:
        assert warning not in result.stdout + result.stderr


def test_check_deploy_without_https_reports_the_tls_warnings(tmp_path):
    result = check_deploy(tmp_path, **{**PRODUCTION, "HTTPS": "0"})
    assert result.returncode != 0
    for warning in DEPLOY_WARNINGS:
        assert warning in result.stderr


def test_check_deploy_still_fails_on_a_weak_secret_key(tmp_path):
    # HTTPS=1 silences nothing but the preload hint: a guessable key is still a failure.
    result = check_deploy(tmp_path, **{**PRODUCTION, "SECRET_KEY": "s" * 50})
    assert result.returncode != 0 and "security.W009" in result.stderr


# Requests made in a subprocess (settings are read once per process) with Django's test client, which
# sends plain http unless told otherwise; the proxy's header says whether the client used TLS.
REQUESTS = """
import json, django
django.setup()
from django.test import Client
out = {}
for path in ("/login/", "/healthz", "/readyz", "/readyz/"):
    for proto in ("http", "https"):
        r = Client().get(path, HTTP_HOST="flags.example.com", HTTP_X_FORWARDED_PROTO=proto)
        cookies = {name: {"secure": bool(m["secure"]), "httponly": bool(m["httponly"])}
                   for name, m in r.cookies.items()}
        out[proto + " " + path] = {"status": r.status_code, "location": r.get("Location"),
                                   "hsts": r.get("Strict-Transport-Security"), "cookies": cookies}
print(json.dumps(out))
"""


def requests_with(tmp_path: Path, **env: str) -> dict:
    result = run_python(tmp_path, ["-c", REQUESTS], **{"ALLOWED_HOSTS": "flags.example.com", **env})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_https_redirects_plain_http_and_sends_hsts_and_secure_cookies(tmp_path):
    seen = requests_with(tmp_path, **PRODUCTION)
    plain = seen["http /login/"]
    assert plain["status"] == 301 and plain["location"] == "https://flags.example.com/login/"
    assert plain["cookies"] == {}  # redirected before anything could set a cookie
    tls = seen["https /login/"]
    assert tls["status"] == 200
    assert tls["hsts"] == "max-age=31536000; includeSubDomains"  # a year, no preload
    assert tls["cookies"]["csrftoken"]["secure"] is True


def test_https_sets_secure_cookies_and_trusts_the_proxy_header_only_when_on(tmp_path):
    script = (
        "import django; django.setup(); from django.conf import settings; "
        "print(settings.SESSION_COOKIE_SECURE, settings.CSRF_COOKIE_SECURE, settings.SECURE_PROXY_SSL_HEADER, "
        "settings.SECURE_HSTS_PRELOAD)"
    )
    on = run_python(tmp_path, ["-c", script], **PRODUCTION)
    off = run_python(tmp_path, ["-c", script], DEBUG="1")
    assert on.returncode == 0 and off.returncode == 0, on.stderr + off.stderr
    assert on.stdout.split() == ["True", "True", "('HTTP_X_FORWARDED_PROTO',", "'https')", "False"]
    assert off.stdout.split() == ["False", "False", "None", "False"]


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/readyz/"])
def test_https_does_not_redirect_the_health_probes(tmp_path, path):
    seen = requests_with(tmp_path, **PRODUCTION)
    assert seen["http /login/"]["status"] == 301  # the redirect is on...
    assert seen[f"http {path}"]["status"] != 301  # ...but load balancers probe these over plain http
    assert seen[f"http {path}"]["location"] is None


def test_without_https_plain_http_is_served_as_before(tmp_path):
    seen = requests_with(tmp_path, DEBUG="1")  # what `make run` does
    plain = seen["http /login/"]
    assert plain["status"] == 200 and plain["hsts"] is None
    assert plain["cookies"]["csrftoken"]["secure"] is False
    # Without HTTPS=1 the header is not trusted: a client claiming https gets no HSTS either.
    assert seen["https /login/"]["hsts"] is None


def test_hsts_preload_is_opt_in(tmp_path):
    seen = requests_with(tmp_path, **PRODUCTION, HSTS_PRELOAD="1")
    assert seen["https /login/"]["hsts"] == "max-age=31536000; includeSubDomains; preload"
    result = check_deploy(tmp_path, **PRODUCTION, HSTS_PRELOAD="1")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("env", "message"), [
    ({"HTTPS": "maybe"}, "HTTPS must be a boolean"),
    ({"HTTPS": "2"}, "HTTPS must be a boolean"),
    ({"HSTS_PRELOAD": "1"}, "HSTS_PRELOAD=1 needs HTTPS=1"),
    ({"HTTPS": "1", "HSTS_PRELOAD": "sure"}, "HSTS_PRELOAD must be a boolean"),
])
def test_bad_tls_settings_are_clear_errors(tmp_path, env, message):
    result = probe(tmp_path, DEBUG="1", **env)
    assert result.returncode != 0 and message in result.stderr
