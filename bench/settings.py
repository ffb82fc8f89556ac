"""Settings for the benchmark processes: the bench shop, django-capi and nothing else.

``DATABASE_URL`` picks the database and ``CAPI_GRAPH_API_URL`` the Graph API stand-in; both
are set by ``bench.run`` for each process it starts.
"""

import environ

env = environ.Env()

SECRET_KEY = "bench-only-not-secret"  # noqa: S105 -- never served
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django_capi",
    "bench.shop",
]

DATABASES = {"default": env.db("DATABASE_URL", default="sqlite:///:memory:")}

DJANGO_CAPI = {
    "PIXEL_ID": "1234567890",
    "ACCESS_TOKEN": "bench-token-not-real",
    "DEFAULT_PHONE_REGION": "US",
    # The bench drains explicitly; no broker, no cache flag.
    "WAKE": "none",
    # No alert mail from a benchmark.
    "ALERT_MAIL_ADMINS": False,
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
