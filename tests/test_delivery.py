"""Draining the outbox against the Graph API emulator, over real HTTP."""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
import random
import signal
import threading
import time
from datetime import timedelta

import pytest
from django.core import mail
from django.db import DatabaseError, OperationalError, connection, connections
from django.db.models.functions import Now
from django.utils import timezone

from django_capi import delivery, outbox, signals
from django_capi.client import ErrorKind, GraphClient, GraphFailure, GraphResult
from django_capi.delivery import drain
from django_capi.models import AttemptEvent, DeliveryAttempt, OutboxEvent, PixelState
from django_capi.testing import (
    ConnectionReset,
    Delay,
    GraphError,
    HttpStatus,
    business_use_case_usage,
)
from tests.factories import PIXEL, OutboxEventFactory

pytestmark = pytest.mark.django_db(transaction=True)

Status = OutboxEvent.Status
Reason = OutboxEvent.FailureReason


def make_due() -> None:
    """Let time pass for every waiting row (backoffs, pauses, leases), as the database sees
    it."""
    past = timezone.now() - timedelta(seconds=1)
    OutboxEvent.objects.filter(status="pending").update(next_attempt_at=past)
    OutboxEvent.objects.filter(status="pending", leased_until__gt=past).update(leased_until=past)


def statuses() -> dict[str, int]:
    counts: dict[str, int] = {}
    for status in OutboxEvent.objects.values_list("status", flat=True):
        counts[status] = counts.get(status, 0) + 1
    return counts


@pytest.fixture
def short_timeouts(settings):
    settings.DJANGO_CAPI = {**settings.DJANGO_CAPI, "READ_TIMEOUT": 0.5, "CONNECT_TIMEOUT": 0.5}


def test_pending_rows_are_delivered_with_metas_answer(capi_graph):
    rows = OutboxEventFactory.create_batch(3)
    report = drain()
    assert (report.claimed, report.delivered, report.requests) == (3, 3, 1)
    assert capi_graph.event_ids() == [row.event_id for row in rows]
    (request,) = capi_graph.requests
    assert request.path == f"/v26.0/{PIXEL}/events"
    for row in OutboxEvent.objects.all():
        assert row.status == Status.DELIVERED
        assert row.delivered_at is not None
        assert row.fbtrace_id == request.response["fbtrace_id"]
        assert (row.attempts, row.last_http_status, row.leased_until) == (1, 200, None)
        assert (row.last_events_received, row.last_error_type) == (3, "")
        assert row.last_duration_ms is not None
    attempt = DeliveryAttempt.objects.get()  # one record for the request
    assert (attempt.outcome, attempt.http_status, attempt.events_received) == ("delivered", 200, 3)
    assert (attempt.batch_size, attempt.pixel_id) == (3, PIXEL)
    assert attempt.duration_ms >= 0
    # A delivered event costs no row of its own: its history is the request it points at.
    assert not AttemptEvent.objects.exists()
    for row in rows:
        assert list(DeliveryAttempt.objects.for_event(row.__class__.objects.get(pk=row.pk))) == [
            attempt
        ]


def test_a_second_drain_sends_nothing_again(capi_graph):
    OutboxEventFactory.create_batch(2)
    drain()
    assert drain().claimed == 0
    assert len(capi_graph.requests) == 1


def test_batches_hold_at_most_batch_size_events(capi_graph, settings):
    settings.DJANGO_CAPI = {**settings.DJANGO_CAPI, "BATCH_SIZE": 4}
    OutboxEventFactory.create_batch(10)
    report = drain()
    assert (report.delivered, report.requests) == (10, 3)
    assert [len(request.events) for request in capi_graph.requests] == [4, 4, 2]


# --- the next batch, claimed while the last request is in flight ----------------------------


@pytest.fixture
def claims(monkeypatch) -> list[int]:
    """The rows each claim of the drain took, in order."""
    taken: list[int] = []
    claim = outbox.claim

    def counted(**kwargs):
        lease = claim(**kwargs)
        taken.append(len(lease.rows))
        return lease

    monkeypatch.setattr(outbox, "claim", counted)
    return taken


class WaitsForAClaim(GraphClient):
    """Holds each request until the drain has claimed again (5 s at most), and notes how many
    claims there had been by then."""

    def __init__(self, claims: list[int]) -> None:
        super().__init__()
        self.claims, self.seen = claims, []

    def post_events(self, pixel_id, events):
        before, deadline = len(self.claims), time.monotonic() + 5
        while len(self.claims) == before and time.monotonic() < deadline:
            time.sleep(0.002)
        self.seen.append(len(self.claims))
        return super().post_events(pixel_id, events)


def leases() -> list[tuple[int, object]]:
    return list(OutboxEvent.objects.order_by("pk").values_list("attempts", "leased_until"))


