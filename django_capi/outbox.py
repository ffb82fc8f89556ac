"""Claiming outbox rows with a lease, and writing outcomes back only while the lease holds.

The only module that knows about locking. Every time comes from the database clock
(``Now()``), so workers on hosts whose clocks disagree still agree on what is due. No
transaction stays open while events travel to Meta: a claim is one short transaction, and
each write-back is a single UPDATE fenced on the lease token, so a worker whose lease expired
cannot overwrite the result of the worker that took the rows over.

A row is leased while ``leased_until`` is set and not past; a claim writes only the lease and
the attempt count, never ``next_attempt_at`` nor any other indexed column, so PostgreSQL
updates the row in place (HOT: no index entry; migration 0010 leaves pages room for it).
``lease_token`` stays on the row after a write-back as the stamp of its last owner, which is
how a write-back learns exactly which rows it wrote where the database cannot return them.

Round trips: on PostgreSQL a claim is one ``UPDATE … WHERE pk IN (SELECT … FOR UPDATE SKIP
LOCKED LIMIT n) RETURNING …`` and a write-back one ``UPDATE … WHERE pk = ANY(ids) AND <still
owned> RETURNING pk``; on SQLite (3.35 and later) a claim is one ``UPDATE … WHERE pk
IN (SELECT … LIMIT n) RETURNING …``; other databases take the portable path (a locking SELECT
then an UPDATE in one transaction, or SQLite's compare-and-set). A request's record and its
write-back share one transaction (``writing``), and the drainer's transactions do not wait for
their commit to reach the disk on PostgreSQL (``_begin_drainer_write`` says why that is safe).

Claims read only what delivery needs, the payload as the JSON text the database holds: it
goes into the request as it is, never decoded and encoded again.

History: each request is one ``DeliveryAttempt`` row. A write-back stamps the rows it writes
with it (``last_attempt``, in the same UPDATE); only events the request did not deliver are
linked to it row by row (``AttemptEvent``), so a delivered event costs no INSERT of its own.

Deadlocks: no writer of this app waits for a row a lease holds. Claims and the per-pixel
sweeps (postpone, resume) skip rows another worker holds, and the admin's actions and the
purge match only rows no lease holds. The other multi-row updates lock their rows in
primary-key order first (``_update``); a write-back on PostgreSQL locks its own leased rows
in its plan's order, and runs again in key order should another application's writer of
the same rows make it a deadlock's victim (``_update_owned``).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from operator import attrgetter
from typing import Any, Protocol, cast

from django.conf import settings
from django.db import OperationalError, connections, router, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import BigIntegerField, Expression, F, Func, Q, QuerySet, TextField
from django.db.models.functions import Cast, Now
from django.db.models.lookups import Exact, In
from django.db.models.sql import Query, UpdateQuery
from django.db.models.sql.compiler import SQLCompiler

from .models import AttemptEvent, DeliveryAttempt, OutboxEvent
from .text import storable

PENDING = OutboxEvent.Status.PENDING
#: The largest value a ``PositiveIntegerField`` holds on every supported database.
MAX_COUNT = 2**31 - 1


class AnswerError(Protocol):
    """Meta's error, as a write-back stores it."""

    @property
    def code(self) -> int | None: ...
    @property
    def subcode(self) -> int | None: ...
    @property
    def type(self) -> str: ...
    @property
    def title(self) -> str: ...
    @property
    def message(self) -> str: ...


class Answer(Protocol):
    """One request's answer, as a write-back stores it (``client.GraphResult`` is one):
    locking knows no HTTP."""

    @property
    def http_status(self) -> int | None: ...
    @property
    def duration_ms(self) -> int: ...
    @property
    def events_received(self) -> int | None: ...
    @property
    def fbtrace_id(self) -> str: ...
    @property
    def messages(self) -> Sequence[str]: ...
    @property
    def error(self) -> AnswerError | None: ...


@dataclass(frozen=True, slots=True)
class LeasedRow:
    """What delivery needs of a claimed row; ``payload`` is its JSON text as stored."""

    pk: int
    pixel_id: str
    event_time: datetime
    action_source: str
    attempts: int
    bisect_group: uuid.UUID | None
    payload: str


#: The columns of a ``LeasedRow`` but its payload, in its order.
LEASED_COLUMNS = [field.name for field in fields(LeasedRow) if field.name != "payload"]


