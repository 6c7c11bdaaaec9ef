"""bin/manage: the README's management commands work as written after `make run` (the venv, the
development settings), and without a venv it says what to do in one line."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _env(tmp_path: Path) -> dict[str, str]:
    # A newcomer's shell: no DEBUG, no SECRET_KEY, no database URL; our own var directory.
    clean = {k: v for k, v in os.environ.items()
             if k not in {"DEBUG", "SECRET_KEY", "DATABASE_URL", "REDIS_URL", "VIRTUAL_ENV"}}
    clean["ROLLOUTADMIN_VAR_DIR"] = str(tmp_path / "var")
    clean["PATH"] = "/usr/bin:/bin"  # no virtualenv on the PATH
    return clean


def test_a_readme_command_works_from_any_directory_without_settings(tmp_path):
    env = _env(tmp_path)
    migrate = subprocess.run([str(ROOT / "bin" / "manage"), "migrate", "--noinput", "-v0"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=300)
    assert migrate.returncode == 0, migrate.stderr
    created = subprocess.run([str(ROOT / "bin" / "manage"), "create_api_key", "checkout-service", "--scopes",
                              "evaluate"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert created.returncode == 0, created.stderr
    assert "checkout-service" in created.stderr and created.stdout.startswith("ra_")  # the secret alone on stdout
    assert (tmp_path / "var" / "secret_key").exists()  # the development settings made one


def test_without_a_virtualenv_it_says_what_to_run(tmp_path):
    (tmp_path / "bin").mkdir()
    shutil.copy(ROOT / "bin" / "manage", tmp_path / "bin" / "manage")
    result = subprocess.run([str(tmp_path / "bin" / "manage"), "check"], env=_env(tmp_path), capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "make run" in result.stderr
