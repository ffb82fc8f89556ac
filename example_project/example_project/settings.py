"""The example shop: SQLite, Celery on a broker that needs no server, and the local Graph API
emulator, so it runs with no setup at all (`make demo`)."""

import os
from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent
env = environ.Env()

# The demo's state: the SQLite database, the Celery broker's folders, the shared cache, the
# beat schedule and the logs. `make demo-check` points it at a temporary folder.
VAR_DIR = Path(env.str("SHOP_VAR_DIR", default=str(BASE_DIR / "var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)

SECRET_KEY = env.str("SECRET_KEY", default="example-shop-not-secret")
DEBUG = env.bool("DEBUG", default=True)
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_capi",
    "shop",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django_capi.middleware.CapiMiddleware",
]

ROOT_URLCONF = "example_project.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "shop.views.cart_summary",
            ]
        },
    }
]
STATIC_URL = "static/"

# Each request is one transaction: an order and its outbox event commit together.
DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'db.sqlite3'}")
    | {"ATOMIC_REQUESTS": True}
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The web server, the Celery worker and beat share one file: WAL lets readers run beside
    # the writer, IMMEDIATE takes the write lock at BEGIN (no lock upgrade that can fail), and
    # a writer waits up to 20 s for another instead of failing.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 20,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL;",
    }

# Shared by every process, so the Celery worker can clear django-capi's wake-up flag.
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
        "LOCATION": str(VAR_DIR / "cache"),
    }
}

# Celery (example_project/celery.py). Without CELERY_BROKER_URL, kombu's filesystem transport
# in VAR_DIR: a real broker that needs no server. With it (e.g. redis://127.0.0.1:6379/0),
# that broker.
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="filesystem://")
if CELERY_BROKER_URL.startswith("filesystem://"):
    _QUEUE_DIR = VAR_DIR / "broker"
    _QUEUE_DIR.mkdir(exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_QUEUE_DIR),
        "data_folder_out": str(_QUEUE_DIR),
        "control_folder": str(VAR_DIR / "broker-control"),
        "store_processed": False,
    }
CELERY_TASK_IGNORE_RESULT = True
CELERY_BEAT_SCHEDULE = {
    # The sweep: catches lost wake-ups and delivers retries when they fall due. Every 10 s so
    # the demo shows a retry soon after a fault; 60 s is plenty in production.
    "capi-drain-outbox": {
        "task": "django_capi.drain_outbox",
        "schedule": env.float("SHOP_SWEEP_SECONDS", default=10.0),
    },
}
# Demo only: a single-user shop on SQLite. Run the outbox on PostgreSQL in production.
SILENCED_SYSTEM_CHECKS = ["django_capi.W004"]

# With CAPI_PIXEL_ID, CAPI_ACCESS_TOKEN and CAPI_TEST_EVENT_CODE all set, events go to Meta
# (to Events Manager's Test Events only); otherwise to the local Graph API emulator
# (`manage.py capi_fakegraph`). django-capi reads the CAPI_* variables for keys left out here.
REAL_META = all(
    os.environ.get(name) for name in ("CAPI_PIXEL_ID", "CAPI_ACCESS_TOKEN", "CAPI_TEST_EVENT_CODE")
)
DJANGO_CAPI = {
    "DEFAULT_PHONE_REGION": "US",
    # Short backoff so a retry shows within seconds (production: the default, 30 s and up).
    "RETRY_BASE_SECONDS": env.float("SHOP_RETRY_BASE_SECONDS", default=5.0),
}
if not REAL_META:
    DJANGO_CAPI |= {
        "PIXEL_ID": "1234567890123456",
        "ACCESS_TOKEN": "demo-token",
        "GRAPH_API_URL": env.str("CAPI_GRAPH_API_URL", default="http://127.0.0.1:8111"),
    }

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"django_capi": {"handlers": ["console"], "level": "INFO"}},
}
