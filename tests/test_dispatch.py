"""The drainer is woken after commit, once per transaction, never for a rollback."""

import pytest
from django.db import transaction

from django_capi import send_event, signals
from tests.factories import OrderFactory

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def wakes():
    calls = []

    def receiver(**kwargs):
        calls.append(kwargs)

    signals.outbox_committed.connect(receiver)
    yield calls
    signals.outbox_committed.disconnect(receiver)


def lead(n: int = 0):
    return send_event("Lead", user_data={"em": f"l{n}@b.co"}, action_source="system_generated")


def test_one_wake_per_transaction_after_commit(wakes):
    with transaction.atomic():
        for n in range(3):
            lead(n)
        order = OrderFactory()
        order.status = "paid"
        order.save()
        assert wakes == []  # nothing before the commit
    assert len(wakes) == 1


def test_no_wake_for_a_rollback(wakes):
    with pytest.raises(RuntimeError), transaction.atomic():
        lead()
        raise RuntimeError
    assert wakes == []


def test_no_wake_for_a_failed_event(wakes):
    with transaction.atomic():
        send_event("Lead", user_data={}, action_source="system_generated")
    assert wakes == []


def test_a_wake_in_a_rolled_back_savepoint_does_not_hide_a_later_one(wakes):
    with transaction.atomic():
        with pytest.raises(RuntimeError), transaction.atomic():
            lead(1)
            raise RuntimeError
        lead(2)
    assert len(wakes) == 1


def test_a_broken_receiver_is_logged_and_does_not_raise(wakes, caplog):
    def broken(**kwargs):
        raise ValueError("receiver bug")

    signals.outbox_committed.connect(broken)
    try:
        with transaction.atomic():
            lead()
    finally:
        signals.outbox_committed.disconnect(broken)
    assert len(wakes) == 1
    assert "receiver bug" in caplog.text


def test_the_announcement_names_the_database_that_committed(wakes):
    with transaction.atomic():
        lead()
    assert [call["using"] for call in wakes] == ["default"]
