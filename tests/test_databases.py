"""Events follow the database of the save; the due-rows query stays an index scan."""

from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db import connection, transaction
from django.db.migrations.loader import MigrationLoader
from django.db.models.functions import Now
from django.utils import timezone

from django_capi import OutboxEvent, send_event
from django_capi.models import AlertState
from tests.factories import OutboxEventFactory
from tests.shop.models import Order

BOTH = {"default", "other"}


def paid_order(using: str) -> Order:
    return Order.objects.using(using).create(
        email="multi@example.com", status="paid", total=3, user_agent="UA/1", ip="203.0.113.2"
    )


@pytest.mark.django_db(databases=BOTH)
def test_the_row_is_written_on_the_alias_of_the_save():
    with transaction.atomic(using="other"):
        order = paid_order("other")
    row = OutboxEvent.objects.using("other").get()
    assert row.source_id == str(order.pk)
    assert not OutboxEvent.objects.using("default").exists()


@pytest.mark.django_db(databases=BOTH)
def test_a_rollback_on_the_other_alias_removes_the_row_there():
    with pytest.raises(RuntimeError), transaction.atomic(using="other"):
        paid_order("other")
        raise RuntimeError
    assert not OutboxEvent.objects.using("other").exists()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_due_rows_are_found_through_the_partial_index_at_scale():
    OutboxEventFactory.bulk_create(20_000)
    OutboxEvent.objects.update(
        status=OutboxEvent.Status.DELIVERED, next_attempt_at=timezone.now() - timedelta(days=1)
    )
    OutboxEventFactory.create_batch(20)
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {OutboxEvent._meta.db_table}")
    due = OutboxEvent.objects.filter(
        status=OutboxEvent.Status.PENDING, next_attempt_at__lte=Now()
    ).order_by("next_attempt_at")[:100]
    plan = due.explain()
    # Either index that starts at the pending rows keeps this cheap; a scan of all rows
    # would not be.
    assert "capi_outbox_due" in plan or "capi_outbox_status_created" in plan, plan
    assert "Seq Scan" not in plan, plan
    assert due.count() == 20


@pytest.mark.django_db(databases=BOTH, transaction=True)
def test_send_event_follows_the_one_open_transaction_and_its_rollback():
    with pytest.raises(RuntimeError), transaction.atomic(using="other"):
        row = send_event("Lead", user_data={"em": "a@b.co"}, action_source="chat")
        assert OutboxEvent.objects.using("other").filter(pk=row.pk).exists()
        raise RuntimeError
    # Written on "default", it would have survived the rollback of "other".
    assert not OutboxEvent.objects.using("default").exists()
    assert not OutboxEvent.objects.using("other").exists()


@pytest.mark.django_db(databases=BOTH, transaction=True)
def test_send_event_takes_an_explicit_alias():
    row = send_event("Lead", user_data={"em": "a@b.co"}, action_source="chat", using="other")
    assert OutboxEvent.objects.using("other").get().pk == row.pk
    assert not OutboxEvent.objects.using("default").exists()
    with transaction.atomic(using="default"), transaction.atomic(using="other"):
        # Two open transactions: ambiguous, so the router decides.
        send_event("Lead", user_data={"em": "b@b.co"}, action_source="chat")
    assert OutboxEvent.objects.using("default").count() == 1


def _outbox_storage() -> tuple[bool, list[str]]:
    """Whether an index leads with ``source_type``, and the table's storage options."""
    table = OutboxEvent._meta.db_table
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, table)
        options: list[str] = []
        if connection.vendor == "postgresql":
            cursor.execute("SELECT reloptions FROM pg_class WHERE relname = %s", [table])
            options = list(cursor.fetchone()[0] or [])
    led = any(c["index"] and c["columns"][:1] == ["source_type_id"] for c in constraints.values())
    return led, options


@pytest.mark.django_db(transaction=True)
def test_migration_0010_leaves_room_for_hot_updates_and_reverses():
    room = ["fillfactor=50"] if connection.vendor == "postgresql" else []
    assert _outbox_storage() == (False, room)
    try:
        call_command("migrate", "django_capi", "0009_attempt_per_request", verbosity=0)
        assert _outbox_storage() == (True, [])
    finally:
        call_command("migrate", "django_capi", verbosity=0)
    assert _outbox_storage() == (False, room)


def _alert_state_uniques() -> set[tuple[str, ...]]:
    """The column lists of the alert table's unique constraints, its key aside."""
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, AlertState._meta.db_table)
    return {
        tuple(c["columns"]) for c in constraints.values() if c["unique"] and not c["primary_key"]
    }


@pytest.mark.django_db(transaction=True)
def test_migration_alertstate_pixel_moves_uniqueness_to_kind_and_pixel_and_reverses():
    loader = MigrationLoader(connection)
    (name,) = [
        name
        for app, name in loader.disk_migrations
        if app == "django_capi" and name.endswith("_alertstate_pixel")
    ]
    # Found by its name's end and its dependency, so the test survives a renumbering.
    (before,) = loader.get_migration("django_capi", name).dependencies
    assert _alert_state_uniques() == {("kind", "pixel_id")}
    try:
        call_command("migrate", "django_capi", before[1], verbosity=0)
        assert _alert_state_uniques() == {("kind",)}
        old_alerts = loader.project_state(before).apps.get_model("django_capi", "AlertState")
        old_alerts.objects.create(kind="backlog", active=True, message="the whole outbox")
        old_alerts.objects.create(kind="failure_rate")
        call_command("migrate", "django_capi", name, verbosity=0)
        # The rows of the whole outbox name no pixel: gone, not guessed.
        assert not AlertState.objects.exists()
        assert _alert_state_uniques() == {("kind", "pixel_id")}
        AlertState.objects.create(kind="backlog", pixel_id="111", active=True)
        AlertState.objects.create(kind="backlog", pixel_id="222", active=True)
        call_command("migrate", "django_capi", before[1], verbosity=0)
        # Two rows of one kind could not have come back under kind's own uniqueness.
        assert not old_alerts.objects.exists()
        assert _alert_state_uniques() == {("kind",)}
    finally:
        call_command("migrate", "django_capi", verbosity=0)
    assert _alert_state_uniques() == {("kind", "pixel_id")}
