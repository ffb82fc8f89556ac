"""Events follow the database of the save; the due-rows query stays an index scan."""

import contextlib
import io
import json
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.db import IntegrityError, connection, transaction
from django.db.migrations.loader import MigrationLoader
from django.db.models.functions import Now
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from django_capi import OutboxEvent, checks, outbox, send_event
from django_capi.dashboard import health_figures
from django_capi.events import recorded_events
from django_capi.models import AlertState
from tests.factories import OutboxEventFactory
from tests.shop.models import Order

BOTH = {"default", "other"}
BUYER = {"em": "buyer@example.com"}


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
    # The index of the pending rows alone keeps this cheap; a scan of all rows would not be.
    assert "capi_outbox_due" in plan, plan
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
    # InnoDB needs an index for each foreign key constraint, here one on source_type_id
    # alone, and keeps it: on MySQL/MariaDB only a wider one (the old capi_outbox_source) counts.
    needed = ["source_type_id"] if connection.vendor == "mysql" else None
    led = any(
        c["index"] and c["columns"][:1] == ["source_type_id"] and c["columns"] != needed
        for c in constraints.values()
    )
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


def _outbox_indexes() -> dict[str, list[str]]:
    """The outbox's named indexes and unique constraints (``capi_outbox_*``): their columns."""
    with connection.cursor() as cursor:
        found = connection.introspection.get_constraints(cursor, OutboxEvent._meta.db_table)
    return {
        name: info["columns"]
        for name, info in found.items()
        if name.startswith("capi_outbox_") and (info["index"] or info["unique"])
    }


@pytest.mark.django_db(transaction=True)
def test_migration_0011_drops_the_indexes_of_every_row_and_reverses():
    key = ["event_id", "pixel_id", "event_name"]
    after = _outbox_indexes()
    assert after["capi_outbox_unique_event"] == key
    assert after["capi_outbox_failed_cancelled"] == ["status", "created_at"]
    assert "capi_outbox_event_id" not in after
    assert "capi_outbox_status_created" not in after
    try:
        call_command("migrate", "django_capi", "0010_outbox_hot_updates", verbosity=0)
        before = _outbox_indexes()
        assert before["capi_outbox_unique_event"] == ["pixel_id", "event_name", "event_id"]
        assert before["capi_outbox_event_id"] == ["event_id"]
        assert before["capi_outbox_status_created"] == ["status", "created_at"]
        assert "capi_outbox_failed_cancelled" not in before
    finally:
        call_command("migrate", "django_capi", verbosity=0)
    assert _outbox_indexes() == after
    # The new key still refuses a second row of the same event.
    OutboxEventFactory(event_id="same")
    with pytest.raises(IntegrityError), transaction.atomic():
        OutboxEventFactory(event_id="same")


def _plans(run) -> dict[str, str]:
    """``EXPLAIN`` of each outbox SELECT that ``run`` executes."""
    with CaptureQueriesContext(connection) as queries:
        run()
    plans = {}
    with connection.cursor() as cursor:
        for query in queries.captured_queries:
            sql = query["sql"]
            if sql.startswith(("SELECT", "(SELECT")) and OutboxEvent._meta.db_table in sql:
                cursor.execute("EXPLAIN " + sql)
                plans[sql] = "\n".join(line for (line,) in cursor.fetchall())
    return plans


@pytest.fixture
def large_outbox(transactional_db):
    """20,000 rows, mostly delivered, as an outbox in service is (written by PostgreSQL
    itself: a factory takes minutes); statistics and the visibility map as autovacuum leaves
    them."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO django_capi_outboxevent (
                pixel_id, event_name, event_id, event_time, action_source, payload, status,
                failure_reason, last_error, warnings, attempts, last_error_type, fbtrace_id,
                source_id, delivered_at
            )
            SELECT '1234567890', 'Lead', 'bulk-' || g, now(), 'system_generated', '{}',
                status, '', '', '[]', 0, '', '', g::text,
                CASE WHEN status = 'delivered' THEN now() END
            FROM (
                SELECT g, CASE
                    WHEN g <= 19000 THEN 'delivered' WHEN g <= 19500 THEN 'failed'
                    WHEN g <= 19800 THEN 'cancelled' ELSE 'pending' END AS status
                FROM generate_series(1, 20000) AS g
            ) AS rows
            """
        )
        cursor.execute(f"VACUUM ANALYZE {OutboxEvent._meta.db_table}")


