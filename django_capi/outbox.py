"""Claiming outbox rows with a lease, and writing outcomes back only while the lease holds.

The only module that knows about locking. Every time comes from the database clock
(``Now()``), so workers on hosts whose clocks disagree still agree on what is due. No
transaction stays open while events travel to Meta: a claim is one short transaction, and
each write-back is a single UPDATE fenced on the lease token, so a worker whose lease expired
cannot overwrite the result of the worker that took the rows over.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import connections, transaction
from django.db.models import F, QuerySet
from django.db.models.functions import Now
from django.utils import timezone

from .client import GraphResult
from .models import DeliveryAttempt, OutboxEvent

PENDING = OutboxEvent.Status.PENDING


@dataclass(frozen=True)
class Lease:
    """Rows one worker owns until ``leased_until``; ``db_now`` is the database's clock at the
    claim, for decisions that must not depend on this host's clock."""

    token: uuid.UUID
    using: str
    rows: list[OutboxEvent]
    db_now: datetime


def claim(
    *, limit: int, lease_seconds: int, using: str, exclude_pixels: Collection[str] = ()
) -> Lease:
    """Lease up to ``limit`` due rows and count an attempt for each.

    Moving ``next_attempt_at`` to the end of the lease is what makes a row invisible to other
    claims while it is in flight, and visible again if this worker dies.
    """
    token = uuid.uuid4()
    due = OutboxEvent.objects.using(using).filter(status=PENDING, next_attempt_at__lte=Now())
    if exclude_pixels:
        due = due.exclude(pixel_id__in=exclude_pixels)
    oldest_first = due.order_by("next_attempt_at", "pk")
    lease_end = Now() + timedelta(seconds=lease_seconds)
    changes: dict[str, Any] = {
        "lease_token": token,
        "leased_until": lease_end,
        "next_attempt_at": lease_end,
        "attempts": F("attempts") + 1,
    }
    if connections[using].features.has_select_for_update_skip_locked:
        # PostgreSQL, MySQL: concurrent claims skip each other's rows instead of waiting.
        with transaction.atomic(using=using):
            ids = list(
                oldest_first.select_for_update(skip_locked=True).values_list("pk", flat=True)[
                    :limit
                ]
            )
            if ids:
                OutboxEvent.objects.using(using).filter(pk__in=ids).update(**changes)
    else:
        # SQLite: one UPDATE is atomic under its database lock, and it re-checks that each
        # row is still due, so two claims can never take the same row (compare-and-set).
        due.filter(pk__in=oldest_first.values("pk")[:limit]).update(**changes)
    rows = list(
        OutboxEvent.objects.using(using)
        .filter(lease_token=token)
        .annotate(db_now=Now())
        .order_by("pixel_id", "pk")
    )
    # Nothing claimed means nothing to decide, so this host's clock is good enough then.
    db_now = rows[0].db_now if rows else timezone.now()
    return Lease(token=token, using=using, rows=list[OutboxEvent](rows), db_now=db_now)


def renew(lease: Lease, ids: Iterable[int], lease_seconds: int) -> int:
    """Keep rows that are still being worked on (a batch being bisected) from expiring."""
    lease_end = Now() + timedelta(seconds=lease_seconds)
    return _owned(lease, ids).update(leased_until=lease_end, next_attempt_at=lease_end)


def mark_delivered(lease: Lease, ids: Iterable[int], result: GraphResult) -> int:
    return _owned(lease, ids).update(
        status=OutboxEvent.Status.DELIVERED,
        delivered_at=Now(),
        last_error="",
        **_unleased(),
        **_answer(result),
    )


def mark_failed(
    lease: Lease,
    ids: Iterable[int],
    *,
    reason: OutboxEvent.FailureReason,
    error: str,
    result: GraphResult | None = None,
) -> int:
    answer = _answer(result) if result is not None else {}
    return _owned(lease, ids).update(
        status=OutboxEvent.Status.FAILED,
        failure_reason=reason,
        last_error=error,
        **_unleased(),
        **answer,
    )


def retry_later(
    lease: Lease, ids: Iterable[int], *, delay: timedelta, error: str, result: GraphResult
) -> int:
    """Back to ``pending`` after ``delay``; the attempt counts."""
    return _owned(lease, ids).update(
        next_attempt_at=Now() + delay, last_error=error, **_unleased(), **_answer(result)
    )


def release(
    lease: Lease, ids: Iterable[int], *, delay: timedelta, error: str, result: GraphResult
) -> int:
    """Back to ``pending`` after ``delay`` without spending an attempt: the events were not
    at fault (the pixel is rate limited or its token is broken)."""
    return _owned(lease, ids).update(
        next_attempt_at=Now() + delay,
        attempts=F("attempts") - 1,
        last_error=error,
        **_unleased(),
        **_answer(result),
    )


def postpone_pixel(using: str, pixel_id: str, delay: timedelta) -> int:
    """Move a paused pixel's due rows past the pause, so claims stop scanning them."""
    until = Now() + delay
    return (
        OutboxEvent.objects.using(using)
        .filter(pixel_id=pixel_id, status=PENDING, next_attempt_at__lt=until)
        .update(next_attempt_at=until)
    )


def resume_pixel(using: str, pixel_id: str) -> int:
    """Make a pixel's waiting rows due now (its token was replaced); rows in flight stay."""
    return (
        OutboxEvent.objects.using(using)
        .filter(pixel_id=pixel_id, status=PENDING, lease_token=None, next_attempt_at__gt=Now())
        .update(next_attempt_at=Now())
    )


def record_attempts(
    lease: Lease,
    rows: Iterable[OutboxEvent],
    *,
    result: GraphResult,
    outcome: DeliveryAttempt.Outcome,
    batch_size: int,
) -> None:
    error = result.error
    DeliveryAttempt.objects.using(lease.using).bulk_create(
        DeliveryAttempt(
            event_id=row.pk,
            outcome=outcome,
            batch_size=batch_size,
            http_status=result.http_status,
            error_code=error.code if error else None,
            error_subcode=error.subcode if error else None,
            error_type=error.type[:100] if error else "",
            error_title=error.title[:200] if error else "",
            error_message=error.message if error else "",
            fbtrace_id=result.fbtrace_id[:64],
            events_received=result.events_received,
            duration_ms=result.duration_ms,
        )
        for row in rows
    )


def _owned(lease: Lease, ids: Iterable[int]) -> QuerySet[OutboxEvent]:
    return OutboxEvent.objects.using(lease.using).filter(
        pk__in=list(ids), lease_token=lease.token, status=PENDING
    )


def _unleased() -> dict[str, Any]:
    return {"lease_token": None, "leased_until": None}


def _answer(result: GraphResult) -> dict[str, Any]:
    error = result.error
    return {
        "last_attempt_at": Now(),
        "last_http_status": result.http_status,
        "last_error_code": error.code if error else None,
        "last_error_subcode": error.subcode if error else None,
        "fbtrace_id": result.fbtrace_id[:64],
    }
