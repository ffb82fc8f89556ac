"""Claims and fenced write-backs, on whichever database the suite runs on."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.db import connection, router, transaction
from django.test import override_settings
from django.utils import timezone

from django_capi import outbox
from django_capi.client import ErrorKind, GraphFailure, GraphResult
from django_capi.models import OutboxEvent
from tests.factories import OutboxEventFactory

pytestmark = pytest.mark.django_db(transaction=True)

OK = GraphResult(http_status=200, duration_ms=5, events_received=1, fbtrace_id="trace")
DOWN = GraphResult(http_status=503, duration_ms=5, error=GraphFailure(ErrorKind.TRANSIENT, "down"))


def claim(limit: int = 100, lease_seconds: int = 60, **kwargs) -> outbox.Lease:
    return outbox.claim(
        limit=limit,
        lease_seconds=lease_seconds,
        using=router.db_for_write(OutboxEvent),
        **kwargs,
    )


def test_a_claim_leases_rows_counts_an_attempt_and_hides_them():
    created = OutboxEventFactory.create_batch(3)
    lease = claim()
    assert len(lease.rows) == 3
    for before, row in zip(created, OutboxEvent.objects.order_by("pk"), strict=True):
        assert row.lease_token == lease.token
        assert row.attempts == 1
        assert row.leased_until > timezone.now() + timedelta(seconds=55)
        # The claim writes no indexed column (PostgreSQL updates the row in place): the
        # lease alone hides the row, however long ago it fell due.
        assert row.next_attempt_at == before.next_attempt_at
    assert claim().rows == []
    assert abs(lease.db_now - timezone.now()) < timedelta(seconds=5)


def test_a_leased_row_is_never_claimed_twice_while_its_lease_holds():
    rows = OutboxEventFactory.create_batch(4, due=True)
    first = claim(limit=2)
    # Time passes for the rows (a send-now, a replayed backoff), not for the lease.
    OutboxEvent.objects.update(next_attempt_at=timezone.now() - timedelta(hours=1))
    second = claim()
    assert [row.pk for row in first.rows] == [rows[0].pk, rows[1].pk]
    assert [row.pk for row in second.rows] == [rows[2].pk, rows[3].pk]
    assert claim().rows == []
    assert {row.attempts for row in OutboxEvent.objects.all()} == {1}


def test_a_lapsed_lease_is_claimed_again_and_fences_its_first_owner():
    OutboxEventFactory.create_batch(2, due=True)
    stale = claim()
    OutboxEvent.objects.update(leased_until=timezone.now() - timedelta(seconds=1))
    new = claim()
    assert [row.pk for row in new.rows] == [row.pk for row in stale.rows]
    assert {row.attempts for row in new.rows} == {2}
    assert outbox.keep(stale, stale.rows, 60) == []
    assert outbox.mark_delivered(stale, stale.rows, OK) == []
    assert outbox.mark_delivered(new, new.rows, OK) == [row.pk for row in new.rows]
    assert list(OutboxEvent.objects.values_list("lease_token", flat=True)) == [new.token] * 2


def test_claims_split_the_due_rows_between_them_oldest_first():
    rows = OutboxEventFactory.create_batch(5)
    first, second, third = claim(limit=2), claim(limit=2), claim(limit=2)
    assert [row.pk for row in first.rows] == [rows[0].pk, rows[1].pk]
    assert [row.pk for row in second.rows] == [rows[2].pk, rows[3].pk]
    assert [row.pk for row in third.rows] == [rows[4].pk]


def test_rows_not_yet_due_or_not_pending_are_not_claimed():
    rows = OutboxEventFactory.create_batch(3)
    OutboxEvent.objects.filter(pk=rows[0].pk).update(
        next_attempt_at=timezone.now() + timedelta(hours=1)
    )
    OutboxEvent.objects.filter(pk=rows[1].pk).update(status=OutboxEvent.Status.FAILED)
    assert [row.pk for row in claim().rows] == [rows[2].pk]


def test_excluded_pixels_are_left_alone():
    OutboxEventFactory.create_batch(2, pixel_id="111")
    OutboxEventFactory.create_batch(2, pixel_id="222")
    assert {row.pixel_id for row in claim(exclude_pixels={"111"}).rows} == {"222"}


def test_a_lost_lease_cannot_overwrite_the_new_owners_result():
    OutboxEventFactory.create_batch(2)
    slow = claim(lease_seconds=1)
    ids = [row.pk for row in slow.rows]
    time.sleep(1.1)  # the lease runs out; another worker takes the rows over
    fast = claim()
    assert [row.pk for row in fast.rows] == ids
    assert outbox.keep(slow, slow.rows, 60) == []  # so the slow worker does not send them
    assert outbox.mark_delivered(fast, fast.rows, OK) == ids
    late = {"delay": timedelta(minutes=5), "error": "late", "result": DOWN}
    assert outbox.retry_later(slow, slow.rows, **late) == []
    assert outbox.mark_failed(slow, slow.rows, reason="rejected", error="late") == []
    assert set(OutboxEvent.objects.values_list("status", flat=True)) == {"delivered"}


def test_a_write_back_reports_exactly_the_rows_it_wrote():
    OutboxEventFactory.create_batch(3)
    slow = claim(lease_seconds=1)
    time.sleep(1.1)
    taken = claim(limit=1)  # another worker takes one row over
    assert outbox.mark_delivered(slow, slow.rows, OK) == [row.pk for row in slow.rows[1:]]
    assert outbox.mark_delivered(taken, taken.rows, OK) == [slow.rows[0].pk]


def test_rows_of_a_crashed_worker_come_back_after_the_lease():
    OutboxEventFactory.create_batch(2)
    crashed = claim(lease_seconds=1)
    assert claim().rows == []
    time.sleep(1.1)
    again = claim()
    assert len(again.rows) == 2
    assert again.token != crashed.token
    assert {row.attempts for row in again.rows} == {2}


def test_keeping_rows_extends_their_lease():
    OutboxEventFactory.create()
    lease = claim(lease_seconds=1)
    assert outbox.keep(lease, lease.rows, 60) == lease.rows
    time.sleep(1.1)
    assert claim().rows == []


def test_keeping_rows_keeps_only_those_still_owned():
    OutboxEventFactory.create_batch(3, due=True)
    lease = claim()
    first, *rest = lease.rows
    OutboxEvent.objects.filter(pk=first.pk).update(leased_until=timezone.now())
    taken = claim()
    assert [row.pk for row in taken.rows] == [first.pk]
    assert outbox.keep(lease, lease.rows, 60) == rest


def test_claiming_inside_a_transaction_is_refused():
    OutboxEventFactory.create()
    with transaction.atomic(), pytest.raises(RuntimeError, match="outside a transaction"):
        claim()


def test_release_gives_the_attempt_back_and_retry_keeps_it():
    rows = OutboxEventFactory.create_batch(2)
    lease = claim()
    first, second = lease.rows
    outbox.release(lease, [first], delay=timedelta(0), error="paused", result=DOWN)
    outbox.retry_later(lease, [second], delay=timedelta(0), error="down", result=DOWN)
    released, retried = OutboxEvent.objects.order_by("pk")
    assert (released.attempts, retried.attempts) == (0, 1)
    assert released.leased_until is None and retried.leased_until is None
    time.sleep(0.01)  # SQLite's clock ticks in milliseconds
    assert [row.pk for row in claim().rows] == [row.pk for row in rows]  # due again
    assert (retried.last_error, retried.last_http_status) == ("down", 503)


def test_every_database_with_an_outbox_is_listed():
    assert outbox.databases() == ["default", "other"]


@pytest.mark.postgres
def test_a_claim_skips_rows_another_claim_is_locking_instead_of_waiting():
    from django.db import connection, connections

    rows = OutboxEventFactory.create_batch(4, due=True)
    table = OutboxEvent._meta.db_table
    other = connections.create_connection("default")
    try:
        other.set_autocommit(False)
        with other.cursor() as cursor:  # a concurrent claim, mid-statement on the oldest two
            cursor.execute(
                f"SELECT id FROM {table} WHERE id IN (%s, %s) FOR UPDATE",  # noqa: S608
                [rows[0].pk, rows[1].pk],
            )
        with connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = '2s'")  # waiting would fail, not hang
        lease = claim()
        assert [row.pk for row in lease.rows] == [rows[2].pk, rows[3].pk]
    finally:
        other.rollback()
        other.close()
        with connection.cursor() as cursor:
            cursor.execute("RESET lock_timeout")
    assert [row.pk for row in claim().rows] == [rows[0].pk, rows[1].pk]


@pytest.mark.postgres
def test_a_write_back_aborted_to_break_a_deadlock_runs_again_and_keeps_the_record():
    """A write-back meets a writer that locks the same rows in the other order: PostgreSQL
    aborts the write-back (its deadlock_timeout is the shorter), which runs again with its
    rows locked in key order, inside the same transaction as the request's record."""
    from django.db import connection, connections

    from django_capi.models import DeliveryAttempt

    first, second = OutboxEventFactory.create_batch(2, due=True)
    lease = claim()
    table = OutboxEvent._meta.db_table
    writer_pid = connection.connection.info.backend_pid
    holding, errors, took_first = threading.Event(), [], []

    def other_writer() -> None:
        other, watch = (connections.create_connection("default") for _ in range(2))
        try:
            other.set_autocommit(False)
            with other.cursor() as cursor:
                cursor.execute("SET LOCAL deadlock_timeout = '30s'")
                cursor.execute(f"SELECT id FROM {table} WHERE id = %s FOR UPDATE", [second.pk])  # noqa: S608
                holding.set()
                with watch.cursor() as watching:  # until the write-back waits for `second`
                    for _ in range(500):
                        watching.execute(
                            "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
                            [writer_pid],
                        )
                        if watching.fetchone()[0] == "Lock":
                            break
                        time.sleep(0.01)
                cursor.execute(f"SELECT id FROM {table} WHERE id = %s FOR UPDATE", [first.pk])  # noqa: S608
                took_first.append(True)  # only once the write-back let go of `first`
            other.commit()
        except Exception as error:  # noqa: BLE001 - reported by the test below
            errors.append(error)
            other.rollback()
        finally:
            other.close()
            watch.close()

    thread = threading.Thread(target=other_writer)
    thread.start()
    try:
        assert holding.wait(10)
        with connection.cursor() as cursor:
            cursor.execute("SET deadlock_timeout = '50ms'")
        with outbox.writing(lease):
            attempt = outbox.record_attempt(
                lease, "1", result=OK, outcome=DeliveryAttempt.Outcome.DELIVERED, batch_size=2
            )
            written = outbox.mark_delivered(lease, lease.rows, OK, attempt=attempt)
    finally:
        thread.join(30)
        with connection.cursor() as cursor:
            cursor.execute("RESET deadlock_timeout")
    assert not errors
    assert took_first  # the write-back was the deadlock's victim, and went on
    assert written == [first.pk, second.pk]
    assert list(OutboxEvent.objects.order_by("pk").values_list("status", "last_attempt_id")) == [
        ("delivered", attempt),
        ("delivered", attempt),
    ]
    assert DeliveryAttempt.objects.get().pk == attempt