@pytest.mark.postgres
def test_every_lookup_by_event_id_uses_the_unique_constraint(large_outbox, admin_user):
    row = OutboxEvent.objects.order_by("pk")[5_000]
    client = Client()
    client.force_login(admin_user)
    url = reverse("admin:django_capi_outboxevent_changelist") + f"?q={row.event_id}"
    plans = _plans(lambda: client.get(url))
    plans |= _plans(lambda: recorded_events([(row.event_name, row.event_id)], using="default"))
    # A save of an event already recorded takes the conflict path, which finds the row.
    plans |= _plans(
        lambda: send_event(
            row.event_name, event_id=row.event_id, user_data={"em": "a@b.co"}, action_source="chat"
        )
    )
    by_id = {
        sql: plan for sql, plan in plans.items() if '"event_id" =' in sql or '"event_id" IN' in sql
    }
    assert len(by_id) == 4, list(plans)  # the search, its capped count, recorded_events, the save
    for sql, plan in by_id.items():
        assert "capi_outbox_unique_event" in plan, (sql, plan)
        assert "Seq Scan on django_capi_outboxevent" not in plan, (sql, plan)


@pytest.mark.postgres
def test_each_status_is_counted_through_its_own_partial_index(large_outbox):
    plans = _plans(lambda: health_figures())
    (plan,) = [plan for sql, plan in plans.items() if sql.count("UNION ALL") == 3]
    # Failed rows have two partial indexes; the planner may take either.
    for index in ("due", "delivered", "failed_cancelled"):
        assert f"capi_outbox_{index} " in plan, plan
    assert "Seq Scan on django_capi_outboxevent" not in plan, plan
    assert health_figures().counts == {
        "pending": 200,
        "delivered": 19_000,
        "failed": 500,
        "cancelled": 300,
    }


@pytest.mark.parametrize(
    "first, second",
    [("Order-1", "order-1"), ("a", "a "), ("café", "cafe"), ("ß", "ss")],
    ids=["case", "trailing-space", "accent", "expansion"],
)
@pytest.mark.django_db
def test_ids_that_differ_only_in_case_spaces_or_accents_are_two_events(first, second):
    # MySQL/MariaDB's default collations took each pair for one key, and INSERT IGNORE then
    # dropped the second event; Meta compares ids exactly and would have counted both.
    rows = [
        send_event("Purchase", event_id=event_id, action_source="chat", user_data=BUYER)
        for event_id in (first, second)
    ]
    assert rows[0].pk != rows[1].pk
    assert sorted(OutboxEvent.objects.values_list("event_id", flat=True)) == sorted([first, second])
    # Lookups (the admin's exact search, the duplicate's lookup) are exact too.
    assert OutboxEvent.objects.get(event_id=second).pk == rows[1].pk
    # The same id again is still the same event.
    assert (
        send_event("Purchase", event_id=second, action_source="chat", user_data=BUYER).pk
        == rows[1].pk
    )
    assert OutboxEvent.objects.count() == 2


@pytest.mark.django_db
def test_event_names_that_differ_only_in_case_are_two_events():
    send_event("Lead", event_id="lead-1", action_source="chat", user_data=BUYER)
    send_event("lead", event_id="lead-1", action_source="chat", user_data=BUYER)
    assert sorted(OutboxEvent.objects.values_list("event_name", flat=True)) == ["Lead", "lead"]


