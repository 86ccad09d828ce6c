"""Settings, all from the environment (12-factor), in this one place.

`TF_PROFILE=production` (the default) is safe to expose: no debug, secure cookies, HSTS, a
SECRET_KEY that must be given. `TF_PROFILE=local` is for a laptop and the test suite.
"""

from datetime import timedelta
from pathlib import Path

import django_stubs_ext
import environ

from config.app_settings import (
    BillingSettings,
    GatewaySettings,
    MeteringSettings,
    StripeSettings,
    flag,
    http_url_or_empty,
    number,
    postgres_url_or_empty,
    read,
    whole,
)

# Lets admin classes say ModelAdmin[Model] at run time, as the type checker wants.
django_stubs_ext.monkeypatch()

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
PROFILE = env.str("TF_PROFILE", default="production")
LOCAL = PROFILE == "local"
if PROFILE not in ("local", "production"):
    raise environ.ImproperlyConfigured(f"TF_PROFILE must be local or production, not {PROFILE!r}")

DEBUG = read(env, "DEBUG", flag, default=False)
if not LOCAL and "SECRET_KEY" not in env:
    raise environ.ImproperlyConfigured(
        "Set the SECRET_KEY environment variable: TF_PROFILE=production (the default) needs it. "
        "For a local instance use TF_PROFILE=local, or `tf manage` / `tf shell` beside `tf up`."
    )
SECRET_KEY = env.str("SECRET_KEY", default="local-insecure-key-do-not-use")
ALLOWED_HOSTS = env.list(
    "ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"] if LOCAL else []
)
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
# Local state of this instance: the gateway's usage spool, collected static files, and under
# `tf up` its embedded databases.
VAR_DIR = Path(env.str("TF_VAR_DIR", default=str(BASE_DIR / "var")))

DATABASES = {
    "default": env.db_url("DATABASE_URL", default="postgres://postgres@127.0.0.1:5432/postgres")
}
# A streaming replica of it, optional: the console's pages and API reads, the finance report and
# exports read it where a few seconds' lag is harmless, everything else the primary
# (config/db_routing.py, docs/deployment.md). Unset: one database, as before.
_replica_url = read(env, "DATABASE_REPLICA_URL", postgres_url_or_empty, default="")
if _replica_url:
    DATABASES["replica"] = env.db_url_config(_replica_url)
    # Tests read the test database through it: nothing is created on a replica.
    DATABASES["replica"]["TEST"] = {"MIRROR": "default"}
    DATABASE_ROUTERS = ["config.db_routing.ReplicaRouter"]
# One pool of connections per process and database (psycopg_pool, through Django): a request
# borrows a connection and hands it back when it ends. Persistent connections leaked under
# ASGI, where each request runs on a thread of its own and every thread kept its connection.
_pool = {
    "min_size": read(env, "DB_POOL_MIN_SIZE", whole(minimum=0), default=1),
    "max_size": read(env, "DB_POOL_MAX_SIZE", whole(minimum=1), default=10),
    # A request waits this long for a free connection, then fails (503 in the API).
    "timeout": read(env, "DB_POOL_TIMEOUT_SECONDS", number(inclusive=False), default=10.0),
}
for _alias, _database in DATABASES.items():
    _database["CONN_MAX_AGE"] = 0
    _database["CONN_HEALTH_CHECKS"] = True
    _database["OPTIONS"] = {**_database.get("OPTIONS", {}), "pool": dict(_pool)}
    if _alias == "replica":
        # A replica that gives no connection within 2 s is taken as down and the request is
        # served again from the primary, rather than waiting as long as for a busy primary.
        _database["OPTIONS"]["pool"]["timeout"] = min(_pool["timeout"], 2.0)
REDIS_URL = env.str("REDIS_URL", default="redis://127.0.0.1:6379/0")