@dataclass(frozen=True)
class Lease:
    """Rows one worker owns until their ``leased_until``."""

    token: uuid.UUID
    using: str
    rows: list[LeasedRow]
    #: The database's clock at the claim; ``now()`` moves it on by this process's monotonic
    #: clock, so decisions never depend on this host's wall clock.
    db_now: datetime
    #: This process's monotonic clock when the claim began: the lease lasts at least its
    #: ``lease_seconds`` from then (``now()`` runs ahead by the claim's own few ms at most).
    claimed_at: float = field(default_factory=time.monotonic)

    def now(self) -> datetime:
        return self.db_now + timedelta(seconds=time.monotonic() - self.claimed_at)


class _AmongIds(In):
    """``pk IN (ids)``, as one parameter on PostgreSQL (an array) and SQLite (a JSON array):
    a thousand placeholders cost the ORM and the driver, which handle each in Python, more
    than the query costs the database."""

    def get_prep_lookup(self) -> list[int]:
        return list(self.rhs)  # integers already: nothing to prepare, one by one

    def as_postgresql(
        self, compiler: SQLCompiler, connection: BaseDatabaseWrapper
    ) -> tuple[str, list[Any]]:
        lhs, lhs_params = self.process_lhs(compiler, connection)
        return f"{lhs} = ANY(%s)", [*lhs_params, list(self.rhs)]

    def as_sqlite(
        self, compiler: SQLCompiler, connection: BaseDatabaseWrapper
    ) -> tuple[str, list[Any]]:
        lhs, lhs_params = self.process_lhs(compiler, connection)
        ids = json.dumps([int(pk) for pk in self.rhs])
        # ``lhs`` is a column the compiler quoted; the ids travel as a parameter.
        return f"{lhs} IN (SELECT value FROM json_each(%s))", [*lhs_params, ids]  # noqa: S608


class _Pending(Exact):
    """``status = 'pending'``, which on SQLite the planner is told holds for most rows it
    reads (``likely()``; nothing else changes). Without statistics (SQLite keeps none until
    ``ANALYZE``) it takes an equality on an indexed column for the most selective condition,
    and would read every pending row through ``capi_outbox_status_created`` (and sort them)
    where the due index, or the primary key, reads one batch: every claim and write-back
    would cost the whole backlog."""

    def __init__(self) -> None:
        super().__init__(F("status"), PENDING)

    def as_sqlite(
        self, compiler: SQLCompiler, connection: BaseDatabaseWrapper
    ) -> tuple[str, list[Any]]:
        sql, params = self.as_sql(compiler, connection)
        return f"likely({sql})", list(params)


def _among(ids: Collection[int]) -> _AmongIds:
    """The rows whose primary key is one of ``ids``, for ``QuerySet.filter``."""
    return _AmongIds(F("pk"), list(ids))


def database_now(using: str) -> datetime:
    """The database's clock: every due time, lease and pause is one of its ``Now()``s."""
    query = Query(None)
    query.add_annotation(Now(), "now")
    ((now,),) = query.get_compiler(using=using).results_iter()
    return cast(datetime, now)


def databases() -> list[str]:
    """The database aliases that hold an outbox: rows follow the alias of the save that made
    them, so a sweep must visit each."""
    return [alias for alias in connections if router.allow_migrate_model(alias, OutboxEvent)]


