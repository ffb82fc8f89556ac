"""Waking the drainer once new outbox rows are committed.

The wake-up is only a hint: a row's existence is decided by its own transaction, and a lost
wake-up is caught by the periodic sweep. So it runs on commit, at most once per transaction,
and at most one Celery task waits in the queue at a time however many orders commit.
"""

from __future__ import annotations

import logging
from functools import partial

from django.core.cache import cache
from django.db import DEFAULT_DB_ALIAS, connections, transaction

from . import signals
from .conf import capi_settings

logger = logging.getLogger(__name__)

#: Set while a drain task is queued; the task clears it when it starts (in a shared cache).
WAKE_FLAG = "django_capi:drain-queued"
#: With a per-process cache the worker cannot clear the flag, and a queued task that never
#: ran (a dead broker) must not block wake-ups for long: the flag expires after this.
WAKE_FLAG_SECONDS = 10


def wake_drainer_on_commit(using: str = DEFAULT_DB_ALIAS) -> None:
    """Ask for a drain once the current transaction on ``using`` commits (now, in autocommit)."""
    connection = connections[using]
    # Entries of run_on_commit are (savepoint ids, callback, robust); one wake-up per
    # transaction is enough. Callbacks of a rolled-back savepoint are gone from the list.
    if connection.in_atomic_block and any(
        isinstance(entry[1], partial) and entry[1].func is wake_drainer
        for entry in connection.run_on_commit
    ):
        return
    transaction.on_commit(partial(wake_drainer, using), using=using, robust=True)


def wake_drainer(using: str = DEFAULT_DB_ALIAS) -> None:
    """New rows are committed: tell whoever drains the outbox."""
    signals.send_safely(signals.outbox_committed)
    from .alerts import evaluate_from_web

    evaluate_from_web(using)
    if capi_settings().wake != "celery":
        return  # cron, `capi_drain --loop` or the beat sweep drain on their own schedule
    if not cache.add(f"{WAKE_FLAG}:{using}", 1, timeout=WAKE_FLAG_SECONDS):
        return  # a drain task is already queued; it will see these rows too
    from .tasks import drain_outbox

    try:
        drain_outbox.delay(using=using)
    except Exception:
        clear_wake_flag(using)
        logger.exception("django-capi could not queue a drain; the periodic sweep will")


def clear_wake_flag(using: str | None = None) -> None:
    aliases = [using] if using else list(connections)
    cache.delete_many([f"{WAKE_FLAG}:{alias}" for alias in aliases])
