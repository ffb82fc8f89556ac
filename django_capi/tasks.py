"""Celery tasks: thin wrappers around ``delivery.drain``. The outbox table is the queue; a
task only wakes the code that drains it, so a lost task loses no event."""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task
from django.core.cache import cache
from django.db import connections

from . import alerts, outbox
from .delivery import DrainReport, drain

logger = logging.getLogger(__name__)

#: A task stops claiming new batches after this long, well inside broker visibility
#: timeouts, and queues a successor if rows are left.
TASK_TIME_LIMIT = 50.0
#: Set while a drain task is queued; the task clears it when it starts (in a shared cache).
WAKE_FLAG = "django_capi:drain-queued"
#: With a per-process cache the worker cannot clear the flag, and a queued task that never
#: ran (a dead broker) must not block wake-ups for long: the flag expires after this.
WAKE_FLAG_SECONDS = 10


@shared_task(name="django_capi.drain_outbox", ignore_result=True)
def drain_outbox(using: str | None = None) -> dict[str, Any]:
    """Deliver due events of ``using``, or of every database with an outbox. Many may run at
    once: each batch is leased to one of them.

    Schedule it with Celery beat as a sweep that catches lost wake-ups and due retries.
    """
    # Cleared before claiming, so a row committed from now on queues a new task.
    clear_wake_flag()
    report = DrainReport()
    for alias in [using] if using else outbox.databases():
        batch = drain(using=alias, time_limit=TASK_TIME_LIMIT)
        if batch.unfinished:
            drain_outbox.delay(using=alias)  # a backlog: keep going in a fresh task
        report += batch
        alerts.evaluate_safely(alias)
    return vars(report)


def queue_drain(using: str) -> None:
    """Queue a drain of ``using`` unless one already waits in the queue."""
    if not cache.add(f"{WAKE_FLAG}:{using}", 1, timeout=WAKE_FLAG_SECONDS):
        return  # a drain task is already queued; it will see these rows too
    try:
        drain_outbox.delay(using=using)
    except Exception:
        clear_wake_flag(using)
        logger.exception("django-capi could not queue a drain; the periodic sweep will")


def clear_wake_flag(using: str | None = None) -> None:
    aliases = [using] if using else list(connections)
    cache.delete_many([f"{WAKE_FLAG}:{alias}" for alias in aliases])
