"""Alerts: once when an incident starts, once when it ends; never per event or per check."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core import mail
from django.core.cache import cache
from django.utils import timezone

from django_capi import alerts, signals
from django_capi.models import DeliveryAttempt, OutboxEvent
from tests.factories import OutboxEventFactory

pytestmark = pytest.mark.django_db(transaction=True)


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
    assert [(c.kind, c.started) for c in changes] == [("backlog", True)]
    assert "waited 20 min for a drainer" in changes[0].message
    assert alerts.evaluate() == []  # still going on: no second alert
    assert len(raised) == 1
    assert len(mail.outbox) == 1
    assert mail.outbox[0].subject.endswith("Meta Conversions API: backlog")
    OutboxEvent.objects.update(status="delivered", delivered_at=timezone.now())
    assert [(c.kind, c.started) for c in alerts.evaluate()] == [("backlog", False)]
    assert "backlog alert resolved" in caplog.text
    assert len(mail.outbox) == 1


def test_a_young_backlog_is_no_incident():
    OutboxEventFactory.create_batch(3)
    OutboxEvent.objects.update(next_attempt_at=timezone.now() - timedelta(minutes=5))
    assert alerts.evaluate() == []


def attempts(outcome: str, count: int) -> None:
    """Requests that carried ``count`` events in all, with this outcome."""
    DeliveryAttempt.objects.bulk_create(
        DeliveryAttempt(outcome=outcome, batch_size=size, duration_ms=1)
        for size in (count // 2, count - count // 2)
        if size
    )


def test_a_high_failure_rate_alerts_even_while_rows_wait_in_backoff(raised):
    attempts("delivered", 18)
    attempts("retry", 10)  # a Meta outage: nothing has failed for good yet
    attempts("rejected", 2)
    (change,) = alerts.evaluate()
    assert change.kind == "failure_rate"
    assert change.message.startswith(
        "12 of the last hour's 30 deliveries failed or must be retried (40%)"
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
