"""Questions about the outbox that several modules ask (the alerts, the health page).

Each one is a single query an index bounds, timed by the database clock like every other
time in the outbox.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db.models import (
    DateTimeField,
    DurationField,
    ExpressionWrapper,
    F,
    Min,
    Q,
    QuerySet,
    Value,
)
from django.db.models.expressions import Combinable
from django.db.models.functions import Now

from .models import OutboxEvent


def oldest_due_age(rows: QuerySet[OutboxEvent], now: datetime | None) -> timedelta | None:
    """How long the oldest due row of ``rows`` has waited for a drainer, as of ``now`` (the
    database's clock when None); None when none is due."""
    # The first entry of the partial index capi_outbox_due that no worker holds, like a
    # claim's: rows in flight keep their next_attempt_at (a claim writes only the lease).
    clock: Combinable = Now() if now is None else Value(now, output_field=DateTimeField())
    waited = ExpressionWrapper(clock - F("next_attempt_at"), output_field=DurationField())
    free = Q(leased_until=None) | Q(leased_until__lte=clock)
    age: timedelta | None = (
        rows.filter(free, status=OutboxEvent.Status.PENDING, next_attempt_at__lte=clock)
        .order_by("next_attempt_at")
        .annotate(waited=waited)
        .values_list("waited", flat=True)
        .first()
    )
    return None if age is None else max(age, timedelta(0))


def due_ages_by_pixel(
    rows: QuerySet[OutboxEvent], *, longer_than: timedelta
) -> dict[str, timedelta]:
    """For each pixel with a row due for longer than ``longer_than`` that no worker holds, how
    long its oldest such row has waited (the database's clock).

    While the drainers keep up, the oldest due row (one probe of capi_outbox_due) is younger
    than the line and that is all; during a backlog the rows past the line are grouped by
    pixel (about 0.2 s for 300,000 of them on PostgreSQL)."""
    oldest = oldest_due_age(rows, None)
    if oldest is None or oldest <= longer_than:
        return {}
    free = Q(leased_until=None) | Q(leased_until__lte=Now())
    waited = ExpressionWrapper(Now() - Min("next_attempt_at"), output_field=DurationField())
    found = (
        rows.filter(
            free, status=OutboxEvent.Status.PENDING, next_attempt_at__lte=Now() - longer_than
        )
        .values_list("pixel_id")
        .annotate(waited=waited)
        .order_by()
    )
    return {pixel_id: max(age, timedelta(0)) for pixel_id, age in found}
