"""Signals django-capi sends. Receivers can never change what happens to an event: they run
after the outcome is written, and their exceptions are logged, not raised."""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

from django.db import connections, transaction
from django.dispatch import Signal

logger = logging.getLogger(__name__)

#: New outbox rows were committed on database ``using`` (sent once per transaction, after the
#: commit). Capture only announces it; the delivery side (``dispatch``) decides what to do.
outbox_committed = Signal()
#: Meta accepted ``events`` (a list of ``OutboxEvent``).
event_delivered = Signal()
#: ``events`` became ``failed``; ``reason`` is an ``OutboxEvent.FailureReason``.
event_failed = Signal()
#: Meta refused the token or its permissions for ``pixel_id``; ``error`` says how. Sent once
#: when sending stops, not for every request.
token_invalid = Signal()


#: An incident began on one pixel: ``kind`` ("backlog", "failure_rate"), ``pixel_id`` and a
#: ``message`` to act on (it names the pixel too).
alert_raised = Signal()
#: That incident is over: ``kind`` and ``pixel_id`` (``message`` is empty).
alert_resolved = Signal()


def send_safely(signal: Signal, **kwargs: Any) -> None:
    for receiver, result in signal.send_robust(sender=None, **kwargs):
        if isinstance(result, Exception):
            logger.error("django-capi signal receiver %r raised", receiver, exc_info=result)


def send_on_commit(signal: Signal, using: str) -> None:
    """Send ``signal`` (with ``using``) once the current transaction on ``using`` commits, and
    once only however often a transaction asks; at once in autocommit."""
    connection = connections[using]
    # Entries of run_on_commit are (savepoint ids, callback, robust); those of a rolled-back
    # savepoint are gone from the list, so a later request in the transaction still counts.
    if connection.in_atomic_block and any(
        _sends(entry[1], signal, using) for entry in connection.run_on_commit
    ):
        return
    transaction.on_commit(partial(send_safely, signal, using=using), using=using, robust=True)


def _sends(callback: object, signal: Signal, using: str) -> bool:
    return (
        isinstance(callback, partial)
        and callback.func is send_safely
        and callback.args == (signal,)
        and callback.keywords == {"using": using}
    )
