"""The example shop: SQLite and embedded defaults, so it runs with no setup at all."""

from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent
env = environ.Env()

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
            ]
        },
    }
]
STATIC_URL = "static/"

# Each request is one transaction: an order and its outbox event commit together.
DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}")
    | {"ATOMIC_REQUESTS": True}
}

# django-capi reads CAPI_PIXEL_ID, CAPI_ACCESS_TOKEN, CAPI_GRAPH_API_URL and
# CAPI_TEST_EVENT_CODE from the environment for keys left out here.
# The demo's defaults: the local Graph API emulator (`manage.py capi_fakegraph`) and a
# drainer polling the outbox (`manage.py capi_drain --loop`) instead of Celery.
DJANGO_CAPI = {
    "PIXEL_ID": env.str("CAPI_PIXEL_ID", default="1234567890123456"),
    "ACCESS_TOKEN": env.str("CAPI_ACCESS_TOKEN", default="demo-token"),
    "GRAPH_API_URL": env.str("CAPI_GRAPH_API_URL", default="http://127.0.0.1:8111"),
    "DEFAULT_PHONE_REGION": "US",
    "WAKE": "none",
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"django_capi": {"handlers": ["console"], "level": "INFO"}},
}