def test_the_next_batch_is_claimed_while_the_last_request_is_in_flight(
    capi_graph, settings, claims
):
    settings.DJANGO_CAPI = {**settings.DJANGO_CAPI, "BATCH_SIZE": 4}
    OutboxEventFactory.create_batch(12)
    client = WaitsForAClaim(claims)
    report = drain(client=client)
    client.close()
    assert (report.delivered, report.requests) == (12, 3)
    # Each request was answered only once the next batch was claimed; the empty claim that
    # ends every drain came during the last one, so there are no more claims than before.
    assert client.seen == [2, 3, 4]
    assert claims == [4, 4, 4, 0]
    assert leases() == [(1, None)] * 12


def test_a_batch_short_of_the_batch_size_claims_nothing_ahead(capi_graph, settings, monkeypatch):
    settings.DJANGO_CAPI = {**settings.DJANGO_CAPI, "BATCH_SIZE": 4}
    OutboxEventFactory.create_batch(6)
    claim, threads = outbox.claim, []

    def noted(**kwargs):
        lease = claim(**kwargs)
        threads.append((len(lease.rows), threading.current_thread() is threading.main_thread()))
        return lease

    monkeypatch.setattr(outbox, "claim", noted)
    assert drain().delivered == 6
    # The full batch's successor was claimed ahead (beside it, on PostgreSQL); the short
    # one's, the empty claim that ends the drain, once it was done, on the drain's thread.
    ahead_on_main = connection.vendor != "postgresql"
    assert threads == [(4, True), (2, ahead_on_main), (0, True)]


def test_a_failed_request_gives_the_batch_claimed_ahead_back_unsent(capi_graph, settings):
    settings.DJANGO_CAPI = {**settings.DJANGO_CAPI, "BATCH_SIZE": 2}
    rows = OutboxEventFactory.create_batch(4)
    capi_graph.script(HttpStatus(503))
    report = drain()
    assert (report.retrying, report.delivered, report.requests) == (2, 2, 2)
    # The two rows claimed during the failed request were given back with their attempt,
    # then claimed again and sent once.
    assert leases() == [(1, None)] * 4
    assert statuses() == {"pending": 2, "delivered": 2}
    assert capi_graph.event_ids()[-2:] == [row.event_id for row in rows[2:]]


def test_a_rate_limit_keeps_the_batch_claimed_ahead_unsent(capi_graph, settings):
    settings.DJANGO_CAPI = {**settings.DJANGO_CAPI, "BATCH_SIZE": 2}
    OutboxEventFactory.create_batch(4)
    capi_graph.script(GraphError(code=17))
    report = drain()
    assert (report.postponed, report.requests) == (2, 1)
    assert len(capi_graph.requests) == 1
    # The rows claimed ahead are neither sent nor charged an attempt, and wait for the pause.
    assert leases() == [(0, None)] * 4
    assert drain().requests == 0


def test_a_drain_stopped_by_its_time_limit_gives_back_the_batch_claimed_ahead(capi_graph, settings):
    settings.DJANGO_CAPI = {**settings.DJANGO_CAPI, "BATCH_SIZE": 2}
    OutboxEventFactory.create_batch(4)
    report = drain(time_limit=0)
    assert (report.delivered, report.unfinished) == (2, 1)
    assert leases() == [(1, None), (1, None), (0, None), (0, None)]
    assert drain().delivered == 2


def test_no_batch_is_claimed_ahead_of_the_last_one_allowed(capi_graph, settings, claims):
    settings.DJANGO_CAPI = {**settings.DJANGO_CAPI, "BATCH_SIZE": 2}
    OutboxEventFactory.create_batch(4)
    assert drain(max_batches=1).delivered == 2
    assert claims == [2]
    assert leases() == [(1, None), (1, None), (0, None), (0, None)]


def test_a_stop_request_ends_the_drain_with_the_batch_in_hand(capi_graph, settings):
    settings.DJANGO_CAPI = {**settings.DJANGO_CAPI, "BATCH_SIZE": 2}
    OutboxEventFactory.create_batch(6)
    report = drain(should_stop=lambda: bool(capi_graph.requests))
    assert (report.delivered, report.requests, report.unfinished) == (2, 1, 1)
    # The batch claimed ahead went back unsent, its attempt with it.
    assert leases() == [(1, None)] * 2 + [(0, None)] * 4
    assert drain().delivered == 4


def test_a_failed_write_back_gives_back_the_batch_claimed_ahead_too(
    capi_graph, settings, monkeypatch
):
    settings.DJANGO_CAPI = {**settings.DJANGO_CAPI, "BATCH_SIZE": 2}
    OutboxEventFactory.create_batch(4)

    def broken(*args, **kwargs):
        raise DatabaseError("the database went away")

    monkeypatch.setattr(outbox, "mark_delivered", broken)
    with pytest.raises(DatabaseError):
        drain()
    # The batch sent is given back for a retry (its attempt counts); the one claimed ahead
    # as it was.
    assert leases() == [(1, None), (1, None), (0, None), (0, None)]