def _synchronous_commit(connection) -> str:
    with connection.cursor() as cursor:
        cursor.execute("SHOW synchronous_commit")
        return str(cursor.fetchone()[0])


def test_a_requests_record_and_its_write_back_commit_together():
    from django.db import connections

    from django_capi.models import DeliveryAttempt

    OutboxEventFactory.create_batch(2, due=True)
    lease = claim()
    connection = connections[lease.using]
    if connection.vendor == "mysql":
        # A transaction per write there: a deadlock victim is one write to run again.
        with outbox.writing(lease):
            assert not connection.in_atomic_block
        return
    postgres = connection.vendor == "postgresql"
    default = _synchronous_commit(connection) if postgres else ""
    with pytest.raises(RuntimeError), outbox.writing(lease):
        assert connection.in_atomic_block
        if postgres:  # for this transaction alone (docs/architecture.md, "Delivery")
            assert _synchronous_commit(connection) == "off"
        attempt = outbox.record_attempt(
            lease, "1", result=OK, outcome=DeliveryAttempt.Outcome.DELIVERED, batch_size=2
        )
        assert outbox.mark_delivered(lease, lease.rows, OK, attempt=attempt)
        raise RuntimeError("the write-back stopped half-way")
    # Neither the record nor the rows were written: the rows are still the lease's.
    assert not DeliveryAttempt.objects.exists()
    assert set(OutboxEvent.objects.values_list("status", flat=True)) == {"pending"}
    with outbox.writing(lease):
        attempt = outbox.record_attempt(
            lease, "1", result=OK, outcome=DeliveryAttempt.Outcome.DELIVERED, batch_size=2
        )
        written = outbox.mark_delivered(lease, lease.rows, OK, attempt=attempt)
    assert written == [row.pk for row in lease.rows]
    assert list(OutboxEvent.objects.values_list("last_attempt_id", flat=True)) == [attempt] * 2
    if postgres:  # nothing leaks into the connection's later transactions
        claim()
        assert _synchronous_commit(connection) == default


