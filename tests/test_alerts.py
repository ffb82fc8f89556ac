"""Alerts: once when an incident starts, once when it ends; never per event or per check."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core import mail
from django.core.cache import cache
from django.utils import timezone

from django_capi import alerts, signals
from django_capi.models import AlertState, DeliveryAttempt, OutboxEvent
from tests.factories import OutboxEventFactory

pytestmark = pytest.mark.django_db(transaction=True)

PIXEL = "1234567890"  # the default pixel of tests/settings.py
OTHER = "9876543210"


@pytest.fixture
def raised():
    seen = []

    def receiver(**kwargs):
        seen.append((kwargs["kind"], kwargs["message"]))

    signals.alert_raised.connect(receiver)
    yield seen
    signals.alert_raised.disconnect(receiver)


def test_a_backlog_nobody_drains_alerts_once_and_resolves_once(raised, caplog):
    OutboxEventFactory.create_batch(3)
    waited = timedelta(minutes=20, seconds=30)
    OutboxEvent.objects.update(next_attempt_at=timezone.now() - waited)
    changes = alerts.evaluate()
    assert [(c.kind, c.pixel_id, c.started) for c in changes] == [("backlog", PIXEL, True)]
    assert changes[0].message.startswith(f"pixel {PIXEL}: the oldest due event has waited 20 min")
    assert alerts.evaluate() == []  # still going on: no second alert
    assert len(raised) == 1
    assert len(mail.outbox) == 1
    assert mail.outbox[0].subject.endswith(f"Meta Conversions API: backlog on pixel {PIXEL}")
    OutboxEvent.objects.update(status="delivered", delivered_at=timezone.now())
    assert [(c.kind, c.started) for c in alerts.evaluate()] == [("backlog", False)]
    assert f"backlog alert resolved for pixel {PIXEL}" in caplog.text
    assert len(mail.outbox) == 1


def test_a_young_backlog_is_no_incident():
    OutboxEventFactory.create_batch(3)
    OutboxEvent.objects.update(next_attempt_at=timezone.now() - timedelta(minutes=5))
    assert alerts.evaluate() == []


def attempts(outcome: str, count: int, pixel_id: str = PIXEL) -> None:
    """Requests to ``pixel_id`` that carried ``count`` events in all, with this outcome."""
    DeliveryAttempt.objects.bulk_create(
        DeliveryAttempt(pixel_id=pixel_id, outcome=outcome, batch_size=size, duration_ms=1)
        for size in (count // 2, count - count // 2)
        if size
    )


def test_a_high_failure_rate_alerts_even_while_rows_wait_in_backoff(raised):
    attempts("delivered", 18)
    attempts("retry", 10)  # a Meta outage: nothing has failed for good yet
    attempts("rejected", 2)
    (change,) = alerts.evaluate()
    assert (change.kind, change.pixel_id) == ("failure_rate", PIXEL)
    assert change.message.startswith(
        f"pixel {PIXEL}: 12 of the last hour's 30 deliveries failed or must be retried (40%)"
    )
    assert raised == [("failure_rate", change.message)]


def test_a_failure_rate_over_a_handful_of_events_is_noise():
    attempts("retry", 5)
    assert alerts.evaluate() == []


def test_a_rate_hovering_around_the_threshold_does_not_flap(raised):
    attempts("delivered", 75)
    attempts("retry", 25)  # 25 %: starts (threshold 20 %)
    assert [c.started for c in alerts.evaluate()] == [True]
    attempts("delivered", 25)  # 20 %: at the line, below it only a little
    assert alerts.evaluate() == []
    attempts("delivered", 150)  # 10 %: well below
    assert [c.started for c in alerts.evaluate()] == [False]
    assert len(raised) == 1


def test_mail_can_be_turned_off(settings):
    settings.DJANGO_CAPI = {**settings.DJANGO_CAPI, "ALERT_MAIL_ADMINS": False}
    OutboxEventFactory.create()
    OutboxEvent.objects.update(next_attempt_at=timezone.now() - timedelta(hours=1))
    assert alerts.evaluate()
    assert mail.outbox == []


def test_the_web_process_looks_at_most_once_a_minute(monkeypatch):
    calls = []
    monkeypatch.setattr(alerts, "evaluate", lambda using: calls.append(using))
    cache.clear()
    alerts.evaluate_from_web("default")
    alerts.evaluate_from_web("default")
    assert calls == ["default"]


def test_committing_events_without_any_drainer_raises_the_backlog_alert(raised):
    from django.db import transaction

    from django_capi import send_event

    OutboxEventFactory.create()
    OutboxEvent.objects.update(next_attempt_at=timezone.now() - timedelta(hours=2))
    cache.clear()
    with transaction.atomic():
        send_event("Lead", user_data={"em": "a@b.co"}, action_source="chat")
    assert [kind for kind, _ in raised] == ["backlog"]


@pytest.fixture
def resolved():
    seen = []

    def receiver(**kwargs):
        seen.append((kwargs["kind"], kwargs["pixel_id"]))

    signals.alert_resolved.connect(receiver)
    yield seen
    signals.alert_resolved.disconnect(receiver)


def test_one_pixels_failures_are_not_hidden_by_another_pixels_volume(raised):
    attempts("delivered", 1000)  # the busy pixel is fine
    attempts("delivered", 10, OTHER)
    attempts("rejected", 20, OTHER)  # 67 % of the other pixel's events: 3 % of all of them
    (change,) = alerts.evaluate()
    assert (change.kind, change.pixel_id, change.started) == ("failure_rate", OTHER, True)
    assert change.message.startswith(f"pixel {OTHER}: 20 of the last hour's 30 deliveries")
    assert mail.outbox[0].subject.endswith(f"failure_rate on pixel {OTHER}")
    assert alerts.evaluate() == []  # once per incident


def test_each_pixel_raises_and_resolves_its_own_alert(raised, resolved):
    attempts("retry", 30)
    attempts("retry", 30, OTHER)
    changes = alerts.evaluate()
    assert sorted((c.pixel_id, c.started) for c in changes) == [(PIXEL, True), (OTHER, True)]
    assert len(raised) == 2
    assert len(mail.outbox) == 2
    attempts("delivered", 600, OTHER)  # the other pixel recovers; this one does not
    assert [(c.kind, c.pixel_id, c.started) for c in alerts.evaluate()] == [
        ("failure_rate", OTHER, False)
    ]
    assert resolved == [("failure_rate", OTHER)]
    assert alerts.evaluate() == []
    assert {(a.kind, a.pixel_id) for a in alerts.active_alerts("default")} == {
        ("failure_rate", PIXEL)
    }


def test_a_backlog_alerts_for_the_pixel_whose_events_wait(raised, resolved):
    waited = timezone.now() - timedelta(hours=1)
    OutboxEventFactory.create_batch(2, pixel_id=OTHER, next_attempt_at=waited)
    OutboxEventFactory.create_batch(2)  # this pixel's events are drained in time
    assert [(c.kind, c.pixel_id, c.started) for c in alerts.evaluate()] == [
        ("backlog", OTHER, True)
    ]
    assert raised[0][1].startswith(f"pixel {OTHER}: the oldest due event has waited 60 min")
    OutboxEvent.objects.filter(pixel_id=OTHER).update(
        status="delivered", delivered_at=timezone.now()
    )
    assert [(c.pixel_id, c.started) for c in alerts.evaluate()] == [(OTHER, False)]
    assert resolved == [("backlog", OTHER)]


def test_rows_in_flight_and_retries_to_come_are_no_backlog():
    waited = timezone.now() - timedelta(hours=1)
    OutboxEventFactory(leased=True, next_attempt_at=waited)  # a worker is sending it
    OutboxEventFactory(next_attempt_at=timezone.now() + timedelta(hours=1))  # a backoff
    assert alerts.evaluate() == []


def test_a_32_digit_pixel_id_gets_its_own_alert_row(raised, resolved):
    long_id = "1" * 32  # conf accepts up to 32 digits; Meta's ids have at most 19
    near_id = "1" * 31 + "2"  # shares the first 31 digits
    attempts("retry", 30, long_id)
    attempts("delivered", 30, near_id)
    (change,) = alerts.evaluate()
    assert (change.pixel_id, change.started) == (long_id, True)
    assert alerts.evaluate() == []  # neither ended nor raised again
    assert AlertState.objects.get(active=True).pixel_id == long_id
    attempts("retry", 30, near_id)  # the other id's own incident, not the first one's
    assert [(c.pixel_id, c.started) for c in alerts.evaluate()] == [(near_id, True)]
    assert sorted(AlertState.objects.values_list("pixel_id", "active")) == [
        (long_id, True),
        (near_id, True),
    ]
    attempts("delivered", 600, long_id)
    assert [(c.pixel_id, c.started) for c in alerts.evaluate()] == [(long_id, False)]
    assert resolved == [("failure_rate", long_id)]
    assert len(raised) == 2
