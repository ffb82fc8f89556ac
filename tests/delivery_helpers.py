"""Outbox rows ready to send, made directly (fast) with Meta-valid payloads."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta

from django.utils import timezone

from django_capi.models import OutboxEvent

PIXEL = "1234567890"
EMAIL_HASH = hashlib.sha256(b"shopper@example.com").hexdigest()


def payload(event_id: str, *, event_time: datetime | None = None) -> dict[str, object]:
    moment = event_time or timezone.now()
    return {
        "event_name": "Lead",
        "event_time": int(moment.timestamp()),
        "event_id": event_id,
        "action_source": "system_generated",
        "user_data": {"em": EMAIL_HASH},
    }


def make_rows(
    count: int,
    *,
    prefix: str = "ev",
    pixel_id: str = PIXEL,
    age: timedelta = timedelta(0),
    action_source: str = "system_generated",
    using: str = "default",
) -> list[OutboxEvent]:
    moment = timezone.now() - age
    rows = []
    for n in range(count):
        body = payload(f"{prefix}-{n}", event_time=moment)
        body["action_source"] = action_source
        rows.append(
            OutboxEvent(
                pixel_id=pixel_id,
                event_name="Lead",
                event_id=f"{prefix}-{n}",
                event_time=moment,
                action_source=action_source,
                payload=body,
            )
        )
    OutboxEvent.objects.using(using).bulk_create(rows, batch_size=500)
    made = OutboxEvent.objects.using(using).filter(event_id__startswith=f"{prefix}-")
    return list(made.order_by("pk"))


def make_due() -> None:
    """Let time pass for every waiting row (backoffs, pauses), as the database sees it."""
    OutboxEvent.objects.filter(status="pending").update(
        next_attempt_at=timezone.now() - timedelta(seconds=1)
    )