def _identity_collations() -> dict[str, str | None]:
    """``table.column``: collation of each column the outbox compares for identity, on
    MySQL/MariaDB (SQLite and PostgreSQL compare them byte by byte with no collation set)."""
    tables = {model._meta.db_table for model in checks.EXACT_COLUMNS}
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT TABLE_NAME, COLUMN_NAME, COLLATION_NAME FROM information_schema.COLUMNS "
            "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME IN %s",
            [tuple(sorted(tables))],
        )
        found = {f"{table}.{column}": collation for table, column, collation in cursor.fetchall()}
    return {
        f"{model._meta.db_table}.{name}": found[f"{model._meta.db_table}.{name}"]
        for model, names in checks.EXACT_COLUMNS.items()
        for name in names
    }


def _w008() -> list[str]:
    return [
        message.msg
        for message in checks.check_key_collations(databases=[connection.alias])
        if message.id == "django_capi.W008"
    ]


@pytest.mark.django_db(transaction=True)
def test_migration_0012_makes_identity_columns_exact_and_reverses():
    assert _w008() == []
    mysql = connection.vendor == "mysql"
    if mysql:
        assert all(map(checks.is_exact_collation, _identity_collations().values()))
    try:
        call_command("migrate", "django_capi", "0011_outbox_fewer_indexes", verbosity=0)
        if mysql:
            # Back to the table's default (the server's, e.g. utf8mb4_general_ci): the check
            # names every column that lost its exact collation.
            loose = _identity_collations()
            assert not any(map(checks.is_exact_collation, loose.values())), loose
            (message,) = _w008()
            assert all(f"{column} ({collation})" in message for column, collation in loose.items())
            doctor = io.StringIO()
            with contextlib.suppress(CommandError):  # the unapplied migration is a problem too
                call_command("capi_doctor", "--database", "default", stdout=doctor)
            assert "[django_capi.W008]" in doctor.getvalue()
        else:
            assert _w008() == []
    finally:
        call_command("migrate", "django_capi", verbosity=0)
    assert _w008() == []
    if mysql:
        assert all(map(checks.is_exact_collation, _identity_collations().values()))


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


def _payload_column_type() -> str:
    with connection.cursor() as cursor:
        columns = connection.introspection.get_table_description(cursor, OutboxEvent._meta.db_table)
    (column,) = [column for column in columns if column.name == "payload"]
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT %s::regtype::text", [column.type_code])
            return cursor.fetchone()[0]
    return str(column.type_code)


@pytest.mark.django_db(transaction=True)
def test_migration_0014_fills_match_keys_from_payloads_and_reverses():
    postgres = connection.vendor == "postgresql"
    assert _payload_column_type() == "json" or not postgres
    try:
        call_command("migrate", "django_capi", "0013_alertstate_pixel", verbosity=0)
        assert _payload_column_type() == "jsonb" or not postgres
        old = MigrationLoader(connection).project_state(("django_capi", "0013_alertstate_pixel"))
        old_outbox = old.apps.get_model("django_capi", "OutboxEvent")
        common = {"pixel_id": "1", "event_name": "Lead", "event_time": timezone.now()}
        old_outbox.objects.create(
            event_id="both",
            payload={"user_data": {"em": ["h"], "client_user_agent": "UA", "zp": ["z"]}},
            **common,
        )
        old_outbox.objects.create(event_id="none", payload={"user_data": {}}, **common)
        old_outbox.objects.create(event_id="unbuilt", payload={}, **common)
        call_command("migrate", "django_capi", verbosity=0)
        assert _payload_column_type() == "json" or not postgres
        bits = dict(OutboxEvent.objects.values_list("event_id", "match_keys"))
        assert bits == {"both": 0b1000001, "none": 0, "unbuilt": 0}  # em, client_user_agent
        # The payloads read back as they were written.
        both = OutboxEvent.objects.get(event_id="both")
        assert both.payload["user_data"]["zp"] == ["z"]
        assert list(OutboxEvent.objects.filter(payload={}).values_list("event_id", flat=True)) == [
            "unbuilt"
        ]
        call_command("migrate", "django_capi", "0013_alertstate_pixel", verbosity=0)
        assert old_outbox.objects.get(event_id="both").payload == both.payload
    finally:
        call_command("migrate", "django_capi", verbosity=0)
    assert _payload_column_type() == "json" or not postgres


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_the_payload_is_stored_and_claimed_as_the_text_written():
    """PostgreSQL keeps the payload as json, the text the capture wrote (jsonb would print
    it anew, keys reordered and spaces changed), and a claim hands over that text."""
    order = paid_order("default")
    row = OutboxEvent.objects.get(source_id=str(order.pk))
    with connection.cursor() as cursor:
        cursor.execute("SELECT payload::text FROM django_capi_outboxevent WHERE id = %s", [row.pk])
        (stored,) = cursor.fetchone()
    # json.dumps' own separators and key order: the text as Python wrote it.
    assert stored.startswith('{"event_name": "Purchase", ')
    assert json.loads(stored) == row.payload
    lease = outbox.claim(limit=10, lease_seconds=60, using="default")
    (claimed,) = lease.rows
    assert claimed.payload == stored
    assert claimed.event_time == row.event_time