def claim(
    *,
    limit: int,
    lease_seconds: int,
    using: str,
    exclude_pixels: Collection[str] = (),
    only: Collection[int] | None = None,
) -> Lease:
    """Lease up to ``limit`` due rows and count an attempt for each.

    A row is due while pending, past its ``next_attempt_at`` and not leased (or its lease
    lapsed): setting ``leased_until`` is what hides it from other claims while it is in
    flight, and what lets it come back if this worker dies. The claim writes no indexed
    column, so PostgreSQL updates the row in place (a HOT update: no index entries).
    """
    connection = connections[using]
    if connection.in_atomic_block:
        # A claim inside the caller's transaction would keep its row locks (and the
        # transaction) open while events travel to Meta.
        raise RuntimeError("the outbox must be drained outside a transaction")
    # Taken before the lease is: a lease measured from here never seems longer than it is.
    started = time.monotonic()
    token = uuid.uuid4()
    due = _due(OutboxEvent.objects.using(using))
    if exclude_pixels:
        due = due.exclude(pixel_id__in=exclude_pixels)
    if only is not None:
        due = due.filter(pk__in=list(only))
    oldest_first = due.order_by("next_attempt_at", "pk")
    changes: dict[str, Any] = {
        "lease_token": token,
        "leased_until": Now() + timedelta(seconds=lease_seconds),
        "attempts": F("attempts") + 1,
    }
    columns = (*LEASED_COLUMNS, "text")
    locks_rows = _locks_in_one_statement(connection)
    if locks_rows or _sqlite_returns_rows(connection):
        # One statement picks, updates and returns the rows. PostgreSQL locks them, skipping
        # rows another claim is taking; SQLite runs the statement whole under its database
        # lock, so two claims never take the same row.
        if locks_rows:
            oldest_first = oldest_first.select_for_update(skip_locked=True)
        picked = oldest_first.values("pk")[:limit]
        mine = OutboxEvent.objects.using(using).filter(pk__in=picked)
        with transaction.atomic(using=using):
            # The clock a statement before the UPDATE's: the lease seems a little shorter
            # than it is, never longer (and one value to read, not one per row).
            db_now = _begin_drainer_write(using)
            returned = _update_returning(mine, changes, _claimed_columns(connection))
        rows = [_leased(values, 0) for values in returned]
        return _lease(token, using, rows, db_now, started)
    if connection.features.has_select_for_update_skip_locked:
        # MySQL, MariaDB: concurrent claims skip each other's rows instead of waiting. The
        # rows are read as they are locked (their attempt is counted below). InnoDB may
        # still pick the claim as a deadlock victim against a pk-ordered update: run again.
        for retry in _deadlock_retries(using):
            with retry, transaction.atomic(using=using):
                db_now = database_now(using)  # the transaction's clock, which the UPDATE uses
                read = list(
                    _readable(oldest_first)
                    .select_for_update(skip_locked=True)
                    .values_list(*columns)[:limit]
                )
                if read:
                    ids = [values[0] for values in read]
                    OutboxEvent.objects.using(using).filter(_among(ids)).update(**changes)
        counted = 1
    else:
        # SQLite before 3.35 (no RETURNING): the UPDATE re-checks that each candidate is
        # still due, under the database lock, so two claims never take the same row
        # (compare-and-set); the rows it took are read after it.
        db_now = database_now(using)
        ids = list(oldest_first.values_list("pk", flat=True)[:limit])
        if ids:
            due.filter(_among(ids)).update(**changes)
        mine = OutboxEvent.objects.using(using).filter(_among(ids), lease_token=token)
        read = list(_readable(mine).values_list(*columns)) if ids else []
        counted = 0
    return _lease(token, using, [_leased(values, counted) for values in read], db_now, started)


def _lease(
    token: uuid.UUID, using: str, rows: list[LeasedRow], db_now: datetime, started: float
) -> Lease:
    rows.sort(key=attrgetter("pixel_id", "pk"))
    return Lease(token=token, using=using, rows=rows, db_now=db_now, claimed_at=started)


def _due(rows: QuerySet[OutboxEvent]) -> QuerySet[OutboxEvent]:
    """The rows of ``rows`` a claim may take: pending, their time come, and in no worker's
    hands (never leased, written back, or their lease lapsed)."""
    return rows.filter(
        Q(leased_until=None) | Q(leased_until__lte=Now()),
        _Pending(),
        next_attempt_at__lte=Now(),
    )


#: The payload as the JSON text the database holds.
_PAYLOAD_TEXT = Cast("payload", TextField())


class _EpochMicroseconds(Func):
    """A ``timestamptz`` as whole microseconds since the Unix epoch (PostgreSQL, exact:
    ``EXTRACT`` returns a numeric). psycopg reads an integer in C; a ``timestamptz`` goes
    through the time zone loader Django installs, in Python, a tenth of a claim's time."""

    template = "(EXTRACT(EPOCH FROM %(expressions)s) * 1000000)::int8"
    output_field = BigIntegerField()


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _claimed_columns(connection: BaseDatabaseWrapper) -> list[str | Expression]:
    """What the one-statement claim returns: ``LeasedRow``'s fields in order."""
    columns: list[str | Expression] = [*LEASED_COLUMNS, _PAYLOAD_TEXT]
    if connection.vendor == "postgresql" and settings.USE_TZ:
        # Without USE_TZ, Django reads datetimes in the connection's local time: its loader.
        columns[LEASED_COLUMNS.index("event_time")] = _EpochMicroseconds("event_time")
    return columns


