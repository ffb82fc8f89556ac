"""Waking the drainer once new outbox rows are committed.

The wake-up is only a hint: a row's existence is decided by its own transaction, and a lost
wake-up is caught by the periodic sweep. So it runs on commit, at most once per transaction,
however many rows the transaction wrote.
"""

from __future__ import annotations

import logging

from django.db import DEFAULT_DB_ALIAS, connections, transaction

from . import signals

logger = logging.getLogger(__name__)


def wake_drainer_on_commit(using: str = DEFAULT_DB_ALIAS) -> None:
    """Ask for a drain once the current transaction on ``using`` commits (now, in autocommit)."""
    connection = connections[using]
    if connection.in_atomic_block and any(
        # Entries are (savepoint ids, callback, robust).
        entry[1] is wake_drainer
        for entry in connection.run_on_commit
    ):
        return
    transaction.on_commit(wake_drainer, using=using, robust=True)


def wake_drainer() -> None:
    """New rows are committed: tell whoever drains the outbox."""
    logger.debug("outbox rows committed; waking the drainer")
    for receiver, error in signals.outbox_committed.send_robust(sender=None):
        if isinstance(error, Exception):
            logger.error("outbox_committed receiver %r raised", receiver, exc_info=error)