def test_on_postgresql_the_next_batch_is_claimed_on_a_connection_of_its_own(
    capi_graph, settings, monkeypatch
):
    settings.DJANGO_CAPI = {**settings.DJANGO_CAPI, "BATCH_SIZE": 2}
    OutboxEventFactory.create_batch(6)
    claim, seen = outbox.claim, []

    def noted(**kwargs):
        seen.append((threading.current_thread().name, connections[kwargs["using"]]))
        return claim(**kwargs)

    monkeypatch.setattr(outbox, "claim", noted)
    assert drain().delivered == 6
    threads = [name.rsplit("_", 1)[0] for name, _ in seen]
    if connection.vendor == "postgresql":
        # Beside the write-back of the batch before, on a second connection, closed at the end.
        assert threads == [threading.main_thread().name] + ["django-capi-claim"] * 3
        assert {id(wrapper) for _, wrapper in seen[1:]} != {id(seen[0][1])}
        assert all(wrapper.connection is None for _, wrapper in seen[1:])
    else:
        # SQLite has one writer, and a claim on MariaDB can deadlock with a write-back: the
        # drain's own thread claims, while the request is out.
        assert threads == [threading.main_thread().name] * 4


class Interrupted(Exception):
    """Not a database error: what Celery's soft time limit raises, say."""


def test_an_error_claiming_ahead_that_is_not_the_databases_stops_the_drain(
    capi_graph, settings, monkeypatch
):
    settings.DJANGO_CAPI = {**settings.DJANGO_CAPI, "BATCH_SIZE": 2}
    OutboxEventFactory.create_batch(4)
    claim, events = outbox.claim, []

    def interrupted_second(**kwargs):
        if any(event == "claim" for event, _ in events):
            raise Interrupted
        events.append(("claim", time.monotonic()))
        return claim(**kwargs)

    abandon = outbox.abandon

    def noted_abandon(lease, **kwargs):
        events.append(("give back", time.monotonic()))
        return abandon(lease, **kwargs)

    class Slow(GraphClient):
        def post_events(self, pixel_id, payloads):
            time.sleep(0.2)
            result = super().post_events(pixel_id, payloads)
            events.append(("answered", time.monotonic()))
            return result

    monkeypatch.setattr(outbox, "claim", interrupted_second)
    monkeypatch.setattr(outbox, "abandon", noted_abandon)
    client = Slow()
    with pytest.raises(Interrupted):
        drain(client=client)
    client.close()
    # One request; its rows were written back or given back, never before it was answered
    # (SQLite claims ahead on the drain's thread, so the error comes while it is out).
    assert [event for event, _ in events][:2] == ["claim", "answered"]
    assert len(capi_graph.requests) == 1
    assert all(leased is None for _, leased in leases())


