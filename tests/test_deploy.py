"""The deployment files under deploy/ are checked, not just found: every command they run exists, every
variable they set is one the app reads, production's required settings are there and pass
`check --deploy`, exactly one Celery beat, PgBouncer in session mode, systemd units that systemd accepts,
and an nginx proxy that sets the headers the app trusts."""

from __future__ import annotations

import configparser
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
ENV_EXAMPLE = DEPLOY / "env.example"
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))
APP_SERVICES = {"migrate", "web", "worker", "beat"}  # the ones running the rolloutadmin image
REQUIRED = {"SECRET_KEY", "ALLOWED_HOSTS", "DATABASE_URL", "REDIS_URL", "HTTPS"}
# Read by a library rather than by our own code (none today: prometheus_client's directory is also read
# by rolloutadmin/metrics.py).
LIBRARY_VARIABLES: set[str] = set()
# The reads of the environment in the app's own code: os.environ.get("X"), os.environ["X"], os.getenv("X"),
# and the settings helpers env_bool("X") / env_list("X").
READ = re.compile(r"""(?:os\.environ(?:\.get)?\s*[(\[]|os\.getenv\(|\benv_\w+\()\s*["']([A-Z][A-Z0-9_]*)["']""")
SOURCE_DIRS = ("rolloutadmin", "api", "flags", "monitoring", "alerts")


# --- helpers ---------------------------------------------------------------------------------------------


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def env_file(path: Path) -> dict[str, str]:
    """KEY=value lines; comments and blank lines skipped; anything else is an error."""
    values = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Z][A-Z0-9_]*)=(.*)", line)
        assert match, f"{path.name}:{number}: not KEY=value: {line!r}"
        assert match[1] not in values, f"{path.name}:{number}: {match[1]} set twice"
        values[match[1]] = match[2]
    return values


def app_reads() -> set[str]:
    names = set()
    for folder in SOURCE_DIRS:
        for path in (ROOT / folder).rglob("*.py"):
            names.update(READ.findall(path.read_text()))
    return names


def compose() -> dict:
    return load_yaml(DEPLOY / "compose.yaml")


def service_env(service: dict) -> dict[str, str]:
    """What a compose app service runs with: its env_file (deploy/env, made from env.example), then its
    environment, which wins."""
    files = service.get("env_file") or []
    files = [files] if isinstance(files, str) else files
    assert files == ["./env"], f"app services read ./env (a copy of env.example), not {files}"
    values = env_file(ENV_EXAMPLE)
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    values.update({key: str(value) for key, value in environment.items()})
    return values


def django_commands() -> set[str]:
    from django.core.management import get_commands

    return set(get_commands())


def check_command(argv: list[str]) -> None:
    """One command a deployment runs: it must be one of the known entry points, naming real things."""
    assert argv, "empty command"
    program = Path(argv[0]).name
    if program in {"python", "python3"} and argv[1:2] == ["manage.py"]:
        assert (ROOT / "manage.py").exists()
        assert len(argv) > 2 and argv[2] in django_commands(), f"not a manage.py command: {argv}"
    elif program == "gunicorn":
        assert "-c" in argv, f"gunicorn without the project's config: {argv}"
        config = argv[argv.index("-c") + 1]
        assert (ROOT / config).is_file(), f"gunicorn config {config} does not exist"
    elif program == "celery":
        assert argv[1:3] == ["-A", "rolloutadmin"], f"celery must use the rolloutadmin app: {argv}"
        from rolloutadmin.celery import app

        assert app.main == "rolloutadmin"
        assert len(argv) > 3 and argv[3] in {"worker", "beat"}, f"celery {argv[3:4]}: not worker or beat"
        if argv[3] == "worker":
            assert not {"-B", "--beat"} & set(argv), "a worker must not embed a beat (exactly one beat)"
    else:
        pytest.fail(f"unknown command in the deployment files: {argv}")


