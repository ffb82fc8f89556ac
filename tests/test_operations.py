"""Replay, send now, cancel and purge: the operators' tools, as commands and functions."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.utils import timezone

from django_capi import operations
from django_capi.constants import match_key_bits
from django_capi.models import AttemptEvent, DeliveryAttempt, OutboxEvent
from tests.factories import OrderFactory, OutboxEventFactory

pytestmark = pytest.mark.django_db(transaction=True)

Status = OutboxEvent.Status


def fail(rows, reason="rejected", **extra):
    OutboxEvent.objects.filter(pk__in=[row.pk for row in rows]).update(
        status=Status.FAILED, failure_reason=reason, last_error="Meta said no", attempts=7, **extra
    )


def test_replay_gives_failed_events_a_fresh_budget_and_delivers_them(capi_graph):
    rows = OutboxEventFactory.create_batch(3)
    fail(rows)
    result = operations.replay(OutboxEvent.objects.all())
    assert (result.replayed, result.too_old, result.unbuilt, result.skipped) == (3, 0, 0, 0)
    for row in OutboxEvent.objects.all():
        assert (row.status, row.attempts, row.last_error, row.failure_reason) == (
            "pending",
            0,
            "",
            "",
        )
    call_command("capi_drain", "--database", "default", stdout=StringIO())
    assert OutboxEvent.objects.filter(status=Status.DELIVERED).count() == 3


def test_replay_refuses_events_too_old_for_meta_and_says_why():
    old = OutboxEventFactory.create_batch(2, age=timedelta(days=8))
    store = OutboxEventFactory.create(age=timedelta(days=30), action_source="physical_store")
    unbuilt = OutboxEventFactory.create()
    fail([*old, store])
    fail([unbuilt], reason="invalid", payload={})
    delivered = OutboxEventFactory.create()
    OutboxEvent.objects.filter(pk=delivered.pk).update(status=Status.DELIVERED)
    result = operations.replay(OutboxEvent.objects.all())
    assert (result.replayed, result.too_old, result.unbuilt, result.skipped) == (1, 2, 1, 1)
    assert "2 refused: older than Meta accepts" in str(result)
    assert "fix the data and save the object again" in str(result)
    assert OutboxEvent.objects.get(pk=store.pk).status == Status.PENDING


def test_send_now_delivers_only_the_selected_rows(capi_graph):
    rows = OutboxEventFactory.create_batch(3)
    later = timezone.now() + timedelta(hours=1)
    OutboxEvent.objects.update(next_attempt_at=later)  # backing off
    report = operations.send_now(OutboxEvent.objects.filter(pk__in=[rows[0].pk, rows[1].pk]))
    assert (report.claimed, report.delivered) == (2, 2)
    assert sorted(capi_graph.event_ids()) == sorted([rows[0].event_id, rows[1].event_id])
    assert OutboxEvent.objects.get(pk=rows[2].pk).status == Status.PENDING


def test_send_now_inside_a_transaction_never_holds_it_open_during_http(capi_graph):
    from django.db import connection, transaction

    rows = OutboxEventFactory.create_batch(2)
    with transaction.atomic():  # as an admin action under ATOMIC_REQUESTS
        report = operations.send_now(OutboxEvent.objects.filter(pk=rows[0].pk))
        if connection.vendor == "sqlite":
            assert report is None  # runs after the commit: SQLite has one writer
            assert capi_graph.event_ids() == []
        else:
            assert (report.claimed, report.delivered) == (1, 1)  # in its own connection
    assert capi_graph.event_ids() == [rows[0].event_id]
    assert OutboxEvent.objects.get(pk=rows[0].pk).status == Status.DELIVERED


def test_cancel_stops_pending_and_failed_rows_but_not_delivered_or_in_flight():
    rows = OutboxEventFactory.create_batch(4)
    fail(rows[:1])
    OutboxEvent.objects.filter(pk=rows[1].pk).update(status=Status.DELIVERED)
    OutboxEvent.objects.filter(pk=rows[2].pk).update(leased_until=timezone.now())
    assert operations.cancel(OutboxEvent.objects.all()) == 2
    statuses = dict(OutboxEvent.objects.values_list("pk", "status"))
    assert statuses == {
        rows[0].pk: "cancelled",
        rows[1].pk: "delivered",
        rows[2].pk: "pending",
        rows[3].pk: "cancelled",
    }


def test_capi_replay_filters_reports_progress_and_has_a_dry_run():
    OutboxEventFactory.create_batch(3)
    purchases = OutboxEventFactory.create_batch(2)
    fail(OutboxEvent.objects.all())
    OutboxEvent.objects.filter(pk__in=[row.pk for row in purchases]).update(event_name="Purchase")
    out = StringIO()
    call_command("capi_replay", "--event-name", "Lead", "--dry-run", stdout=out)
    assert out.getvalue().strip() == "3 event(s) would be replayed (dry run)."
    assert not OutboxEvent.objects.filter(status=Status.PENDING).exists()
    out = StringIO()
    call_command("capi_replay", "--event-name", "Lead", "--batch-size", "2", stdout=out)
    assert out.getvalue().splitlines() == ["2/3: 2 replayed", "3/3: 1 replayed", "3 replayed"]
    assert OutboxEvent.objects.filter(status=Status.PENDING).count() == 3
    since = (timezone.now() + timedelta(days=1)).date().isoformat()
    out = StringIO()
    call_command("capi_replay", "--since", since, stdout=out)
    assert out.getvalue().strip().endswith("0 replayed")


BROWSER = {
    "em": "e" * 64,
    "client_ip_address": "203.0.113.1",
    "client_user_agent": "UA",
    "fbc": "fb.1.1.x",
    "fbp": "fb.1.1.1",
}


def test_purge_keeps_only_the_dedup_key_of_old_deliveries_and_scrubs_in_batches():
    rows = OutboxEventFactory.create_batch(6)
    for row in OutboxEvent.objects.all():
        row.payload["user_data"] = dict(BROWSER)
        row.save()
    long_ago = timezone.now() - timedelta(days=40)
    ten_days = timezone.now() - timedelta(days=10)
    old_delivered = [rows[0].pk, rows[1].pk]
    OutboxEvent.objects.filter(pk__in=old_delivered).update(
        status=Status.DELIVERED, delivered_at=long_ago, created_at=long_ago
    )
    # Failed 10 days ago, and too old for Meta now: never sendable again.
    OutboxEvent.objects.filter(pk=rows[2].pk).update(
        status=Status.FAILED, created_at=ten_days, event_time=ten_days
    )
    # Failed and still young enough to replay: needs its user agent.
    OutboxEvent.objects.filter(pk=rows[3].pk).update(status=Status.FAILED, created_at=ten_days)
    # Pending: needs everything to be sent.
    OutboxEvent.objects.filter(pk=rows[4].pk).update(created_at=ten_days)
    attempt = DeliveryAttempt.objects.create(outcome="retry", batch_size=1, duration_ms=1)
    AttemptEvent.objects.create(attempt=attempt, event_id=rows[0].pk, outcome="retry")
    DeliveryAttempt.objects.update(attempted_at=long_ago)
    out = StringIO()
    call_command("capi_purge", "--dry-run", stdout=out)
    assert (
        "2 delivered event(s) would be emptied (their keys stay); 1 event(s) would be scrubbed"
        in out.getvalue()
    )
    call_command("capi_purge", "--batch-size", "1", stdout=StringIO())

    # The key stays, so saving the order again cannot report a second Purchase.
    for row in OutboxEvent.objects.filter(pk__in=old_delivered):
        assert (row.status, row.payload, row.event_id) == ("delivered", {}, row.event_id)
        assert row.match_keys == 0
    assert not DeliveryAttempt.objects.exists()
    scrubbed = OutboxEvent.objects.get(pk=rows[2].pk)
    assert scrubbed.payload["user_data"] == {"em": "e" * 64}
    # The health page's coverage no longer counts the keys scrubbed, and no later purge
    # picks the row again.
    assert scrubbed.match_keys == match_key_bits({"em": "e" * 64}) == 0b1
    for keep in (rows[3], rows[4], rows[5]):
        kept = OutboxEvent.objects.get(pk=keep.pk)
        assert kept.payload["user_data"] == BROWSER
        assert kept.match_keys == match_key_bits(BROWSER)
    out = StringIO()
    call_command("capi_purge", stdout=out)
    assert out.getvalue().startswith("0 delivered event(s) were emptied (their keys stay); 0")


def test_a_purged_delivery_still_stops_a_second_purchase():
    order = OrderFactory(status="paid")
    OutboxEvent.objects.update(
        status=Status.DELIVERED, delivered_at=timezone.now() - timedelta(days=90)
    )
    call_command("capi_purge", stdout=StringIO())
    order.save()  # a refund note, months later: still "paid"
    assert OutboxEvent.objects.count() == 1


def test_purge_keeps_the_requests_a_kept_event_is_linked_to():
    old, young = OutboxEventFactory.create_batch(2)
    long_ago = timezone.now() - timedelta(days=40)
    OutboxEvent.objects.filter(pk=old.pk).update(status=Status.DELIVERED, delivered_at=long_ago)
    retried = DeliveryAttempt.objects.create(outcome="retry", batch_size=2, duration_ms=1)
    AttemptEvent.objects.bulk_create(
        AttemptEvent(attempt=retried, event=row, outcome="retry") for row in (old, young)
    )
    delivered = DeliveryAttempt.objects.create(outcome="delivered", batch_size=1, duration_ms=1)
    OutboxEvent.objects.filter(pk=old.pk).update(last_attempt=delivered)
    DeliveryAttempt.objects.update(attempted_at=long_ago)
    call_command("capi_purge", stdout=StringIO())
    assert list(DeliveryAttempt.objects.all()) == [retried]  # the pending event's history
    assert list(AttemptEvent.objects.values_list("event_id", flat=True)) == [young.pk]
    assert OutboxEvent.objects.get(pk=old.pk).last_attempt_id is None


def test_purge_scrubs_rows_written_around_the_capture():
    """A row inserted without its match_keys (bulk_create, SQL, a process older than
    migration 0014) is still found by its payload and scrubbed."""
    long_ago = timezone.now() - timedelta(days=400)
    OutboxEvent.objects.bulk_create(
        [
            OutboxEvent(
                event_id="around",
                pixel_id="1234567890",
                event_name="Lead",
                event_time=long_ago,
                action_source="website",
                payload={"user_data": dict(BROWSER)},
                status=Status.DELIVERED,
                delivered_at=timezone.now(),
            )
        ]
    )
    OutboxEvent.objects.update(created_at=long_ago)
    assert OutboxEvent.objects.get().match_keys == 0
    result = operations.purge(delivered_after_days=10_000, scrub_after_days=30)
    assert result.scrubbed == 1
    row = OutboxEvent.objects.get()
    assert row.payload["user_data"] == {"em": "e" * 64}
    assert row.match_keys == match_key_bits({"em": "e" * 64})
    assert operations.purge(delivered_after_days=10_000, scrub_after_days=30).scrubbed == 0