def _readable(rows: QuerySet[OutboxEvent]) -> QuerySet[OutboxEvent]:
    """``rows`` with the payload as its stored JSON text."""
    return rows.annotate(text=_PAYLOAD_TEXT)


def claims_beside_writes(using: str) -> bool:
    """Whether a claim may run on a second connection while a write-back of this worker runs:
    on PostgreSQL, where a claim skips every locked row in one statement and a write-back
    locks only its own lease's rows, so no cycle of waits can form between them. SQLite has
    one writer, and a claim on MySQL or MariaDB can deadlock with a write-back
    (``_deadlock_retries``). Not with Django's connection pool (``OPTIONS["pool"]``): a
    second connection may not be free there, and the claim would wait for the pool's
    timeout."""
    connection = connections[using]
    return _locks_in_one_statement(connection) and not connection.settings_dict.get(
        "OPTIONS", {}
    ).get("pool")


def _locks_in_one_statement(connection: BaseDatabaseWrapper) -> bool:
    """Whether one ``UPDATE … WHERE pk IN (SELECT … ORDER BY … FOR UPDATE) RETURNING …`` can
    pick, lock, write and return rows (PostgreSQL): the statement alone holds the locks, and
    no follow-up SELECT learns what it wrote. MySQL and MariaDB can neither return rows from
    an UPDATE nor limit a subquery of the table updated; SQLite has no row locks."""
    features = connection.features
    return (
        connection.vendor == "postgresql"
        and features.has_select_for_update_skip_locked
        and features.update_can_self_select
        and features.allow_sliced_subqueries_with_in
    )


def _sqlite_returns_rows(connection: BaseDatabaseWrapper) -> bool:
    """Whether this is SQLite 3.35 or later, whose ``UPDATE`` can return the rows it wrote."""
    return connection.vendor == "sqlite" and connection.features.can_return_columns_from_insert


def _begin_drainer_write(using: str) -> datetime:
    """The database's clock, read as the first statement of a claim's transaction. On
    PostgreSQL the same statement lets that transaction's commit return before it reaches
    the disk (``synchronous_commit = off``, for this transaction alone; ``writing`` does the
    same for write-backs): a commit lost to a server crash only means its rows are sent
    again, which the at-least-once contract and Meta's deduplication by ``event_id`` cover
    (docs/architecture.md, "Delivery"), and each wait for the disk is a flush of the WAL,
    several milliseconds per batch."""
    connection = connections[using]
    if connection.vendor != "postgresql":
        return database_now(using)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT STATEMENT_TIMESTAMP(), {_NO_WAIT_FOR_DISK}")
        return cast(datetime, cursor.fetchone()[0])


#: ``SET LOCAL synchronous_commit = off`` as an expression: PostgreSQL only.
_NO_WAIT_FOR_DISK = "set_config('synchronous_commit', 'off', true)"


@contextmanager
def writing(lease: Lease) -> Iterator[None]:
    """One transaction for the writes of one request's outcome (its ``record_attempt`` and
    the rows' write-back): one commit instead of one per statement, and on PostgreSQL one
    that need not wait for the disk (``_begin_drainer_write``). MySQL and MariaDB keep a
    transaction per write, which a deadlock may need to run again (``_deadlock_retries``)."""
    connection = connections[lease.using]
    if connection.vendor == "mysql" or connection.in_atomic_block:
        yield
        return
    with transaction.atomic(using=lease.using):
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(f"SELECT {_NO_WAIT_FOR_DISK}")
        yield


def _update_returning(
    rows: QuerySet[OutboxEvent], changes: dict[str, Any], returning: Sequence[str | Expression]
) -> list[tuple[Any, ...]]:
    """``rows.update(**changes)`` that returns ``returning`` (field names or expressions) of
    each row written, in one statement (``UPDATE … RETURNING``), as the ORM would read them."""
    query = cast(UpdateQuery, rows.query.chain(UpdateQuery))
    query.add_update_values(changes)
    compiler = query.get_compiler(rows.db)
    # Django compiles FOR UPDATE only inside a transaction: the caller's, or one of its own
    # for this one statement (never a savepoint: a round trip for nothing).
    atomic = transaction.atomic(using=rows.db, savepoint=False)
    with atomic, connections[rows.db].cursor() as cursor:
        sql, params = compiler.as_sql()
        columns, expressions = [], []
        for item in returning:
            expression = F(item) if isinstance(item, str) else item
            expressions.append(expression.resolve_expression(query))
            column_sql, column_params = compiler.compile(expressions[-1])
            columns.append(column_sql)
            params = (*params, *column_params)
        cursor.execute(f"{sql} RETURNING {', '.join(columns)}", params)
        returned = cursor.fetchall()
    # What the driver does not read as Python values itself (SQLite's datetimes and UUIDs).
    converters = compiler.get_converters(expressions)
    if converters:
        return [tuple(row) for row in compiler.apply_converters(returned, converters)]
    return list(returned)


