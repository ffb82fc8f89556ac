"""Signals django-capi sends. Receivers can never change what happens to an event: they run
after the outcome is written, and their exceptions are logged, not raised."""

from __future__ import annotations

import logging
from typing import Any

from django.dispatch import Signal

logger = logging.getLogger(__name__)

#: New outbox rows were committed (sent once per transaction, after the commit).
outbox_committed = Signal()
#: Meta accepted ``events`` (a list of ``OutboxEvent``).
event_delivered = Signal()
#: ``events`` became ``failed``; ``reason`` is an ``OutboxEvent.FailureReason``.
event_failed = Signal()
#: Meta refused the token or its permissions for ``pixel_id``; ``error`` says how. Sent once
#: when sending stops, not for every request.
token_invalid = Signal()


#: An incident began: ``kind`` ("backlog", "failure_rate") and a ``message`` to act on.
alert_raised = Signal()
#: That incident is over.
alert_resolved = Signal()


def send_safely(signal: Signal, **kwargs: Any) -> None:
    for receiver, result in signal.send_robust(sender=None, **kwargs):
        if isinstance(result, Exception):
            logger.error("django-capi signal receiver %r raised", receiver, exc_info=result)
