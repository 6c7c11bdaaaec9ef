"""rolloutadmin settings, all read from the environment.

DATABASE_URL  unset: SQLite under var/; e.g. postgres://postgres@127.0.0.1:5432/test
REDIS_URL     unset: kombu's filesystem broker under var/ and a per-process cache; set: Redis for both
SECRET_KEY    required when DEBUG is off; with DEBUG on, one is generated once into var/secret_key
DEBUG         1/true/yes/on to enable (default off)
ALLOWED_HOSTS comma-separated (default: 127.0.0.1,localhost,[::1])
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from rolloutadmin.csp import STRICT_CSP

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("ROLLOUTADMIN_VAR_DIR", BASE_DIR / "var"))
VAR_DIR.mkdir(parents=True, exist_ok=True)


def env_bool(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false, yes/no, on/off), not {raw!r}")


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


def _secret_key(debug: bool) -> str:
    key = os.environ.get("SECRET_KEY", "").strip()
    if key:
        return key
    if not debug:
        raise ImproperlyConfigured(
            "SECRET_KEY is required when DEBUG is off (set SECRET_KEY, or DEBUG=1 for development)"
        )
    path = VAR_DIR / "secret_key"
    if not path.exists():
        # O_EXCL: two processes starting together (web, worker, beat) must agree on one key.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(50))
    key = path.read_text().strip()
    if not key:
        raise ImproperlyConfigured(f"{path} is empty: delete it and start again")
    return key


DEBUG = env_bool("DEBUG")
SECRET_KEY = _secret_key(DEBUG)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", "")
CSRF_FAILURE_VIEW = "rolloutadmin.errors.csrf_failure"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "django_htmx",
    "corsheaders",
    "flags",
    "monitoring",
    "alerts",
    "api",
    "dashboard",
    "axes",
]

MIDDLEWARE = [
    # First, as django-cors-headers asks: preflights are answered before anything else (api/cors.py).
    "corsheaders.middleware.CorsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    # Before the session: a database outage anywhere after it is a 503 with Retry-After, never a 500
    # (rolloutadmin/outage.py).
    "rolloutadmin.outage.DatabaseOutageMiddleware",
    # At most DB_REQUEST_SLOTS database-bound requests per process, so that a hung database cannot take
    # every thread from the evaluations (rolloutadmin/dbguard.py).
    "rolloutadmin.dbguard.DatabaseSlotsMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "django.middleware.csp.ContentSecurityPolicyMiddleware",
    # Last, as django-axes asks: turns a lockout into the lockout page (rolloutadmin/lockout.py).
    "axes.middleware.AxesMiddleware",
]

# The dashboard always sends the strict policy (rolloutadmin/csp.py). CSP_STRICT=1 sends it on every
# page, the admin included.
if env_bool("CSP_STRICT"):
    SECURE_CSP = STRICT_CSP

ROOT_URLCONF = "rolloutadmin.urls"
WSGI_APPLICATION = "rolloutadmin.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# Web, worker and beat share an SQLite file: WAL lets readers run beside the writer, IMMEDIATE takes the
# write lock at BEGIN so a transaction never fails half-way on a lock upgrade (SQLite answers a deferred
# transaction's late write with "database is locked" at once, without waiting), and each waits up to 20 s
# for its turn. The same for the embedded default and for any sqlite:// DATABASE_URL.
SQLITE_OPTIONS = {
    "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    "transaction_mode": "IMMEDIATE",
    "timeout": 20,
}

DATABASE_URL = os.environ.get("DATABASE_URL", "").strip()
DB_STATEMENT_TIMEOUT_MS = int(os.environ.get("DB_STATEMENT_TIMEOUT_MS", "10000"))
if DATABASE_URL:
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=60, conn_health_checks=True)}
    if DATABASES["default"]["ENGINE"].endswith("postgresql"):
        # Fail fast instead of holding a worker: an unreachable server after DB_CONNECT_TIMEOUT seconds, a
        # statement running longer than DB_STATEMENT_TIMEOUT_MS (0: no limit, e.g. for a long migration).
        _db_options = DATABASES["default"].setdefault("OPTIONS", {})
        _db_options["connect_timeout"] = int(os.environ.get("DB_CONNECT_TIMEOUT", "3"))
        if DB_STATEMENT_TIMEOUT_MS > 0:
            _db_options["options"] = f"-c statement_timeout={DB_STATEMENT_TIMEOUT_MS}"
    elif DATABASES["default"]["ENGINE"].endswith("sqlite3"):
        DATABASES["default"]["OPTIONS"] = {**SQLITE_OPTIONS, **DATABASES["default"].get("OPTIONS", {})}
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(VAR_DIR / "db.sqlite3"),
            "OPTIONS": dict(SQLITE_OPTIONS),
            # A file, not memory, so that tests can run real server processes against it.
            "TEST": {"NAME": str(VAR_DIR / "test-db.sqlite3")},
        }
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = os.environ.get("REDIS_URL", "").strip()
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            # Fail fast: evaluation falls back to the database when Redis does not answer.
            "OPTIONS": {"socket_connect_timeout": 0.25, "socket_timeout": 0.5},
        }
    }
    CELERY_BROKER_URL = REDIS_URL
    CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, object] = {}
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    _broker_dir = VAR_DIR / "celery" / "broker"
    _processed_dir = VAR_DIR / "celery" / "processed"
    _control_dir = VAR_DIR / "celery" / "control"
    for _folder in (_broker_dir, _processed_dir, _control_dir):
        _folder.mkdir(parents=True, exist_ok=True)
    # kombu's filesystem transport: worker and beat on one host, no server to run.
    CELERY_BROKER_URL = "filesystem://"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir),
        "data_folder_out": str(_broker_dir),
        "processed_folder": str(_processed_dir),
        "control_folder": str(_control_dir),  # else kombu writes ./control into the working directory
        "store_processed": False,
    }

CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# Raw execution records older than this are pruned daily; the minute and hour rollups stay.
EXECUTION_RETENTION_DAYS = int(os.environ.get("EXECUTION_RETENTION_DAYS", "30"))
# Alerts: the beat checks every ALERT_CHECK_INTERVAL seconds; notifications go to these addresses (Django's
# email backend: the console in development) and to a Slack-compatible webhook.
ALERT_CHECK_INTERVAL = float(os.environ.get("ALERT_CHECK_INTERVAL", "60"))
ALERT_EMAILS = env_list("ALERT_EMAILS", "")
ALERT_WEBHOOK_URL = os.environ.get("ALERT_WEBHOOK_URL", "").strip()
ALERT_WEBHOOK_TIMEOUT = float(os.environ.get("ALERT_WEBHOOK_TIMEOUT", "5"))
# Changes made from the dashboard need a reason for the audit log (flags.services.require_reason); the kill
# switch turning a flag off never does. DASHBOARD_REASON_REQUIRED=0 makes the reason optional.
DASHBOARD_REASON_REQUIRED = env_bool("DASHBOARD_REASON_REQUIRED", True)
# Django 6.1 mailers: EMAIL_BACKEND (console in development, SMTP otherwise; the file backend writes into
# EMAIL_FILE_PATH), with SMTP's host and port from EMAIL_HOST and EMAIL_PORT.
_EMAIL_BACKEND = os.environ.get("EMAIL_BACKEND") or (
    "django.core.mail.backends.console.EmailBackend" if DEBUG else "django.core.mail.backends.smtp.EmailBackend"
)
_EMAIL_OPTIONS: dict[str, object] = {}
if _EMAIL_BACKEND.endswith("filebased.EmailBackend"):
    _EMAIL_OPTIONS["file_path"] = os.environ.get("EMAIL_FILE_PATH", str(VAR_DIR / "mail"))
elif _EMAIL_BACKEND.endswith("smtp.EmailBackend"):
    _EMAIL_OPTIONS.update(host=os.environ.get("EMAIL_HOST", "localhost"), port=int(os.environ.get("EMAIL_PORT", "25")),
                          timeout=10)
MAILERS = {"default": {"BACKEND": _EMAIL_BACKEND, "OPTIONS": _EMAIL_OPTIONS}}
DEFAULT_FROM_EMAIL = os.environ.get("DEFAULT_FROM_EMAIL", "rolloutadmin@localhost")
CELERY_BEAT_SCHEDULE: dict[str, dict[str, object]] = {
    "prune-raw-execution-records": {"task": "monitoring.prune_raw_records", "schedule": 24 * 3600.0},
    "check-alerts": {"task": "alerts.check_alerts", "schedule": ALERT_CHECK_INTERVAL,
                     "options": {"expires": ALERT_CHECK_INTERVAL}},
    # The notification outbox: sends what the broker or the endpoint kept from going out (alerts.notify).
    "flush-notifications": {"task": "alerts.flush_notifications", "schedule": ALERT_CHECK_INTERVAL,
                            "options": {"expires": ALERT_CHECK_INTERVAL}},
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "staticfiles"
STATIC_ROOT.mkdir(exist_ok=True)
# After `collectstatic` (deployments) files get hashed, compressed names and long cache lifetimes;
# without it (development, tests) WhiteNoise serves them from the finders under their plain names.
_COLLECTED = (STATIC_ROOT / "staticfiles.json").exists()
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if _COLLECTED
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
WHITENOISE_USE_FINDERS = not _COLLECTED

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "login"

# The API: bodies over this are refused with 413; the config snapshot checks for changes this often.
API_MAX_BODY_BYTES = int(os.environ.get("API_MAX_BODY_BYTES", 4 * 1024 * 1024))
SNAPSHOT_CHECK_INTERVAL = float(os.environ.get("SNAPSHOT_CHECK_INTERVAL", "0.25"))
# In a server (rolloutadmin/wsgi.py) a thread of each process makes those checks, so that no request waits
# on Redis or the database, and keeps a copy of the snapshot in Redis and under VAR_DIR/snapshot for a
# process that starts while the database is down. A check waiting longer than SNAPSHOT_STALE_AFTER seconds
# marks the answers stale.
SNAPSHOT_BACKGROUND = env_bool("SNAPSHOT_BACKGROUND", True)
SNAPSHOT_PERSIST = env_bool("SNAPSHOT_PERSIST", True)
SNAPSHOT_STALE_AFTER = float(os.environ.get("SNAPSHOT_STALE_AFTER", "3"))
# Database-bound requests per process at once (0: no limit); a request finding them all taken waits up to
# DB_SLOT_WAIT seconds (not at all while one has been stuck over DB_SLOT_STUCK seconds), then answers 503.
DB_REQUEST_SLOTS = int(os.environ.get("DB_REQUEST_SLOTS", "2"))
DB_SLOT_WAIT = float(os.environ.get("DB_SLOT_WAIT", "0.5"))
DB_SLOT_STUCK = float(os.environ.get("DB_SLOT_STUCK", "1"))
# A person's change from a page (POST outside /api/, the kill switch above all) waits up to this for a slot
# instead of being shed behind the dashboard's refreshes.
DB_SLOT_WAIT_CHANGE = float(os.environ.get("DB_SLOT_WAIT_CHANGE", "3"))
# A web request's query that has waited this many seconds has its connection cut (a hung server never
# enforces its own statement_timeout); 0: the statement timeout + 2 s (rolloutadmin/dbguard.py).
DB_QUERY_DEADLINE = float(os.environ.get("DB_QUERY_DEADLINE", "0"))
# GET /metrics (Prometheus) asks for `Authorization: Bearer <METRICS_TOKEN>` when this is set.
METRICS_TOKEN = os.environ.get("METRICS_TOKEN", "").strip()

# Throttling. Logins (/login/ and /admin/login/, django-axes): after LOGIN_FAILURE_LIMIT failures for a
# username, every attempt for it, a correct one too, is refused with a 429 page for LOGIN_COOLOFF_MINUTES
# after the last counted failure; `manage.py axes_reset_username <name>` (or the admin's Axes pages) unlock early.
# API keys (api/throttle.py): more than API_AUTH_FAILURE_LIMIT different unknown keys from one address within
# API_AUTH_FAILURE_WINDOW seconds -> 429 with Retry-After for API_AUTH_BLOCK_SECONDS; valid keys never wait.
# The client address is REMOTE_ADDR; behind TRUSTED_PROXY_COUNT proxies that append to X-Forwarded-For, the
# address the outermost of them saw (unset: X-Forwarded-For is ignored, a client can forge it).
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",  # first: refuses a locked-out username before any password check
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = int(os.environ.get("LOGIN_FAILURE_LIMIT", "10"))
AXES_COOLOFF_TIME = float(os.environ.get("LOGIN_COOLOFF_MINUTES", "15")) / 60  # axes reads a number as hours
AXES_LOCKOUT_PARAMETERS = ["username"]  # per account, from any address: a botnet cannot spread its guesses
AXES_RESET_ON_SUCCESS = True  # a good login clears the failures before it
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False  # the cool-off runs from the 10th failure, not the last try
AXES_LOCKOUT_CALLABLE = "rolloutadmin.lockout.lockout_response"  # 429, Retry-After, a readable page
AXES_CLIENT_IP_CALLABLE = "api.throttle.axes_client_ip"  # the same client address as the API throttle
AXES_SENSITIVE_PARAMETERS = ["password"]  # masked in the recorded POST data (usernames are shown to admins)
AXES_VERBOSE = False  # no banner on every manage.py command: CLI output stays one line
API_AUTH_FAILURE_LIMIT = int(os.environ.get("API_AUTH_FAILURE_LIMIT", "20"))
API_AUTH_FAILURE_WINDOW = int(os.environ.get("API_AUTH_FAILURE_WINDOW", "60"))
API_AUTH_BLOCK_SECONDS = int(os.environ.get("API_AUTH_BLOCK_SECONDS", "60"))
TRUSTED_PROXY_COUNT = int(os.environ.get("TRUSTED_PROXY_COUNT", "0"))
# Requests a second per API key in each web process (0: no limit), in bursts of up to API_KEY_RATE_BURST
# (0: two seconds' worth); over it 429 with Retry-After (api/throttle.py: why per process).
# CORS: browser apps on these origins (comma-separated `scheme://host[:port]`; empty: none) may call the
# evaluation endpoints, and only those (django-cors-headers for Django's views, api/cors.py for the lean
# path, from these same settings). No cookies: the endpoints take an API key header.
CORS_ALLOWED_ORIGINS = env_list("CORS_ALLOWED_ORIGINS", "")
CORS_URLS_REGEX = r"^/(?:/?ofrep/|api/v1/evaluate/?$|api/v1/flags/[^/]+/evaluate/?$)"
CORS_ALLOW_METHODS = ("GET", "POST", "OPTIONS")
CORS_ALLOW_HEADERS = ("accept", "authorization", "content-type", "if-none-match", "x-api-key", "x-request-id")
CORS_EXPOSE_HEADERS = ("ETag", "Retry-After", "X-Request-ID")
CORS_PREFLIGHT_MAX_AGE = int(os.environ.get("CORS_PREFLIGHT_MAX_AGE", "3600"))
CORS_ALLOW_CREDENTIALS = False
API_KEY_RATE_LIMIT = float(os.environ.get("API_KEY_RATE_LIMIT", "0"))
API_KEY_RATE_BURST = float(os.environ.get("API_KEY_RATE_BURST", "0"))

# Uploads of allow/deny lists: 100,000 ids of up to 255 characters fit comfortably.
DATA_UPLOAD_MAX_MEMORY_SIZE = 32 * 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = 32 * 1024 * 1024
# The admin's bulk-removal action posts one checkbox per selected row.
DATA_UPLOAD_MAX_NUMBER_FIELDS = 20_000

if not DEBUG:
    SESSION_COOKIE_HTTPONLY = True
    CSRF_COOKIE_HTTPONLY = False  # htmx reads the token from the body's hx-headers, not the cookie
    SECURE_CONTENT_TYPE_NOSNIFF = True

# HTTPS=1: served over TLS behind a proxy that terminates it and sets X-Forwarded-Proto (and strips any
# X-Forwarded-Proto a client sends: Django trusts the header). Unset (`make run`): plain http, none of this.
HTTPS = env_bool("HTTPS")
HSTS_PRELOAD = env_bool("HSTS_PRELOAD")
if HSTS_PRELOAD and not HTTPS:
    raise ImproperlyConfigured("HSTS_PRELOAD=1 needs HTTPS=1: HSTS is only sent over TLS")
if HTTPS:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = True
    # Load balancers probe these over plain http; paths are matched without their leading slash.
    SECURE_REDIRECT_EXEMPT = [r"^healthz/?$", r"^readyz/?$"]
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = 365 * 24 * 3600
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    # Preload is off unless HSTS_PRELOAD=1. Submitting to the browsers' preload list is a decision for the
    # owner of the whole registrable domain (it covers example.com and every subdomain, and the list ships
    # inside browser releases, so leaving it takes months); an app on flags.example.com cannot make it, and
    # the preload list only accepts the header from the apex domain anyway. The warning that says "you
    # could preload" (W021) is therefore silenced on purpose, not by accident.
    SECURE_HSTS_PRELOAD = HSTS_PRELOAD
    if not HSTS_PRELOAD:
        SILENCED_SYSTEM_CHECKS = ["security.W021"]

# axes.W006 asks for 'ip_address' in AXES_LOCKOUT_PARAMETERS. Deliberately not: users behind one proxy or
# NAT share an address, and one attacker's failures would lock all of them out (see Throttling above).
SILENCED_SYSTEM_CHECKS = [*globals().get("SILENCED_SYSTEM_CHECKS", []), "axes.W006"]

# LOG_FORMAT: plain (default, for people) or json (one object per line, for log shippers); the request id
# of the request being served is on every line (rolloutadmin/requestlog.py). REQUEST_LOG=0 drops the one
# line per request, for deployments that take access logs from their proxy.
_LOG_FORMATTERS = {
    "plain": {"()": "rolloutadmin.requestlog.PlainFormatter",
              "format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
    "json": {"()": "rolloutadmin.requestlog.JsonFormatter"},
}
LOG_FORMAT = os.environ.get("LOG_FORMAT", "").strip().lower() or "plain"
if LOG_FORMAT not in _LOG_FORMATTERS:
    raise ImproperlyConfigured(
        f"LOG_FORMAT must be one of {', '.join(_LOG_FORMATTERS)}, not {os.environ['LOG_FORMAT']!r}")
# No format shows the thread, the multiprocessing process name or the asyncio task: logging need not look
# them up for every record (part of each request line's 15 us, measured here). The process id stays:
# gunicorn's own format shows it.
logging.logThreads = logging.logMultiprocessing = False
logging.logAsyncioTasks = False  # type: ignore[attr-defined]  # Python 3.12+; typeshed has not caught up
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {LOG_FORMAT: _LOG_FORMATTERS[LOG_FORMAT]},
    "filters": {"request_id": {"()": "rolloutadmin.requestlog.RequestIdFilter"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT, "filters": ["request_id"]}},
    "loggers": {"rolloutadmin.request": {} if env_bool("REQUEST_LOG", True) else {"level": "WARNING"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
}
