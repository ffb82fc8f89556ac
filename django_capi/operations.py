"""What operators do to events: replay failures, send now, cancel, purge old data.

One module, so the admin's actions and the management commands behave the same.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import timedelta

from django.db import connections, router, transaction
from django.db.models import F, Q, QuerySet
from django.db.models.functions import Now
from django.db.models.lookups import GreaterThan
from django.utils import timezone

from . import pixels
from .conf import capi_settings
from .constants import ActionSource, match_key_bits
from .context import USER_DATA_KEYS
from .delivery import SEND_MARGIN, DrainReport, drain
from .models import AttemptEvent, DeliveryAttempt, OutboxEvent
from .signals import outbox_committed, send_on_commit
from .validation import MAX_EVENT_AGE, MAX_PHYSICAL_STORE_EVENT_AGE, max_event_age

Status = OutboxEvent.Status
#: "Send now" works inside a web request: it sends at most this many events, for at most
#: this long; the drainers take the rest.
SEND_NOW_LIMIT = 5000
SEND_NOW_SECONDS = 20.0


@dataclass(frozen=True)
class ReplayResult:
    replayed: int
    #: Failed rows Meta would refuse now: older than ``validation.max_event_age``.
    too_old: int
    #: Failed while being built (no payload): fix the data and save the object again.
    unbuilt: int
    #: Neither failed nor cancelled.
    skipped: int

    def __str__(self) -> str:
        parts = [f"{self.replayed} replayed"]
        if self.too_old:
            parts.append(
                f"{self.too_old} refused: older than Meta accepts ({MAX_EVENT_AGE.days} days, "
                f"{MAX_PHYSICAL_STORE_EVENT_AGE.days} in store)"
            )
        if self.unbuilt:
            parts.append(
                f"{self.unbuilt} refused: invalid when recorded; fix the data and save the "
                "object again to rebuild them"
            )
        if self.skipped:
            parts.append(f"{self.skipped} skipped: neither failed nor cancelled")
        return "; ".join(parts)


def replay(events: QuerySet[OutboxEvent]) -> ReplayResult:
    """Give failed (or cancelled) events a fresh attempts budget and send them again."""
    failed = events.filter(status__in=[Status.FAILED, Status.CANCELLED])
    replayable = failed.exclude(payload={}).exclude(_too_old())
    total, failed_count = events.count(), failed.count()
    unbuilt = failed.filter(payload={}).count()
    using = events.db
    with transaction.atomic(using=using):
        replayed = replayable.update(
            status=Status.PENDING,
            failure_reason="",
            last_error="",
            attempts=0,
            next_attempt_at=Now(),
            leased_until=None,
        )
        if replayed:
            send_on_commit(outbox_committed, using)
    return ReplayResult(
        replayed=replayed,
        too_old=failed_count - unbuilt - replayed,
        unbuilt=unbuilt,
        skipped=total - failed_count,
    )


def send_now(events: QuerySet[OutboxEvent]) -> DrainReport | None:
    """Deliver the selected pending events at once, whatever their backoff says.

    Inside a transaction (an admin action under ``ATOMIC_REQUESTS``) the drain runs in a
    thread of its own, with its own connection: a drain must never hold the caller's
    transaction open while it talks to Meta. On SQLite, whose writers lock the whole
    database, that thread would wait for the caller forever: the drain then runs right
    after the caller's commit, and this returns None.
    """
    using = events.db
    blocked = pixels.gate(using, capi_settings()).blocked
    ids = list(
        events.filter(status=Status.PENDING)
        .exclude(pixel_id__in=blocked)  # paused or circuit open: they would only wait, due
        .values_list("pk", flat=True)[:SEND_NOW_LIMIT]
    )
    if not ids:
        return DrainReport()
    connection = connections[using]
    if not connection.in_atomic_block:
        return _send_now(using, ids)
    if connection.vendor == "sqlite":
        transaction.on_commit(lambda: _send_now(using, ids), using=using, robust=True)
        return None
    outcome: list[DrainReport | BaseException] = []

    def run() -> None:
        try:
            outcome.append(_send_now(using, ids))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            outcome.append(exc)
        finally:
            connections.close_all()

    worker = threading.Thread(target=run, name="django-capi-send-now")
    worker.start()
    worker.join()
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


def _send_now(using: str, ids: list[int]) -> DrainReport:
    OutboxEvent.objects.using(using).filter(
        pk__in=ids, status=Status.PENDING, leased_until=None
    ).update(next_attempt_at=Now())
    return drain(using=using, only=ids, time_limit=SEND_NOW_SECONDS)


def cancel(events: QuerySet[OutboxEvent]) -> int:
    """Never send these: pending rows not in flight, and failed ones, become ``cancelled``."""
    return events.filter(
        Q(status=Status.PENDING, leased_until=None) | Q(status=Status.FAILED)
    ).update(status=Status.CANCELLED)


@dataclass(frozen=True)
class PurgeResult:
    #: Delivered rows reduced to their deduplication key (payload and history deleted).
    deleted: int
    scrubbed: int


def purge(
    *,
    delivered_after_days: int,
    scrub_after_days: int,
    using: str | None = None,
    batch_size: int = 1000,
    dry_run: bool = False,
) -> PurgeResult:
    """Delete what old delivered rows carry, and remove the browser's IP, user agent, fbc
    and fbp from rows older than ``scrub_after_days`` that can no longer be sent.

    A delivered row keeps its (pixel, event name, event id) and status: it is what tells a
    later save of the same order that its Purchase was already reported. Everything else
    goes: the payload with its hashed customer data, and the attempt history.

    Browser data stays while a row may still be sent (pending, or failed and young enough to
    replay): Meta refuses a website event without its user agent. Works in batches of short
    transactions, so the table is never locked for long.
    """
    using = using or router.db_for_write(OutboxEvent)
    rows = OutboxEvent.objects.using(using)
    now = timezone.now()
    expired_delivery = Q(
        status=Status.DELIVERED, delivered_at__lt=now - timedelta(days=delivered_after_days)
    )
    old_delivered = rows.filter(expired_delivery).exclude(payload={})
    unsendable = Q(status=Status.DELIVERED) | (
        Q(status__in=[Status.FAILED, Status.CANCELLED]) & _too_old()
    )
    with_browser = rows.exclude(expired_delivery).filter(
        unsendable,
        # The bits, and the payload itself where the bits are 0: a row written around the
        # capture and save() (bulk_create, SQL, a process older than migration 0014).
        GreaterThan(F("match_keys").bitand(_BROWSER_BITS), 0)
        | Q(match_keys=0, payload__user_data__has_any_keys=list(USER_DATA_KEYS)),
        created_at__lt=now - timedelta(days=scrub_after_days),
    )
    if dry_run:
        return PurgeResult(deleted=old_delivered.count(), scrubbed=with_browser.count())
    deleted = 0
    while ids := list(old_delivered.values_list("pk", flat=True)[:batch_size]):
        with transaction.atomic(using=using):
            AttemptEvent.objects.using(using).filter(event_id__in=ids).delete()
            rows.filter(pk__in=ids).update(
                payload={}, match_keys=0, warnings=[], last_error="", last_attempt=None
            )
        deleted += len(ids)
    # Requests as old as the deliveries purged and linked to no event any more: no kept
    # event's history needs them.
    attempts = DeliveryAttempt.objects.using(using)
    done = attempts.filter(
        attempted_at__lt=now - timedelta(days=delivered_after_days), links__isnull=True
    )
    while attempt_ids := list(done.values_list("pk", flat=True)[:batch_size]):
        attempts.filter(pk__in=attempt_ids).delete()
    scrubbed = 0
    while True:
        with transaction.atomic(using=using):
            # Locked and re-checked, so a replay cannot slip in between read and write.
            batch = list(
                with_browser.select_for_update().only("pk", "payload", "match_keys")[:batch_size]
            )
            for row in batch:
                user_data = row.payload.get("user_data")
                if isinstance(user_data, dict):
                    for key in USER_DATA_KEYS:
                        user_data.pop(key, None)
                # From the payload (which the bits may not have matched), without the
                # browser's bits whatever it held, so the row is not picked again.
                row.match_keys = match_key_bits(user_data) & ~_BROWSER_BITS
            rows.bulk_update(batch, ["payload", "match_keys"])
        scrubbed += len(batch)
        if len(batch) < batch_size:
            break
    return PurgeResult(deleted=deleted, scrubbed=scrubbed)


#: The ``match_keys`` bits of the browser's keys, which the purge scrubs.
_BROWSER_BITS = match_key_bits(dict.fromkeys(USER_DATA_KEYS))


def _too_old() -> Q:
    """Rows Meta would refuse if sent now (with the margin the drainer keeps), each by the
    limit of its action source (``validation.max_event_age``)."""
    now = timezone.now()
    sources_by_age: dict[timedelta, list[str]] = {}
    for source in ActionSource.values:
        sources_by_age.setdefault(max_event_age(source), []).append(source)
    # A row failed at capture may carry an action source Meta does not know: the general limit.
    too_old = ~Q(action_source__in=ActionSource.values) & Q(
        event_time__lt=now - MAX_EVENT_AGE + SEND_MARGIN
    )
    for age, sources in sources_by_age.items():
        too_old |= Q(action_source__in=sources, event_time__lt=now - age + SEND_MARGIN)
    return too_old