def split_shell(command: list[str] | str) -> list[list[str]]:
    """A compose command: a list, or `sh -c "a && b"`, into its simple commands."""
    argv = shlex.split(command) if isinstance(command, str) else list(command)
    if argv[:2] == ["sh", "-c"]:
        return [shlex.split(part) for part in re.split(r"&&|;", argv[2]) if part.strip()]
    return [argv]


def unit(path: Path) -> dict[str, list[str]]:
    """`Section.Key` -> every value (systemd allows a key more than once)."""
    values: dict[str, list[str]] = {}
    section = ""
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        values.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return values


# --- docker compose ------------------------------------------------------------------------------------


def test_compose_has_every_service():
    services = compose()["services"]
    assert set(services) == {"postgres", "redis", "pgbouncer", "migrate", "web", "worker", "beat", "proxy"}


def test_compose_runs_exactly_one_beat():
    services = compose()["services"]
    beats = [name for name, s in services.items()
             if any(argv[:1] == ["celery"] and "beat" in argv for argv in split_shell(s.get("command") or []))]
    assert beats == ["beat"]
    assert services["beat"].get("deploy", {}).get("replicas") == 1, "beat must say replicas: 1"


def test_compose_commands_are_real():
    services = compose()["services"]
    for name in APP_SERVICES:
        for argv in split_shell(services[name]["command"]):
            check_command(argv)
    migrate = services["migrate"]["command"]
    steps = [argv[2] for argv in split_shell(migrate)]
    assert steps == ["migrate", "db_grants"], "migrate first, then the grants"
    assert "--apply" in split_shell(migrate)[1]


def test_compose_migrates_as_owner_and_serves_as_the_app_role():
    services = compose()["services"]
    owner = services["postgres"]["environment"]["POSTGRES_USER"]
    assert service_env(services["migrate"])["DATABASE_URL"].startswith(f"postgres://{owner}:")
    grants_role = split_shell(services["migrate"]["command"])[1]
    role = grants_role[grants_role.index("--role") + 1]
    for name in ("web", "worker", "beat"):
        url = service_env(services[name])["DATABASE_URL"]
        assert url.startswith(f"postgres://{role}:") and "@pgbouncer:" in url, f"{name}: {url}"


def test_compose_web_is_healthchecked_and_waits_for_migrate():
    web = compose()["services"]["web"]
    assert "/healthz" in " ".join(web["healthcheck"]["test"])
    assert web["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_compose_mounts_files_that_exist():
    operator_made = {"./pgbouncer/userlist.txt", "./tls", "./env"}  # secrets: made on the host, never committed
    for name, service in compose()["services"].items():
        for volume in service.get("volumes") or []:
            source = volume.split(":")[0]
            if source.startswith(".") and source not in operator_made:
                assert (DEPLOY / source).exists(), f"{name} mounts {source}, which is missing"
        build = service.get("build")
        if build:
            assert (DEPLOY / build["context"] / build["dockerfile"]).is_file()


@pytest.mark.parametrize("name", sorted(APP_SERVICES))
def test_compose_app_services_have_the_production_settings(name):
    values = service_env(compose()["services"][name])
    missing = sorted(key for key in REQUIRED if not values.get(key, "").strip())
    assert not missing, f"{name} lacks {missing}"
    assert values["DEBUG"] == "0" and values["HTTPS"] == "1"


def test_every_variable_set_is_one_the_app_reads():
    reads = app_reads() | LIBRARY_VARIABLES
    assert {"SECRET_KEY", "DATABASE_URL", "HTTPS"} <= reads, "the scan of the code finds nothing: fix READ"
    named = set(env_file(ENV_EXAMPLE))
    services = compose()["services"]
    for name in APP_SERVICES:
        named |= set(services[name].get("environment") or {})
    unknown = sorted(named - reads)
    assert not unknown, f"set in deploy/ but read nowhere in the app: {unknown}"


def test_env_example_has_the_required_production_settings():
    values = env_file(ENV_EXAMPLE)
    assert set(values) >= REQUIRED
    assert values["DEBUG"] == "0" and values["HTTPS"] == "1" and values["TRUSTED_PROXY_COUNT"] == "1"
    assert values["SECRET_KEY"] == "CHANGE-ME", "never a real key in the repository"


def test_readme_documents_every_variable_the_app_reads():
    readme = (DEPLOY / "README.md").read_text()
    missing = sorted(name for name in app_reads() if f"`{name}`" not in readme)
    assert not missing, f"deploy/README.md does not document {missing}"
    assert "## Choosing the server (gunicorn or granian)" in readme


def test_env_example_passes_check_deploy(tmp_path):
    values = env_file(ENV_EXAMPLE)
    values.update(
        SECRET_KEY=secrets.token_urlsafe(50),  # what the operator puts in place of CHANGE-ME
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        ROLLOUTADMIN_VAR_DIR=str(tmp_path / "var"),
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "prometheus"),
    )
    (tmp_path / "prometheus").mkdir()
    clean = {k: v for k, v in os.environ.items() if k not in app_reads() and k != "DJANGO_ALLOW_ASYNC_UNSAFE"}
    clean.update(values, DJANGO_SETTINGS_MODULE="rolloutadmin.settings")
    result = subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"], cwd=ROOT,
                            env=clean, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