@pytest.mark.django_db
def test_every_json_lookup_of_the_payload_works_on_every_database():
    """PostgreSQL keeps the payload as json, which has none of jsonb's operators: each
    lookup and key transform reads it as jsonb, so an integrator's query behaves as on
    the other databases."""
    purchase = OutboxEventFactory(
        payload={"event_name": "Purchase", "custom_data": {"currency": "EUR", "value": 12.5}}
    )
    lead = OutboxEventFactory(payload={"event_name": "Lead", "user_data": {"em": ["h"]}})
    unbuilt = OutboxEventFactory(payload={})
    rows = OutboxEvent.objects.order_by("pk")

    def found(**lookup):
        return [row.pk for row in rows.filter(**lookup)]

    assert found(payload={}) == [unbuilt.pk]
    assert found(payload__in=[{}, lead.payload]) == [lead.pk, unbuilt.pk]
    if connection.features.supports_json_field_contains:  # not SQLite's
        assert found(payload__contains={"event_name": "Lead"}) == [lead.pk]
        assert found(payload__contained_by={"event_name": "Lead", "x": 1}) == [unbuilt.pk]
    assert found(payload__has_key="custom_data") == [purchase.pk]
    assert found(payload__has_keys=["event_name", "user_data"]) == [lead.pk]
    assert found(payload__has_any_keys=["user_data", "custom_data"]) == [purchase.pk, lead.pk]
    assert found(payload__user_data__has_key="em") == [lead.pk]
    assert found(payload__custom_data__currency="EUR") == [purchase.pk]
    assert found(payload__custom_data__value__gt=10) == [purchase.pk]
    assert found(payload__event_name__in=["Lead", "Other"]) == [lead.pk]
    assert list(rows.values_list("payload__event_name", "payload__custom_data")) == [
        ("Purchase", {"currency": "EUR", "value": 12.5}),
        ("Lead", None),
        (None, None),
    ]
    assert rows.get(pk=purchase.pk).payload == purchase.payload


@pytest.mark.django_db
def test_match_keys_follow_any_save_of_the_payload():
    row = OutboxEventFactory(payload={"user_data": {"em": ["x"]}})
    row.payload = {"user_data": {"ph": ["y"]}}
    row.status = OutboxEvent.Status.CANCELLED
    row.save(update_fields=(name for name in ["status", "payload"]))  # any iterable
    stored = OutboxEvent.objects.get(pk=row.pk)
    assert (stored.status, stored.payload, stored.match_keys) == (
        "cancelled",
        {"user_data": {"ph": ["y"]}},
        0b10,
    )
    # A save that leaves the payload alone does not load it.
    deferred = OutboxEvent.objects.only("pk", "status").get(pk=row.pk)
    deferred.status = OutboxEvent.Status.PENDING
    with CaptureQueriesContext(connection) as queries:
        deferred.save(update_fields=["status"])
    assert len(queries.captured_queries) == 1
    assert OutboxEvent.objects.get(pk=row.pk).match_keys == 0b10