def _leased(values: Sequence[Any], counted: int) -> LeasedRow:
    """A ``LeasedRow`` of the values read, with ``counted`` more attempts than they show."""
    pk, pixel_id, event_time, action_source, attempts, bisect_group, payload = values
    if type(event_time) is int:  # _EpochMicroseconds
        event_time = _EPOCH + timedelta(microseconds=event_time)
    return LeasedRow(
        pk, pixel_id, event_time, action_source, attempts + counted, bisect_group, payload
    )


def keep(lease: Lease, rows: Sequence[LeasedRow], lease_seconds: int) -> list[LeasedRow]:
    """Extend the lease of ``rows`` and return those still owned: rows taken over by another
    worker after this lease lapsed must not be sent again."""
    lease_end = Now() + timedelta(seconds=lease_seconds)
    still = set(_update_owned(lease, rows, _owned(lease, rows), leased_until=lease_end))
    return [row for row in rows if row.pk in still]


def mark_delivered(
    lease: Lease, rows: Sequence[LeasedRow], result: Answer, *, attempt: int | None = None
) -> list[int]:
    return _write(
        lease,
        rows,
        status=OutboxEvent.Status.DELIVERED,
        delivered_at=Now(),
        last_error="",
        bisect_group=None,
        **_answer(result, attempt),
    )


def mark_failed(
    lease: Lease,
    rows: Sequence[LeasedRow],
    *,
    reason: OutboxEvent.FailureReason,
    error: str,
    result: Answer | None = None,
    attempt: int | None = None,
) -> list[int]:
    answer = _answer(result, attempt) if result is not None else {}
    return _write(
        lease,
        rows,
        status=OutboxEvent.Status.FAILED,
        failure_reason=reason,
        last_error=error,
        bisect_group=None,  # a replay starts afresh
        **answer,
    )


def retry_later(
    lease: Lease,
    rows: Sequence[LeasedRow],
    *,
    delay: timedelta,
    error: str,
    result: Answer,
    bisect_group: uuid.UUID | None = None,
    attempt: int | None = None,
) -> list[int]:
    """Back to ``pending`` after ``delay``; the attempt counts. Rows given a ``bisect_group``
    are sent together, apart from other rows, next time (see ``OutboxEvent.bisect_group``)."""
    return _write(
        lease,
        rows,
        next_attempt_at=Now() + delay,
        last_error=error,
        bisect_group=bisect_group,
        **_answer(result, attempt),
    )


def release(
    lease: Lease,
    rows: Sequence[LeasedRow],
    *,
    delay: timedelta,
    error: str,
    result: Answer,
    attempt: int | None = None,
) -> list[int]:
    """Back to ``pending`` after ``delay`` without spending an attempt: the events were not
    at fault (the pixel is rate limited or its token is broken)."""
    return _write(
        lease,
        rows,
        next_attempt_at=Now() + delay,
        attempts=F("attempts") - 1,
        last_error=error,
        **_answer(result, attempt),
    )


def postpone_pixel(using: str, pixel_id: str, delay: timedelta) -> int:
    """Move a paused pixel's waiting rows past the pause, so claims stop scanning them. Rows
    another worker is writing are skipped: claims leave a paused pixel alone anyway."""
    until = Now() + delay
    waiting = OutboxEvent.objects.using(using).filter(
        pixel_id=pixel_id, status=PENDING, leased_until=None, next_attempt_at__lt=until
    )
    return _update(waiting, skip_locked=True, next_attempt_at=until)


def resume_pixel(using: str, pixel_id: str) -> int:
    """Make a pixel's waiting rows due now (its token was replaced); rows in flight stay."""
    waiting = OutboxEvent.objects.using(using).filter(
        pixel_id=pixel_id, status=PENDING, leased_until=None, next_attempt_at__gt=Now()
    )
    return _update(waiting, skip_locked=True, next_attempt_at=Now())