def test_claims_and_write_backs_read_one_batch_not_the_whole_backlog():
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    OutboxEventFactory.create_batch(3, due=True)
    with CaptureQueriesContext(connection) as captured:
        lease = claim(limit=2)
        outbox.mark_delivered(lease, lease.rows, OK)
    updates = [q["sql"] for q in captured if q["sql"].startswith("UPDATE")]
    assert len(updates) == 2
    if connection.vendor != "sqlite":
        # The planner hint is SQLite's own function; elsewhere statistics guide the plan.
        assert not any("likely(" in sql for sql in updates)
        return
    plans = []
    for sql in updates:
        with connection.cursor() as cursor:
            cursor.execute(f"EXPLAIN QUERY PLAN {sql}")
            plans.append(" / ".join(str(row[3]) for row in cursor.fetchall()))
    claim_plan, write_back_plan = plans
    # Without statistics SQLite would read every pending row through the status index
    # and sort them: the due index gives the oldest rows in order, and the write-back goes
    # straight to its rows by primary key.
    assert "USING INDEX capi_outbox_due" in claim_plan, claim_plan
    assert "TEMP B-TREE" not in claim_plan, claim_plan
    assert "INTEGER PRIMARY KEY" in write_back_plan, write_back_plan
    assert "capi_outbox_status_created" not in write_back_plan, write_back_plan


