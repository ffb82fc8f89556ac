"""Celery tasks: thin wrappers around ``delivery.drain``. The outbox table is the queue; a
task only wakes the code that drains it, so a lost task loses no event."""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task

from . import alerts, dispatch, outbox
from .delivery import DrainReport, drain

logger = logging.getLogger(__name__)

#: A task stops claiming new batches after this long, well inside broker visibility
#: timeouts, and queues a successor if rows are left.
TASK_TIME_LIMIT = 50.0


@shared_task(name="django_capi.drain_outbox", ignore_result=True)
def drain_outbox(using: str | None = None) -> dict[str, Any]:
    """Deliver due events of ``using``, or of every database with an outbox. Many may run at
    once: each batch is leased to one of them.

    Schedule it with Celery beat as a sweep that catches lost wake-ups and due retries.
    """
    # Cleared before claiming, so a row committed from now on queues a new task.
    dispatch.clear_wake_flag()
    report = DrainReport()
    for alias in [using] if using else outbox.databases():
        batch = drain(using=alias, time_limit=TASK_TIME_LIMIT)
        if batch.unfinished:
            drain_outbox.delay(using=alias)  # a backlog: keep going in a fresh task
        report += batch
        try:
            alerts.evaluate(alias)
        except Exception:  # an alert problem must not undo a drain that worked
            logger.exception("django-capi could not evaluate its alerts on %r", alias)
    return vars(report)
