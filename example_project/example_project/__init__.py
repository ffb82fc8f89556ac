# Loads the Celery app in every process, the web server's included: its commits queue the
# drain task (django-capi's WAKE resolves to "celery").
from .celery import app as celery_app

__all__ = ("celery_app",)