INSTALLED_APPS = [
    # Django's admin, as the staff console (two-factor sign-in, dashboard, audited actions).
    "console.admin_apps.ConsoleAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "django_otp",
    "django_otp.plugins.otp_totp",
    "axes",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    # Bottom: customers, the price catalogue, the fleet and the audit log; then metering; then
    # the gateway and billing (independent of each other); the console on top
    # (docs/architecture.md; `make lint` checks it).
    "customers",
    "catalogue",
    "fleet",
    "audit",
    "metering",
    "gateway",
    "billing",
    "console",
    # Beside the console, for customers: their members' portal (docs/portal.md).
    "portal",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django_otp.middleware.OTPMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # With a read replica: the console's safe requests read it (config/db_routing.py).
    *(["config.db_routing.ReplicaReadsMiddleware"] if _replica_url else []),
    # Last, as django-axes requires: answers sign-ins from a locked-out username and address.
    "axes.middleware.AxesMiddleware",
]

# Staff sign-in is throttled: AXES_FAILURE_LIMIT failures for one username from one address
# lock that pair out for AXES_COOLOFF_MINUTES (django-axes, failures kept in PostgreSQL).
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = read(env, "AXES_FAILURE_LIMIT", whole(minimum=1), default=5)
AXES_COOLOFF_TIME = timedelta(minutes=read(env, "AXES_COOLOFF_MINUTES", number(), default=15.0))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_VERBOSE = False
# The client's address (lockouts, the audit log) is REMOTE_ADDR, unless that peer is one of
# these proxies (addresses or CIDRs): then X-Forwarded-For is followed back to the first hop
# that is not one (console/client_ip.py). Empty: X-Forwarded-For is never believed.
TRUSTED_PROXIES = env.list("TRUSTED_PROXIES", default=[])
AXES_CLIENT_IP_CALLABLE = "audit.client_ip.client_address"
OTP_TOTP_ISSUER = "Token Factory"
# Staff must set up a TOTP device before using the console (console/two_factor.py).
CONSOLE_REQUIRE_TWO_FACTOR = read(env, "CONSOLE_REQUIRE_TWO_FACTOR", flag, default=not LOCAL)
# Largest request body Django reads (console forms, the management API); more is a 413.
DATA_UPLOAD_MAX_MEMORY_SIZE = read(
    env, "DATA_UPLOAD_MAX_MEMORY_SIZE", whole(minimum=0), default=2_621_440
)

ROOT_URLCONF = "config.urls"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
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

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = env.path("STATIC_ROOT", default=VAR_DIR / "static")
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Production hardening; `manage.py check --deploy` passes with TF_PROFILE=production.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = read(env, "SECURE_SSL_REDIRECT", flag, default=not LOCAL)
SESSION_COOKIE_SECURE = not LOCAL
CSRF_COOKIE_SECURE = not LOCAL
SECURE_HSTS_SECONDS = read(
    env, "SECURE_HSTS_SECONDS", whole(minimum=0), default=0 if LOCAL else 31536000
)
SECURE_HSTS_INCLUDE_SUBDOMAINS = not LOCAL
SECURE_HSTS_PRELOAD = not LOCAL
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]

# Mail: invitations and password resets (customers/mail.py). A local instance keeps what it
# sends in a table staff read in the console ("Sent mail"); production sends by SMTP.
EMAIL_BACKEND = env.str(
    "EMAIL_BACKEND",
    default="portal.mail_backend.SentMailBackend"
    if LOCAL
    else "django.core.mail.backends.smtp.EmailBackend",
)
EMAIL_HOST = env.str("EMAIL_HOST", default="localhost")
EMAIL_PORT = read(env, "EMAIL_PORT", whole(minimum=1), default=25)
EMAIL_HOST_USER = env.str("EMAIL_HOST_USER", default="")
EMAIL_HOST_PASSWORD = env.str("EMAIL_HOST_PASSWORD", default="")
EMAIL_USE_TLS = read(env, "EMAIL_USE_TLS", flag, default=False)
EMAIL_TIMEOUT = read(env, "EMAIL_TIMEOUT_SECONDS", number(inclusive=False), default=10.0)
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="Token Factory <noreply@localhost>")
# The customer portal's address as members reach it (https://portal.example.com), for links
# in mail sent without a request (an invitation from a command). Empty: only from a request.
PORTAL_BASE_URL = read(
    env,
    "PORTAL_BASE_URL",
    http_url_or_empty,
    default="http://localhost:8000" if LOCAL else "",
)
# A password-reset link works this long (Django's default is three days).
PASSWORD_RESET_TIMEOUT = read(
    env, "PASSWORD_RESET_TIMEOUT_SECONDS", whole(minimum=60), default=3 * 3600
)