def test_the_claim_for_sqlite_without_returning_leases_each_row_once(monkeypatch):
    """SQLite before 3.35 claims by compare-and-set, as MySQL/MariaDB claims elsewhere."""
    monkeypatch.setattr(outbox, "_sqlite_returns_rows", lambda connection: False)
    rows = OutboxEventFactory.create_batch(3, due=True)
    first, second = claim(limit=2), claim(limit=2)
    assert [row.pk for row in first.rows] == [rows[0].pk, rows[1].pk]
    assert [row.pk for row in second.rows] == [rows[2].pk]
    assert {row.attempts for row in first.rows + second.rows} == {1}
    assert claim().rows == []
    assert outbox.mark_delivered(first, first.rows, OK) == [rows[0].pk, rows[1].pk]


def _stored_as_claimed(row: OutboxEvent) -> tuple[object, ...]:
    """``row`` as a claim should return it (``_claimed``), its attempt counted."""
    row.refresh_from_db()
    return (
        row.pk,
        row.pixel_id,
        row.event_time,
        row.action_source,
        row.attempts + 1,
        row.bisect_group,
        row.payload,
    )


def _claimed(row: outbox.LeasedRow) -> tuple[object, ...]:
    """A claimed row's values, its payload decoded (ORM writes on PostgreSQL go through jsonb,
    which prints the text anew)."""
    values = dataclasses.astuple(row)
    return (*values[:-1], json.loads(row.payload))