def abandon(lease: Lease, *, delay: timedelta) -> int:
    """Give back every row this lease still holds, due after ``delay``: the drain stopped on
    an error, and its rows must not wait out the lease. The attempt counts, so an event that
    breaks the worker each time is failed as exhausted after ``MAX_ATTEMPTS``."""
    held = OutboxEvent.objects.using(lease.using).filter(
        lease_token=lease.token, leased_until__isnull=False, status=PENDING
    )
    return _update(held, leased_until=None, next_attempt_at=Now() + delay)


def unclaim(lease: Lease) -> int:
    """Give back every row this lease still holds, due as before and with the attempt the
    claim counted taken back: the rows were claimed ahead and never sent."""
    held = OutboxEvent.objects.using(lease.using).filter(
        lease_token=lease.token, leased_until__isnull=False, status=PENDING
    )
    return _update(held, leased_until=None, attempts=F("attempts") - 1)


def record_attempt(
    lease: Lease,
    pixel_id: str,
    *,
    result: Answer,
    outcome: DeliveryAttempt.Outcome,
    batch_size: int,
    undelivered: Sequence[tuple[Sequence[LeasedRow], DeliveryAttempt.Outcome]] = (),
) -> int:
    """Record one request and Meta's answer; link the rows it did not deliver to it, each
    group with what became of it. Returns the record's id, for the write-backs."""
    error = result.error
    attempt = DeliveryAttempt.objects.using(lease.using).create(
        pixel_id=pixel_id,
        outcome=outcome,
        batch_size=batch_size,
        http_status=result.http_status,
        error_code=error.code if error else None,
        error_subcode=error.subcode if error else None,
        error_type=storable(error.type)[:100] if error else "",
        error_title=storable(error.title)[:200] if error else "",
        error_message=storable(error.message) if error else "",
        fbtrace_id=storable(result.fbtrace_id)[:64],
        events_received=_count(result.events_received),
        duration_ms=min(max(result.duration_ms, 0), MAX_COUNT),
        messages=[storable(message) for message in result.messages],
    )
    links = [
        AttemptEvent(attempt_id=attempt.pk, event_id=row.pk, outcome=event_outcome)
        for rows, event_outcome in undelivered
        for row in rows
    ]
    if links:
        AttemptEvent.objects.using(lease.using).bulk_create(links, batch_size=1000)
    return int(attempt.pk)


def _owned(lease: Lease, rows: Sequence[LeasedRow]) -> QuerySet[OutboxEvent]:
    return OutboxEvent.objects.using(lease.using).filter(
        _among([row.pk for row in rows]),
        _Pending(),
        lease_token=lease.token,
        leased_until__isnull=False,
    )


def _update(rows: QuerySet[OutboxEvent], *, skip_locked: bool = False, **changes: Any) -> int:
    """``rows.update(**changes)``, with the rows locked in primary-key order first where the
    database locks rows (an UPDATE alone locks them in whatever order its plan visits them,
    and two such orders deadlock). ``skip_locked`` leaves out rows another worker holds."""
    features = connections[rows.db].features
    if not features.has_select_for_update:
        return rows.update(**changes)  # SQLite: one writer at a time, no row locks
    skip_locked = skip_locked and features.has_select_for_update_skip_locked
    updated = 0
    for retry in _deadlock_retries(rows.db):
        with retry, transaction.atomic(using=rows.db):
            locked = rows.order_by("pk").select_for_update(skip_locked=skip_locked)
            ids = list(locked.values_list("pk", flat=True))
            updated = (
                OutboxEvent.objects.using(rows.db).filter(_among(ids)).update(**changes)
                if ids
                else 0
            )
    return updated


#: InnoDB's "Deadlock found when trying to get lock; try restarting transaction".
_INNODB_DEADLOCK = 1213
_DEADLOCK_ATTEMPTS = 5


class _Retry:
    """One attempt of ``_deadlock_retries``: swallows the deadlock it may retry."""

    def __init__(self, retryable: bool) -> None:
        self.retryable = retryable
        self.failed = False

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, error: BaseException | None, traceback: object) -> bool:
        self.failed = (
            self.retryable
            and isinstance(error, OperationalError)
            and bool(error.args)
            and error.args[0] == _INNODB_DEADLOCK
        )
        return self.failed


