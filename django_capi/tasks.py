"""Celery tasks: thin wrappers around ``delivery.drain``. The outbox table is the queue; a
task only wakes the code that drains it, so a lost task loses no event."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from . import dispatch
from .delivery import drain

#: A task stops claiming new batches after this long, well inside broker visibility
#: timeouts; whatever is left is picked up by the next wake-up or the periodic sweep.
TASK_TIME_LIMIT = 50.0


@shared_task(name="django_capi.drain_outbox", ignore_result=True)
def drain_outbox() -> dict[str, Any]:
    """Deliver due events. Many may run at once: each batch is leased to one of them.

    Schedule it with Celery beat as a sweep that catches lost wake-ups and due retries.
    """
    # Cleared before claiming, so a row committed from now on schedules a new task.
    dispatch.clear_wake_flag()
    return vars(drain(time_limit=TASK_TIME_LIMIT))