@pytest.mark.parametrize("path", ["one statement", "compare-and-set"])
def test_a_claimed_row_reads_as_the_row_stored(monkeypatch, path):
    """Every claim path returns the row's values exactly: PostgreSQL's reads the event time
    as microseconds since the epoch, the others as a datetime."""
    if path == "compare-and-set":
        monkeypatch.setattr(outbox, "_sqlite_returns_rows", lambda connection: False)
        monkeypatch.setattr(outbox, "_locks_in_one_statement", lambda connection: False)
    times = [
        timezone.now() - timedelta(hours=1, microseconds=1),
        datetime(2026, 3, 29, 0, 59, 59, 999999, tzinfo=ZoneInfo("Europe/London")),
        datetime(1999, 12, 31, 23, 59, 59, 1, tzinfo=UTC),
        datetime(1969, 7, 20, 20, 17, 40, 500000, tzinfo=UTC),  # before the epoch
        datetime(2026, 1, 1, 12, tzinfo=UTC),  # no microseconds
    ]
    rows = [
        OutboxEventFactory(event_time=when, payload={"event_name": "Lead", "n": ["é", 1.5]})
        for when in times
    ]
    expected = [_stored_as_claimed(row) for row in rows]
    claimed = sorted(claim().rows, key=lambda row: row.pk)
    assert [_claimed(row) for row in claimed] == expected
    assert [row.event_time for row in claimed] == times
    assert all(row.event_time.utcoffset() == timedelta(0) for row in claimed)


@override_settings(USE_TZ=False, TIME_ZONE="America/New_York")
def test_without_use_tz_a_claimed_row_keeps_the_local_time_stored():
    local = datetime(2026, 7, 1, 9, 30, 0, 250)
    expected = _stored_as_claimed(OutboxEventFactory(event_time=local))
    (claimed,) = claim().rows
    assert claimed.event_time == local
    assert _claimed(claimed) == expected


def test_a_claim_reads_an_event_time_written_in_another_form():
    """Rows written by other means than Django (a script, another program) may hold a time
    in another form than Django's (SQLite keeps the text as given): a claim reads it as the
    ORM does."""
    texts = ["2026-03-01 09:00:00.5", "2026-03-01 09:00"]
    if connection.vendor == "sqlite":
        texts.append("2026-03-01T10:00:00.5+01:00")
    rows = OutboxEventFactory.create_batch(len(texts))
    with connection.cursor() as cursor:
        for row, text in zip(rows, texts, strict=True):
            cursor.execute(
                "UPDATE django_capi_outboxevent SET event_time = %s WHERE id = %s", [text, row.pk]
            )
    claimed = sorted(claim().rows, key=lambda row: row.pk)
    assert [row.event_time for row in claimed] == [
        datetime(2026, 3, 1, 9, 0, 0, 500000, tzinfo=UTC),
        datetime(2026, 3, 1, 9, 0, tzinfo=UTC),
        datetime(2026, 3, 1, 9, 0, 0, 500000, tzinfo=UTC),
    ][: len(texts)]
    assert [row.event_time for row in claimed] == [
        row.event_time for row in OutboxEvent.objects.order_by("pk")
    ]


def test_claims_run_beside_write_backs_on_postgresql_unless_a_pool_counts_connections(
    monkeypatch,
):
    assert outbox.claims_beside_writes(connection.alias) == (connection.vendor == "postgresql")
    # A pool's second connection may not be free: the claim would wait for its timeout.
    options = {**connection.settings_dict.get("OPTIONS", {}), "pool": {"max_size": 2}}
    monkeypatch.setitem(connection.settings_dict, "OPTIONS", options)
    assert not outbox.claims_beside_writes(connection.alias)