# --- Dockerfile ------------------------------------------------------------------------------------------


def test_dockerfile():
    text = (DEPLOY / "Dockerfile").read_text()
    instructions = [line.split(None, 1) for line in text.splitlines() if line and not line[0].isspace()
                    and not line.startswith("#")]
    assert instructions[0] == ["FROM", "python:3.13-slim"]
    assert "pip install -r requirements.txt" in text
    assert re.search(r"SECRET_KEY=\S+ python manage.py collectstatic --noinput", text)
    users = [args for op, args in instructions if op == "USER"]
    assert users and users[-1].strip() not in {"root", "0"}, "the app must not run as root"
    assert [op for op, _ in instructions].index("USER") > max(
        i for i, (op, _) in enumerate(instructions) if op == "RUN"), "USER after the last RUN"
    ignored = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert {".venv", "var", ".git"} <= set(ignored)


# --- PgBouncer -------------------------------------------------------------------------------------------


def test_pgbouncer_pools_sessions():
    ini = configparser.ConfigParser(inline_comment_prefixes=None, comment_prefixes=(";", "#"))
    ini.read(DEPLOY / "pgbouncer" / "pgbouncer.ini")
    bouncer = ini["pgbouncer"]
    assert bouncer["pool_mode"].strip() == "session"
    assert ini["databases"], "no database"
    # PgBouncer refuses psycopg's `options` startup parameter (the app's statement_timeout) unless told to
    # ignore it; ignored, the timeout must come from the role (ALTER ROLE ... SET statement_timeout).
    ignored = {p.strip() for p in bouncer["ignore_startup_parameters"].split(",")}
    assert {"options", "extra_float_digits"} <= ignored
    assert re.search(r"ALTER ROLE app SET statement_timeout", (DEPLOY / "postgres" / "10-app-role.sh").read_text())
    assert "ALTER ROLE app SET statement_timeout" in (DEPLOY / "README.md").read_text()


# --- systemd ---------------------------------------------------------------------------------------------


