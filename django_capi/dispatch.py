"""Waking the drainer when capture announces committed rows.

Capture knows nothing of delivery: once per transaction, after the commit, it sends
``signals.outbox_committed``. This receiver, connected in ``AppConfig.ready()``, decides what
that is worth. The wake-up is only a hint: a row's existence is decided by its own
transaction, and a lost wake-up is caught by the periodic sweep. So at most one Celery task
waits in the queue at a time however many orders commit, and the alerts are looked at no
more than once a minute: the common commit costs a cache lookup or two, never a query.
"""

from __future__ import annotations

from django.db import DEFAULT_DB_ALIAS

from . import alerts, signals
from .conf import capi_settings


def connect() -> None:
    signals.outbox_committed.connect(wake_drainer, dispatch_uid="django_capi.dispatch")


def wake_drainer(sender: object = None, using: str = DEFAULT_DB_ALIAS, **kwargs: object) -> None:
    """New rows are committed on ``using``: tell whoever drains the outbox."""
    # A backlog with no worker running at all is exactly when no drainer would notice it.
    alerts.evaluate_from_web(using)
    if capi_settings().wake != "celery":
        return  # cron, `capi_drain --loop` or the beat sweep drain on their own schedule
    from .tasks import queue_drain  # Celery is an optional dependency

    queue_drain(using)