def test_a_notice_that_interrupts_the_drain_gives_back_the_batch_claimed_ahead(
    capi_graph, settings
):
    settings.DJANGO_CAPI = {**settings.DJANGO_CAPI, "BATCH_SIZE": 2}
    OutboxEventFactory.create_batch(4)

    def interrupt(**kwargs):
        raise KeyboardInterrupt

    signals.event_delivered.connect(interrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            drain()
    finally:
        signals.event_delivered.disconnect(interrupt)
    # The first batch was delivered; the one claimed ahead was given back unsent.
    assert leases() == [(1, None), (1, None), (0, None), (0, None)]
    assert statuses() == {"delivered": 2, "pending": 2}


class Alarm(Exception):
    """Raised on the drain's thread by a timer, as Celery's soft time limit is."""


def test_an_interruption_during_the_last_request_waits_for_it_before_giving_rows_back(
    capi_graph, settings, monkeypatch
):
    settings.DJANGO_CAPI = {**settings.DJANGO_CAPI, "BATCH_SIZE": 2}
    OutboxEventFactory.create_batch(4)
    events = []
    abandon = outbox.abandon

    def noted_abandon(lease, **kwargs):
        events.append("give back")
        return abandon(lease, **kwargs)

    class Slow(GraphClient):
        def post_events(self, pixel_id, payloads):
            time.sleep(0.5)
            events.append("answered")
            return super().post_events(pixel_id, payloads)

    def alarm(signum, frame):
        raise Alarm

    monkeypatch.setattr(outbox, "abandon", noted_abandon)
    previous = signal.signal(signal.SIGALRM, alarm)
    client = Slow()
    signal.setitimer(signal.ITIMER_REAL, 0.2)
    try:
        with pytest.raises(Alarm):
            drain(client=client)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        client.close()
    assert events == ["answered", "give back"]
    assert all(leased is None for _, leased in leases())
    assert statuses() == {"pending": 4}


@pytest.mark.postgres
def test_a_claimers_connection_that_failed_is_opened_anew(capi_graph, settings, monkeypatch):
    settings.DJANGO_CAPI = {**settings.DJANGO_CAPI, "BATCH_SIZE": 2}
    OutboxEventFactory.create_batch(6)
    claim, calls, sessions = outbox.claim, [], []

    def failing_once(**kwargs):
        calls.append(threading.current_thread().name)
        wrapper = connections[kwargs["using"]]
        wrapper.ensure_connection()
        sessions.append(wrapper.connection)
        if len(calls) == 2:  # the first claim ahead, on the claimer's thread
            raise OperationalError("the server closed the connection")
        return claim(**kwargs)

    monkeypatch.setattr(outbox, "claim", failing_once)
    assert drain().delivered == 6
    # The claim that failed was made again on the drain's thread, after its batch; the
    # claimer's next claim had a new connection.
    assert calls[1] == calls[3] != calls[2] == threading.main_thread().name
    assert sessions[3] is not sessions[1]
    assert sessions[1].closed


current_trace: contextvars.ContextVar[str] = contextvars.ContextVar("current_trace")


def test_requests_sent_while_claiming_ahead_keep_the_callers_context(capi_graph, settings):
    settings.DJANGO_CAPI = {**settings.DJANGO_CAPI, "BATCH_SIZE": 2}
    OutboxEventFactory.create_batch(4)

    class Traced(GraphClient):
        seen: list[str | None] = []

        def post_events(self, pixel_id, payloads):
            self.seen.append(current_trace.get(None))
            return super().post_events(pixel_id, payloads)

    token = current_trace.set("trace-1")
    client = Traced()
    try:
        assert drain(client=client).requests == 2
    finally:
        current_trace.reset(token)
        client.close()
    assert Traced.seen == ["trace-1", "trace-1"]


def test_each_pixel_gets_its_own_request(capi_graph):
    OutboxEventFactory.create_batch(2, pixel_id="111")
    OutboxEventFactory.create_batch(3, pixel_id="222")
    drain()
    assert sorted((r.pixel_id, len(r.events)) for r in capi_graph.requests) == [
        ("111", 2),
        ("222", 3),
    ]


def test_the_test_event_code_is_sent_when_configured(capi_graph, settings):
    settings.DJANGO_CAPI = {**settings.DJANGO_CAPI, "TEST_EVENT_CODE": "TEST123"}
    OutboxEventFactory.create()
    drain()
    assert capi_graph.received_events()[0].test_event_code == "TEST123"


def test_a_batch_with_three_bad_events_delivers_the_rest(capi_graph):
    rows = OutboxEventFactory.bulk_create(1000)
    bad = {rows[17].pk, rows[500].pk, rows[998].pk}
    for row in OutboxEvent.objects.filter(pk__in=bad):
        row.payload["user_data"] = {"em": "not-hashed@example.com"}
        row.save()
    report = drain()
    assert statuses() == {"delivered": 997, "failed": 3}
    failed = OutboxEvent.objects.filter(status=Status.FAILED)
    assert set(failed.values_list("pk", flat=True)) == bad
    for row in failed:
        assert row.failure_reason == Reason.REJECTED
        assert row.last_error.startswith("Meta HTTP 400 code 100")
        assert row.last_error_code == 100
    assert len(capi_graph.event_ids()) == 997
    # Bisecting costs O(k log n): at most 2 requests per level per bad event, plus the first.
    assert report.requests <= 1 + 2 * 3 * math.ceil(math.log2(1000))


@pytest.mark.parametrize(
    "fault",
    [
        HttpStatus(503, "<html>Service Unavailable</html>"),
        HttpStatus(502),
        GraphError(code=1),
        GraphError(code=2),
        GraphError(code=100, is_transient=True, status=400),
        ConnectionReset(),
        Delay(1.0),
    ],
)
def test_transient_failures_retry_later_by_the_database_clock(capi_graph, short_timeouts, fault):
    OutboxEventFactory.create_batch(2)
    capi_graph.script(fault)
    report = drain()
    assert report.retrying == 2
    for row in OutboxEvent.objects.all():
        assert row.status == Status.PENDING
        assert row.attempts == 1
        assert row.leased_until is None
        assert row.next_attempt_at > timezone.now() + timedelta(milliseconds=500)
        assert row.last_error
    assert AttemptEvent.objects.filter(outcome="retry").count() == 2
    make_due()
    assert drain().delivered == 2
    assert statuses() == {"delivered": 2}


def test_retries_stop_at_max_attempts(capi_graph, settings):
    settings.DJANGO_CAPI = {**settings.DJANGO_CAPI, "MAX_ATTEMPTS": 3}
    OutboxEventFactory.create()
    capi_graph.fail_always(HttpStatus(500))
    for _ in range(3):
        drain()
        make_due()
    row = OutboxEvent.objects.get()
    assert (row.status, row.failure_reason, row.attempts) == ("failed", "exhausted", 3)
    assert row.last_error == "HTTP 500 without a Graph API error body: not Meta's answer"
    assert len(capi_graph.requests) == 3


def test_a_retry_that_would_come_too_late_fails_as_expired(capi_graph):
    # Sendable now (a minute of margin is kept), but gone before the earliest retry (1 s).
    OutboxEventFactory.create(age=timedelta(days=7) - timedelta(seconds=61))
    capi_graph.script(HttpStatus(503))
    drain()
    row = OutboxEvent.objects.get()
    assert (row.status, row.failure_reason) == ("failed", "expired")
    assert row.last_error.endswith("(too old to retry)")


def test_stale_rows_never_leave_the_machine(capi_graph):
    fresh = OutboxEventFactory.create_batch(2)
    stale = OutboxEventFactory.create(age=timedelta(days=7, minutes=1))
    store = OutboxEventFactory.create(age=timedelta(days=30), action_source="physical_store")
    drain()
    stale.refresh_from_db()
    assert (stale.status, stale.failure_reason) == ("failed", "expired")
    assert stale.last_http_status is None
    assert not DeliveryAttempt.objects.for_event(stale).exists()
    assert sorted(capi_graph.event_ids()) == sorted(row.event_id for row in [*fresh, store])


def test_a_rate_limit_pauses_the_pixel_for_as_long_as_meta_asks(capi_graph):
    OutboxEventFactory.create_batch(3)
    headers = business_use_case_usage(PIXEL, estimated_time_to_regain_access=2)
    capi_graph.script(GraphError(code=17, subcode=2446079, headers=headers))
    report = drain()
    assert report.postponed == 3
    state = PixelState.objects.get(pixel_id=PIXEL)
    assert state.paused_until > timezone.now() + timedelta(seconds=110)
    for row in OutboxEvent.objects.all():
        assert (row.status, row.attempts) == ("pending", 0)  # the budget is kept
        assert row.next_attempt_at > timezone.now() + timedelta(seconds=110)
        assert row.last_error_code == 17
    # New events for the paused pixel wait too.
    OutboxEventFactory.create()
    assert drain().requests == 0
    assert len(capi_graph.requests) == 1
    PixelState.objects.update(paused_until=timezone.now())
    make_due()
    assert drain().delivered == 4


@pytest.mark.parametrize(
    "fault", [HttpStatus(429), GraphError(code=4), GraphError(code=613), GraphError(code=368)]
)
def test_other_rate_limits_pause_with_a_default(capi_graph, fault):
    OutboxEventFactory.create()
    capi_graph.script(fault)
    drain()
    assert PixelState.objects.get().paused_until > timezone.now() + timedelta(seconds=50)
    assert OutboxEvent.objects.get().attempts == 0


@pytest.mark.parametrize(
    "fault",
    [
        GraphError(code=190, subcode=463),
        GraphError(code=190, subcode=467),
        GraphError(code=102),
        GraphError(code=10),
        GraphError(code=200),
        GraphError(code=100, subcode=33),
    ],
)
def test_a_broken_token_opens_the_circuit_and_burns_no_attempts(capi_graph, settings, fault):
    alerts = []
    signals.token_invalid.connect(lambda **kwargs: alerts.append(kwargs), weak=False)
    try:
        OutboxEventFactory.create_batch(5)
        capi_graph.fail_always(fault)
        drain()
        drain()  # the circuit is open: nothing is sent
        assert len(capi_graph.requests) == 1
        assert len(alerts) == 1
        assert alerts[0]["pixel_id"] == PIXEL
        assert len(mail.outbox) == 1
        assert "sending stopped" in mail.outbox[0].subject
        for row in OutboxEvent.objects.all():
            assert (row.status, row.attempts) == ("pending", 0)
        assert PixelState.objects.get().circuit_opened_at is not None

        # The token is fixed: the next drain probes at once and delivers.
        capi_graph.fail_always(None)
        capi_graph.access_tokens = ("a-new-token",)
        settings.DJANGO_CAPI = {**settings.DJANGO_CAPI, "ACCESS_TOKEN": "a-new-token"}
        assert drain().delivered == 5
        assert PixelState.objects.get().circuit_opened_at is None
    finally:
        signals.token_invalid.receivers.clear()


def test_the_circuit_probes_again_after_the_interval_without_a_second_alert(capi_graph, settings):
    settings.DJANGO_CAPI = {**settings.DJANGO_CAPI, "TOKEN_PROBE_SECONDS": 1}
    OutboxEventFactory.create_batch(2)
    capi_graph.fail_always(GraphError(code=190, subcode=463))
    drain()
    PixelState.objects.update(next_probe_at=timezone.now() - timedelta(seconds=1))
    make_due()
    drain()
    assert len(capi_graph.requests) == 2  # one probe
    assert len(mail.outbox) == 1
    assert all(row.attempts == 0 for row in OutboxEvent.objects.all())
    capi_graph.fail_always(None)
    PixelState.objects.update(next_probe_at=timezone.now() - timedelta(seconds=1))
    make_due()
    assert drain().delivered == 2


def test_the_token_appears_in_no_log_row_or_request_record(capi_graph, caplog):
    OutboxEventFactory.create_batch(2)
    capi_graph.script(GraphError(code=190, subcode=467), HttpStatus(500))
    with caplog.at_level(logging.DEBUG):
        drain()
        PixelState.objects.all().delete()
        make_due()
        drain()
    token = "test-token-not-real"
    assert token not in caplog.text
    for model in (OutboxEvent, DeliveryAttempt, AttemptEvent, PixelState):
        assert token not in str(list(model.objects.values()))


def test_a_broken_signal_receiver_does_not_change_the_outcome(capi_graph):
    def broken(**kwargs):
        raise RuntimeError("receiver bug")

    signals.event_delivered.connect(broken)
    try:
        OutboxEventFactory.create_batch(2)
        assert drain().delivered == 2
    finally:
        signals.event_delivered.disconnect(broken)
    assert statuses() == {"delivered": 2}


def test_failures_are_announced_with_their_reason(capi_graph):
    seen = []
    signals.event_failed.connect(lambda **kwargs: seen.append(kwargs), weak=False)
    try:
        old = OutboxEventFactory.create(age=timedelta(days=8))
        drain()
    finally:
        signals.event_failed.receivers.clear()
    assert seen[0]["reason"] == Reason.EXPIRED
    assert [row.event_id for row in seen[0]["events"]] == [old.event_id]


def test_rows_taken_over_while_another_pixel_was_sent_are_not_sent_again(capi_graph):
    from itertools import groupby

    from django_capi import outbox
    from django_capi.client import GraphClient
    from django_capi.delivery import _PixelDelivery

    sent = OutboxEventFactory.create_batch(2, pixel_id="111")
    OutboxEventFactory.create_batch(2, pixel_id="222")
    slow = outbox.claim(limit=10, lease_seconds=60, using="default")
    # While pixel 111 is being sent, the lease of 222's rows lapses and a second worker takes
    # them over.
    OutboxEvent.objects.filter(pixel_id="222").update(
        leased_until=timezone.now() - timedelta(seconds=1)
    )
    other = outbox.claim(limit=10, lease_seconds=60, using="default")
    assert {row.pixel_id for row in other.rows} == {"222"}
    client = GraphClient()
    for pixel_id, rows in groupby(slow.rows, key=lambda row: row.pixel_id):
        _PixelDelivery(slow, pixel_id, list(rows), client, []).run(probe=False)
    client.close()
    # 222's rows are the other worker's now.
    assert capi_graph.event_ids() == [row.event_id for row in sent]


def test_a_request_level_error_stops_the_pixel_without_failing_events(capi_graph):
    OutboxEventFactory.create_batch(16)
    capi_graph.fail_always(GraphError(code=12, message="(#12) API version is deprecated"))
    report = drain()
    assert (report.requests, report.failed, report.postponed) == (1, 0, 16)  # no bisecting
    assert all(row.attempts == 0 for row in OutboxEvent.objects.all())
    assert PixelState.objects.get().circuit_opened_at is not None
    assert len(mail.outbox) == 1


def test_a_2xx_page_that_is_not_the_graph_api_is_retried_not_delivered(capi_graph):
    OutboxEventFactory.create_batch(2)
    capi_graph.script(HttpStatus(200, "<html>Welcome to the hotel wifi</html>"))
    report = drain()
    assert (report.delivered, report.retrying) == (0, 2)
    assert OutboxEvent.objects.first().last_error == (
        "HTTP 200 without events_received: not the Graph API"
    )


def test_an_open_circuit_is_probed_with_one_event(capi_graph):
    OutboxEventFactory.create_batch(5)
    capi_graph.script(GraphError(code=190, subcode=463))
    drain()
    PixelState.objects.update(next_probe_at=timezone.now() - timedelta(seconds=1))
    make_due()
    assert drain().delivered == 5
    assert [len(request.events) for request in capi_graph.requests] == [5, 1, 4]


def test_rate_limits_without_a_wait_double_the_pause_and_are_capped(capi_graph):
    OutboxEventFactory.create()
    capi_graph.fail_always(GraphError(code=4))
    pauses = []
    for _ in range(2):
        drain()
        state = PixelState.objects.get()
        pauses.append((state.paused_until - timezone.now()).total_seconds())
        PixelState.objects.update(paused_until=timezone.now())
        make_due()
    assert 55 < pauses[0] <= 60
    assert 115 < pauses[1] <= 120
    headers = business_use_case_usage(PIXEL, estimated_time_to_regain_access=600)
    capi_graph.fail_always(GraphError(code=17, headers=headers))
    drain()
    cap = (PixelState.objects.get().paused_until - timezone.now()).total_seconds()
    assert 3590 < cap <= 3600  # ten hours asked, one hour taken


def test_a_deprecated_api_version_opens_the_circuit_saying_to_upgrade(capi_graph, settings):
    OutboxEventFactory.create_batch(3)
    capi_graph.fail_always(
        GraphError(
            code=2635,
            message="(#2635) You are calling a deprecated "
            "version of the Ads API. Please update to the latest version.",
        )
    )
    drain()
    drain()
    assert len(capi_graph.requests) == 1  # no bisect, no second request: the circuit is open
    state = PixelState.objects.get()
    assert state.circuit_opened_at is not None
    assert "upgrade DJANGO_CAPI['API_VERSION']" in state.last_error
    assert all(row.attempts == 0 for row in OutboxEvent.objects.all())


# --- hardening (issue 8) and signal fidelity (issue 9) ------------------------------------


class FlakyClient(GraphClient):
    """Answers a seeded share of requests with a 503 itself; the rest reach the emulator."""

    def __init__(self, share: float, seed: int) -> None:
        super().__init__()
        self.share, self.chance = share, random.Random(seed)

    def post_events(self, pixel_id, events):
        if self.chance.random() < self.share:
            failure = GraphFailure(ErrorKind.TRANSIENT, "Service Unavailable")
            return GraphResult(http_status=503, duration_ms=1, error=failure)
        return super().post_events(pixel_id, events)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_one_bad_event_never_sinks_a_batch_under_transient_faults(capi_graph, seed):
    rows = OutboxEventFactory.bulk_create(1000)
    bad = {rows[n].pk for n in random.Random(seed).sample(range(1000), 5)}
    for row in OutboxEvent.objects.filter(pk__in=bad):
        row.payload["user_data"] = {"em": "not-hashed@example.com"}
        row.save()
    client = FlakyClient(0.35, seed)
    for _ in range(200):
        drain(client=client)
        if not OutboxEvent.objects.filter(status=Status.PENDING).exists():
            break
        make_due()
    client.close()
    failed = OutboxEvent.objects.filter(status=Status.FAILED)
    assert set(failed.values_list("pk", flat=True)) == bad
    assert {row.failure_reason for row in failed} == {Reason.REJECTED}
    assert statuses() == {"delivered": 995, "failed": 5}
    # The innocent events paid for the network's failures, not for their bad neighbours.
    delivered = OutboxEvent.objects.filter(status=Status.DELIVERED)
    assert max(delivered.values_list("attempts", flat=True)) < 15


def test_a_retry_past_metas_age_window_is_moved_inside_it(capi_graph, monkeypatch):
    monkeypatch.setattr(delivery, "backoff_delay", lambda *args, **kwargs: timedelta(hours=6))
    row = OutboxEventFactory.create(age=timedelta(days=7) - timedelta(hours=2))
    capi_graph.script(HttpStatus(503))
    drain()
    row.refresh_from_db()
    assert (row.status, row.failure_reason) == ("pending", "")
    limit = row.event_time + timedelta(days=7) - delivery.SEND_MARGIN
    assert timezone.now() + timedelta(minutes=50) < row.next_attempt_at < limit
    row.next_attempt_at = timezone.now()
    row.save()
    assert drain().delivered == 1


def test_metas_messages_are_kept_on_the_attempt(capi_graph):
    OutboxEventFactory.create_batch(2)
    messages = ["The parameter <fbc> was modified", "Event 'ev-1' has a low match quality"]
    answer = {"events_received": 2, "messages": messages, "fbtrace_id": "trace"}
    capi_graph.script(HttpStatus(200, answer))
    assert drain().delivered == 2
    for row in OutboxEvent.objects.all():
        attempts = DeliveryAttempt.objects.for_event(row)
        assert [attempt.messages for attempt in attempts] == [messages]


HOSTILE_ANSWERS = {
    "retry-after-superscript": HttpStatus(
        429, {"error": {"code": 4, "message": "slow down"}}, {"Retry-After": "²"}
    ),
    "retry-after-huge": HttpStatus(429, b"", {"Retry-After": "9" * 400}),
    "received-negative": HttpStatus(200, {"events_received": -1, "fbtrace_id": "t"}),
    "received-huge": HttpStatus(200, {"events_received": 2**40, "fbtrace_id": "t"}),
    "nul-and-surrogate": HttpStatus(
        400,
        {
            "error": {
                "code": 100,
                "message": "bad\x00value \ud800",
                "type": "OAuth\x00Exception",
                "error_user_title": "t\udfff",
                "fbtrace_id": "A\x00B",
            }
        },
    ),
    "odd-types": HttpStatus(
        400,
        {
            "error": {
                "code": "100",
                "error_subcode": 2**40,
                "message": ["a", {"b": 1}],
                "type": {"x": 1},
                "is_transient": "yes",
                "fbtrace_id": 12,
            },
            "fbtrace_id": {"nested": True},
        },
    ),
    "non-dict-json": HttpStatus(200, b"[1, 2, 3]"),
    "json-null-error": HttpStatus(500, {"error": None, "events_received": "2"}),
    "deeply-nested": HttpStatus(200, b"[" * 100_000 + b"]" * 100_000),
    "huge-body": HttpStatus(200, b'{"events_received": 2, "x": "' + b"x" * 3_000_000 + b'"}'),
    "not-utf8": HttpStatus(400, b"\xff\xfe{\x00"),
    "redirect": HttpStatus(307, b"", {"Location": "http://127.0.0.1:9/?access_token=leak"}),
}


@pytest.mark.parametrize("answer", HOSTILE_ANSWERS.values(), ids=HOSTILE_ANSWERS.keys())
def test_a_worker_survives_any_answer_and_leaves_no_row_leased(capi_graph, answer):
    OutboxEventFactory.create_batch(2)
    capi_graph.script(answer)
    drain()
    for row in OutboxEvent.objects.all():
        assert row.leased_until is None
        assert row.attempts <= 1
        assert row.status in ("pending", "delivered", "failed")
    assert DeliveryAttempt.objects.count() >= 1  # the answer was recorded, cleaned
    PixelState.objects.all().delete()
    make_due()
    drain()
    assert OutboxEvent.objects.filter(status=Status.PENDING).count() == 0


def test_a_failing_write_back_gives_the_rows_back_at_once(capi_graph, monkeypatch):
    OutboxEventFactory.create_batch(3)

    def broken(*args, **kwargs):
        raise DatabaseError("the database went away")

    monkeypatch.setattr(outbox, "mark_delivered", broken)
    with pytest.raises(DatabaseError):
        drain()
    for row in OutboxEvent.objects.all():
        assert (row.status, row.leased_until, row.attempts) == ("pending", None, 1)
    monkeypatch.undo()
    make_due()
    assert drain().delivered == 3


def test_rows_claimed_past_max_attempts_are_failed_not_sent_again(capi_graph, settings):
    settings.DJANGO_CAPI = {**settings.DJANGO_CAPI, "MAX_ATTEMPTS": 3}
    OutboxEventFactory.create_batch(2)
    OutboxEvent.objects.update(attempts=3)  # three drains died before writing an answer
    drain()
    assert capi_graph.requests == []
    for row in OutboxEvent.objects.all():
        assert (row.status, row.failure_reason, row.attempts) == ("failed", "exhausted", 4)


@pytest.mark.parametrize("broken", ["release", "postpone_pixel", "record_attempt"])
def test_the_setup_alert_goes_out_once_whatever_fails_while_the_circuit_opens(
    capi_graph, monkeypatch, broken
):
    alerts = []
    signals.token_invalid.connect(lambda **kwargs: alerts.append(kwargs), weak=False)

    def fails(*args, **kwargs):
        raise DatabaseError("deadlock detected")

    try:
        OutboxEventFactory.create_batch(3)
        capi_graph.fail_always(GraphError(code=190, subcode=463))
        monkeypatch.setattr(outbox, broken, fails)
        with contextlib.suppress(DatabaseError):  # a write-back failed: the drain says so
            drain()
        assert len(alerts) == 1
        assert len(mail.outbox) == 1
        monkeypatch.undo()
        make_due()
        drain()
        assert len(alerts) == 1
        assert len(mail.outbox) == 1
        assert PixelState.objects.get().circuit_opened_at is not None
        assert OutboxEvent.objects.filter(leased_until__isnull=False).count() == 0
    finally:
        signals.token_invalid.receivers.clear()


def test_a_worker_stalled_past_its_lease_before_posting_does_not_send_again(
    capi_graph, settings, monkeypatch
):
    settings.DJANGO_CAPI = {
        **settings.DJANGO_CAPI,
        "LEASE_SECONDS": 1,
        "CONNECT_TIMEOUT": 0.1,
        "READ_TIMEOUT": 0.3,
    }
    OutboxEventFactory.create_batch(20)
    claim = outbox.claim
    stalled = []

    def claim_then_stall(**kwargs):
        lease = claim(**kwargs)
        if not stalled:
            stalled.append(lease)
            # The process stops right after claiming (a pause, swapped out) until the lease
            # has lapsed; meanwhile another worker takes the rows over and sends them.
            while OutboxEvent.objects.filter(leased_until__gt=Now()).exists():
                time.sleep(0.05)
            assert drain().delivered == 20
        return lease

    monkeypatch.setattr(outbox, "claim", claim_then_stall)
    drain()
    assert len(capi_graph.event_ids()) == 20
    assert capi_graph.duplicates == []
    assert statuses() == {"delivered": 20}


def test_each_request_is_one_record_and_each_event_keeps_its_history(capi_graph):
    rows = OutboxEventFactory.create_batch(8)
    bad = rows[5]
    OutboxEvent.objects.filter(pk=bad.pk).update(
        payload={**bad.payload, "user_data": {"em": "not-hashed@example.com"}}
    )
    report = drain()
    assert DeliveryAttempt.objects.count() == report.requests
    assert sum(DeliveryAttempt.objects.values_list("batch_size", flat=True)) == sum(
        len(request.events) for request in capi_graph.requests
    )
    bad.refresh_from_db()
    history = [a.outcome for a in DeliveryAttempt.objects.for_event(bad).order_by("pk")]
    assert history == ["bisected", "bisected", "bisected", "rejected"]
    assert bad.last_attempt_id == DeliveryAttempt.objects.get(outcome="rejected").pk
    first = OutboxEvent.objects.get(pk=rows[0].pk)
    history = [a.outcome for a in DeliveryAttempt.objects.for_event(first).order_by("pk")]
    assert history == ["bisected", "delivered"]  # its half went through at once
    # Only what a request did not deliver is linked row by row.
    assert set(AttemptEvent.objects.values_list("outcome", flat=True)) == {"bisected", "rejected"}
