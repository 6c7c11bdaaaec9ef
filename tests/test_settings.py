"""Settings come from the environment and fail loudly when production needs something missing."""

from __future__ import annotations

import os
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
    clean = {k: v for k, v in os.environ.items() if k not in {"DEBUG", "SECRET_KEY", "DATABASE_URL", "REDIS_URL"}}
    clean.update({"ROLLOUTADMIN_VAR_DIR": str(tmp_path / "var"), "DJANGO_SETTINGS_MODULE": "rolloutadmin.settings"})
    clean.update(env)
    return subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=clean, capture_output=True, text=True,
                          timeout=60)


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


@pytest.mark.parametrize("value", ["maybe", "2"])
def test_a_debug_value_that_is_not_a_boolean_is_an_error(tmp_path, value):
    result = probe(tmp_path, DEBUG=value)
    assert result.returncode != 0 and "DEBUG must be a boolean" in result.stderr