#: PostgreSQL's SQLSTATE for "deadlock detected".
_POSTGRES_DEADLOCK = "40P01"


def _deadlocked(error: OperationalError) -> bool:
    """Whether PostgreSQL aborted the statement to break a deadlock (psycopg 3 says it as
    ``sqlstate``, psycopg2 as ``pgcode``)."""
    cause = error.__cause__
    return _POSTGRES_DEADLOCK in (getattr(cause, "sqlstate", None), getattr(cause, "pgcode", None))


def _deadlock_retries(using: str) -> Iterator[_Retry]:
    """Attempts of one transaction, until one is not a deadlock victim.

    On MariaDB/MySQL a ``SKIP LOCKED`` read through the secondary index of
    ``next_attempt_at`` can still deadlock with a pk-ordered update of the same rows (the
    ``rowlocks`` hammer test shows it); InnoDB then rolls the victim's transaction back and
    asks for it to be run again. Each transaction here is whole (never nested in the
    caller's), so it is; PostgreSQL's SKIP LOCKED never waits, and gets one attempt."""
    connection = connections[using]
    retryable = connection.vendor == "mysql" and not connection.in_atomic_block
    for attempt in range(_DEADLOCK_ATTEMPTS):
        retry = _Retry(retryable and attempt < _DEADLOCK_ATTEMPTS - 1)
        yield retry
        if not retry.failed:
            return
        time.sleep(0.01 * (attempt + 1))


def _write(lease: Lease, rows: Sequence[LeasedRow], **changes: Any) -> list[int]:
    """Apply ``changes`` to the rows this lease still owns and end their lease; return the
    ids it wrote."""
    # Rows written stay stamped with this lease's token, now unleased.
    written = OutboxEvent.objects.using(lease.using).filter(
        _among([row.pk for row in rows]), lease_token=lease.token, leased_until=None
    )
    return _update_owned(lease, rows, written, leased_until=None, **changes)


def _update_owned(
    lease: Lease, rows: Sequence[LeasedRow], written: QuerySet[OutboxEvent], **changes: Any
) -> list[int]:
    """Apply ``changes`` to the rows of ``rows`` this lease still owns; return the ids it
    wrote. ``written`` finds them once written, where the database cannot return them."""
    ids = [row.pk for row in rows]
    owned = _owned(lease, rows)
    if not ids:
        return []
    if _locks_in_one_statement(connections[lease.using]):
        try:
            # One UPDATE that says which rows it wrote, locking them in the order its plan
            # visits them (key order for an index scan of the primary key, physical order
            # for a bitmap scan); locking them first in key order in a subquery cost a lock
            # per row (~3 ms per 1,000 rows, a sixth of the write-back). No writer of this
            # app waits for a leased row (module docstring), so only another application's
            # UPDATE of these rows can close a cycle; PostgreSQL then aborts one of the two
            # after ``deadlock_timeout``. A write-back so aborted runs again, locking its
            # rows in key order first; the savepoint (inside ``writing``) keeps the
            # request's record.
            with transaction.atomic(using=lease.using):
                return sorted(pk for (pk,) in _update_returning(owned, changes, ["pk"]))
        except OperationalError as error:
            if not _deadlocked(error):
                raise
        picked = owned.order_by("pk").select_for_update().values("pk")[: len(ids)]
        mine = OutboxEvent.objects.using(lease.using).filter(pk__in=picked)
        return sorted(pk for (pk,) in _update_returning(mine, changes, ["pk"]))
    if _update(owned, **changes) == len(ids):
        return ids
    # Some rows were taken over by another worker after this lease lapsed.
    return list(written.order_by("pk").values_list("pk", flat=True))


def _answer(result: Answer, attempt: int | None) -> dict[str, Any]:
    error = result.error
    return {
        "last_attempt_id": attempt,
        "last_attempt_at": Now(),
        "last_http_status": result.http_status,
        "last_error_code": error.code if error else None,
        "last_error_subcode": error.subcode if error else None,
        "last_error_type": storable(error.type)[:100] if error else "",
        "last_events_received": _count(result.events_received),
        "last_duration_ms": _count(result.duration_ms),
        "fbtrace_id": storable(result.fbtrace_id)[:64],
    }


def _count(value: int | None) -> int | None:
    """A count clamped into a ``PositiveIntegerField`` on every database."""
    return None if value is None else min(max(value, 0), MAX_COUNT)
