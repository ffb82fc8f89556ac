"""Settings for the test suite. ``DATABASE_URL`` picks the database (SQLite by default)."""

import json
import os
from typing import Any

import django
import environ

env = environ.Env()

SECRET_KEY = "tests-only-not-secret"
DEBUG = False
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
TIME_ZONE = "UTC"
ALLOWED_HOSTS = ["*"]
# Django 6.0 takes addresses and deprecates the (name, address) pairs that 5.2 requires.
ADMINS: list[Any] = (
    ["admin@shop.example.com"]
    if django.VERSION >= (6, 0)
    else [("Shop admin", "admin@shop.example.com")]
)
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django_capi",
    "tests.shop",
]

DATABASES = {"default": env.db("DATABASE_URL", default="sqlite:///:memory:")}
# A second database proves events follow the alias of the save that made them.
DATABASES["other"] = {**DATABASES["default"], "NAME": f"{DATABASES['default']['NAME']}_other"}
if "mysql" in DATABASES["default"]["ENGINE"]:
    # MariaDB as Django recommends it: 4-byte UTF-8 (emoji in a product name), READ COMMITTED
    # (the default REPEATABLE READ makes a drainer's claim see a stale snapshot) and strict
    # mode, so a too-long value is an error instead of being truncated silently.
    for database in DATABASES.values():
        database["OPTIONS"] = {
            "charset": "utf8mb4",
            "isolation_level": "read committed",
            "init_command": "SET sql_mode='STRICT_TRANS_TABLES'",
        }
if "postgresql" in DATABASES["default"]["ENGINE"] or "mysql" in DATABASES["default"]["ENGINE"]:
    # One test database per run, so CI and a developer's run on the same server never collide.
    for alias, database in DATABASES.items():
        database["TEST"] = {"NAME": f"test_capi_{alias}_{os.getpid()}"}
        if "mysql" in database["ENGINE"]:
            # The server's default collation, as a shop's database has: the migrations alone
            # must make the outbox's keys exact (tests/test_databases.py).
            database["TEST"]["CHARSET"] = "utf8mb4"

MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

ROOT_URLCONF = "tests.urls"

DJANGO_CAPI = {
    "PIXEL_ID": "1234567890",
    "ACCESS_TOKEN": "test-token-not-real",
    "DEFAULT_PHONE_REGION": "US",
    # Tests drain explicitly; the Celery test switches this on for itself.
    "WAKE": "none",
    # Processes started by tests get their extra settings here (JSON).
    **json.loads(os.environ.get("CAPI_TEST_SETTINGS", "{}")),
}

# tests/services.py names the Redis it found or started; never CELERY_BROKER_URL in the
# environment, which Celery would read into the apps the tests build without a broker.
CELERY_BROKER_URL = env.str("CAPI_TEST_REDIS_URL", default="redis://127.0.0.1:6379/15")
CELERY_TASK_IGNORE_RESULT = True