LOCAL_NETWORKS = ["127.0.0.0/8", "::1/128"]
PRIVATE_NETWORKS = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"]

# The apps' own settings: typed groups whose fields name their variables, defaults and allowed
# values (config/app_settings.py); a value not allowed stops start-up with one line.
GATEWAY = GatewaySettings.from_env(
    env,
    spool_dir=VAR_DIR / "spool",
    backend_allowed_networks=(*LOCAL_NETWORKS, *PRIVATE_NETWORKS) if LOCAL else (),
)
METERING = MeteringSettings.from_env(env)
BILLING = BillingSettings.from_env(env)
STRIPE = StripeSettings.from_env(env)

# Management API (docs/console.md): staff only, by session or staff token, each call checked
# against the user's model permissions and the token's scopes; JSON in and out, one error shape.
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "console.api.authentication.StaffTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["console.api.permissions.StaffPermission"],
    "DEFAULT_PARSER_CLASSES": ["console.api.parsers.JSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_SCHEMA_CLASS": "console.api.schema.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "console.api.common.Pagination",
    "EXCEPTION_HANDLER": "console.api.errors.exception_handler",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Token Factory management API",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    # Swagger UI and Redoc from drf-spectacular-sidecar's static files: no CDN needed.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "ENUM_NAME_OVERRIDES": {
        "AccountStatusEnum": "customers.models.Account.Status",
        "InvoiceStatusEnum": "billing.models.Invoice.Status",
    },
}

CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default=REDIS_URL)
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULE = {
    "metering.ensure_usage_partitions": {
        "task": "metering.ensure_usage_partitions",
        "schedule": 3600.0,
    },
    "metering.scrape_telemetry": {
        "task": "metering.scrape_telemetry",
        "schedule": METERING.telemetry_seconds,
    },
    "metering.attribute_energy": {
        "task": "metering.attribute_energy",
        "schedule": METERING.attribution_seconds,
    },
    "metering.calibrate_energy": {
        "task": "metering.calibrate_energy",
        "schedule": METERING.calibration_seconds,
    },
    "billing.rollup_usage": {"task": "billing.rollup_usage", "schedule": 300.0},
    "billing.compute_margins": {"task": "billing.compute_margins", "schedule": 900.0},
    # Closes the previous month once its grace window is over; a no-op on other runs.
    "billing.close_invoices": {"task": "billing.close_invoices", "schedule": 3600.0},
    "billing.budget_alerts": {"task": "billing.budget_alerts", "schedule": 300.0},
    "billing.stripe_push_invoices": {"task": "billing.stripe_push_invoices", "schedule": 600.0},
    "billing.stripe_reconcile": {"task": "billing.stripe_reconcile", "schedule": 3600.0},
    # Prepaid credits (billing/credits.py, billing/drawdown.py): ledger movements to the
    # gateway's counters, usage drawn from grants, balance low / exhausted webhooks; accounts
    # under their auto top-up threshold are charged off-session (billing/checkout.py).
    "billing.credits_sync": {"task": "billing.credits_sync", "schedule": 10.0},
    "billing.credits_drawdown": {"task": "billing.credits_drawdown", "schedule": 300.0},
    "billing.credits_balance_watch": {"task": "billing.credits_balance_watch", "schedule": 60.0},
    "billing.credits_auto_topup": {"task": "billing.credits_auto_topup", "schedule": 60.0},
    # Customer webhooks due now (customers/webhook_delivery.py); each event also kicks one.
    "customers.webhook_deliveries_send": {
        "task": "customers.webhook_deliveries_send",
        "schedule": 15.0,
    },
    "gateway.probe_backends": {
        "task": "gateway.probe_backends",
        "schedule": read(env, "BACKEND_PROBE_SECONDS", number(inclusive=False), default=5.0),
    },
}

LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "json": {"()": "config.logs.json_formatter"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "json"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
}