def test_systemd_units_are_all_there():
    names = {path.name for path in UNITS}
    assert names == {f"rolloutadmin-{n}.service" for n in ("web", "worker", "beat", "migrate")}


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_systemd_unit_settings(path):
    values = unit(path)
    assert values["Service.EnvironmentFile"][0] == "/etc/rolloutadmin/env"
    for key, want in {"NoNewPrivileges": "true", "ProtectSystem": "strict", "PrivateTmp": "true"}.items():
        assert values.get(f"Service.{key}") == [want], f"{path.name}: {key}"
    assert "/var/lib/rolloutadmin" in values["Service.ReadWritePaths"]
    assert values["Service.User"] != ["root"]
    for command in values["Service.ExecStart"]:
        argv = shlex.split(command)
        assert argv[0].startswith("/opt/rolloutadmin/.venv/bin/")
        check_command(argv)
    kind = path.stem.removeprefix("rolloutadmin-")
    if kind == "web":
        assert values["Service.Type"] == ["notify"]
        assert values["Service.ExecReload"] == ["/bin/kill -HUP $MAINPID"]
        assert values["Service.Restart"] == ["on-failure"]
    if kind == "migrate":
        assert values["Service.Type"] == ["oneshot"]
        steps = [shlex.split(c)[2] for c in values["Service.ExecStart"]]
        assert steps.index("migrate") < steps.index("db_grants")


def test_gunicorn_sends_sd_notify():
    """Type=notify needs gunicorn to send READY=1, or systemd would kill it after TimeoutStartSec."""
    import gunicorn.arbiter

    assert 'sd_notify("READY=1' in Path(gunicorn.arbiter.__file__).read_text()


def test_systemd_units_pass_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # The units name /opt/rolloutadmin; verify checks that ExecStart programs exist, so point them at this
    # checkout (which has the same .venv/bin/ layout) in a copy.
    for path in UNITS:
        (tmp_path / path.name).write_text(path.read_text().replace("/opt/rolloutadmin", str(ROOT)))
    result = subprocess.run([analyze, "verify", *sorted(str(p) for p in tmp_path.glob("*.service"))],
                            capture_output=True, text=True, timeout=60)
    # verify only warns (exit 0) about unknown keys or bad values: any output is a failure here.
    assert result.returncode == 0 and not result.stderr.strip() and not result.stdout.strip(), (
        result.stdout + result.stderr)


# --- nginx -----------------------------------------------------------------------------------------------


def nginx_conf() -> str:
    return (DEPLOY / "nginx" / "rolloutadmin.conf").read_text()


def test_nginx_sets_the_forwarded_headers():
    text = re.sub(r"#.*", "", nginx_conf())
    assert re.search(r"proxy_set_header\s+X-Forwarded-Proto\s+\$scheme\s*;", text)
    assert re.search(r"proxy_set_header\s+X-Forwarded-For\s+\$proxy_add_x_forwarded_for\s*;", text)
    assert re.search(r"proxy_set_header\s+Host\s+\$host\s*;", text)
    # Plain http is redirected, never proxied (the evaluation endpoints bypass Django's SSL redirect).
    plain = text[text.index("listen 80;"):text.index("listen 443")]
    assert "proxy_pass" not in plain and "return 301 https://" in plain
    for upstream in ("upstream-local.conf", "upstream-compose.conf"):
        assert "upstream rolloutadmin_app" in (DEPLOY / "nginx" / upstream).read_text()


def test_nginx_accepts_the_config(tmp_path):
    nginx = shutil.which("nginx")
    if nginx is None:
        pytest.skip("nginx is not installed")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test",
                    "-keyout", str(tmp_path / "privkey.pem"), "-out", str(tmp_path / "fullchain.pem")],
                   check=True, capture_output=True, timeout=60)
    (tmp_path / "site.conf").write_text(nginx_conf().replace("/etc/nginx/tls", str(tmp_path)))
    temp = " ".join(f"{kind}_temp_path {tmp_path / kind};" for kind in ("proxy", "fastcgi", "uwsgi", "scgi"))
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path / 'nginx.pid'}; error_log {tmp_path / 'error.log'}; events {{}}\n"
        f"http {{ access_log off; client_body_temp_path {tmp_path / 'body'}; {temp}\n"
        f"include {DEPLOY / 'nginx' / 'upstream-local.conf'}; include {tmp_path / 'site.conf'}; }}\n")
    result = subprocess.run([nginx, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
