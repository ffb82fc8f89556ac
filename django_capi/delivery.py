"""One drain of the outbox: claim → batch per pixel → send → bisect → write back → signals.

Every way of running delivery (the Celery task, ``capi_drain``) calls ``drain``; this is the
only place that decides what Meta's answer means for a row.
"""

from __future__ import annotations

import contextvars
import logging
import random
import time
import uuid
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, fields
from datetime import timedelta
from functools import partial
from itertools import groupby
from operator import attrgetter
from typing import Self

from django.db import DatabaseError, connections, router
from django.dispatch import Signal

from . import outbox, pixels, signals
from .client import ErrorKind, GraphClient, GraphFailure, GraphResult
from .conf import CapiSettings
from .models import DeliveryAttempt, OutboxEvent
from .validation import max_event_age

logger = logging.getLogger(__name__)

Outcome = DeliveryAttempt.Outcome
Reason = OutboxEvent.FailureReason
Row = outbox.LeasedRow

#: Events this close to Meta's age limit are not sent: one stale event makes Meta reject the
#: whole request, and the request itself takes time.
SEND_MARGIN = timedelta(minutes=1)
#: A retry that would land past an event's age limit is moved forward to this long before it.
LAST_RETRY_LEAD = timedelta(minutes=1)
#: The shortest wait before a retry, so it never comes back within the same drain.
MIN_RETRY_DELAY = timedelta(seconds=1)


@dataclass
class DrainReport:
    """What one drain did, for logs and the commands' output."""

    claimed: int = 0
    delivered: int = 0
    failed: int = 0
    retrying: int = 0
    postponed: int = 0
    requests: int = 0
    #: Drains that stopped at a time or batch limit while rows were still coming.
    unfinished: int = 0

    def __iadd__(self, other: DrainReport) -> Self:
        for field in fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))
        return self

    def __str__(self) -> str:
        return ", ".join(f"{field.name} {getattr(self, field.name)}" for field in fields(self))


def drain(
    *,
    using: str | None = None,
    client: GraphClient | None = None,
    time_limit: float | None = None,
    max_batches: int | None = None,
    only: Collection[int] | None = None,
    on_batch: Callable[[DrainReport], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    quiet: bool = False,
) -> DrainReport:
    """Deliver due events of one database until none are left (or a limit is reached). Safe
    to run in many processes at once: each batch is leased to one of them. Must not run
    inside a transaction. ``only`` restricts it to those row ids (the admin's "send now").
    ``on_batch`` sees the running total after each batch (``capi_drain``'s progress);
    once ``should_stop()`` is true the drain ends with the batch in hand, as at a limit (a
    service's stop signal); ``quiet`` leaves the summary unlogged, for a caller that prints
    it itself.

    While a batch's last request is in flight, the next batch is claimed (``_ClaimAhead``):
    the database's work and Meta's overlap, one request in flight at a time as before."""
    using = using or router.db_for_write(OutboxEvent)
    own_client = client is None
    client = client or GraphClient()
    deadline = None if time_limit is None else time.monotonic() + time_limit
    report = DrainReport()
    batches = 0
    ahead: _Claimed | None = None
    try:
        with (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="django-capi-send") as sender,
            _Claimer(using) as claimer,
        ):
            while True:
                claimed, ahead = ahead or _claim(using, client.conf, only), None
                # No batch is claimed ahead of the last one a limit allows, nor of a batch
                # that found fewer rows due than it could take (the next claim most likely
                # finds none: a small drain opens no second connection for it).
                last = batches + 1 == max_batches or (should_stop is not None and should_stop())
                short = len(claimed.lease.rows) < client.conf.batch_size
                claim_next = partial(_claim, using, client.conf, only)
                claim_ahead = _ClaimAhead(None if last or short else claim_next, claimer)
                try:
                    batch = _deliver(claimed, client, sender, claim_ahead)
                except BaseException:  # even a notice's KeyboardInterrupt
                    claim_ahead.give_back()
                    raise
                ahead = claim_ahead.taken()
                report += batch
                batches += 1
                if batch.claimed == 0:
                    break
                if on_batch is not None:
                    on_batch(report)
                if (
                    batches == max_batches
                    or (deadline is not None and time.monotonic() >= deadline)
                    or (should_stop is not None and should_stop())
                ):
                    # A batch short of the limit took every row that was due: nothing is left.
                    if batch.claimed >= client.conf.batch_size:
                        report.unfinished += 1
                    break
    finally:
        if ahead is not None:
            _unclaim(ahead.lease)
        if own_client:
            client.close()
    if report.claimed and not quiet:
        logger.info("django-capi drain of %r: %s", using, report)
    return report


@dataclass(frozen=True)
class _Claimed:
    """A lease, and the pixels it may only probe (read with it, before the claim)."""

    lease: outbox.Lease
    probing: frozenset[str]


def _claim(using: str, conf: CapiSettings, only: Collection[int] | None) -> _Claimed:
    """Claim one lease's worth of rows of the pixels not blocked."""
    gate = pixels.gate(using, conf)
    lease = outbox.claim(
        limit=conf.batch_size,
        lease_seconds=conf.lease_seconds,
        using=using,
        exclude_pixels=gate.blocked,
        only=only,
    )
    return _Claimed(lease, gate.probing)


class _Claimer:
    """Where the claims made ahead run. Where they may run beside a write-back
    (``outbox.claims_beside_writes``): on a thread with a connection of its own, both opened
    at the first claim, so that a claim overlaps the current batch's write-back as well as
    its request. Elsewhere: on the drain's own thread, at once, while the request is in
    flight."""

    def __init__(self, using: str) -> None:
        self.using = using
        self.beside_writes = outbox.claims_beside_writes(using)
        self.thread: ThreadPoolExecutor | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.thread is not None:
            # The thread's connection, closed on the thread that opened it.
            self.thread.submit(self._close).result()
            self.thread.shutdown()

    def submit(self, claim: Callable[[], _Claimed]) -> Future[_Claimed]:
        if not self.beside_writes:
            claimed: Future[_Claimed] = Future()
            try:
                claimed.set_result(claim())
            except Exception as error:  # noqa: BLE001 -- raised where it is taken
                claimed.set_exception(error)
            return claimed
        if self.thread is None:
            self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="django-capi-claim")
        return self.thread.submit(contextvars.copy_context().run, self._claim, claim)

    def _claim(self, claim: Callable[[], _Claimed]) -> _Claimed:
        try:
            return claim()
        except DatabaseError:
            self._close()  # a broken connection is opened anew for the next claim
            raise

    def _close(self) -> None:
        connections[self.using].close()


class _ClaimAhead:
    """The next batch, claimed while the current batch's last request is in flight: the
    claim's round trips and the database's work on its rows overlap Meta's (the stand-in's
    in ``make bench``) and, on the claimer's thread, the write-back's too. The request runs
    on the drain's sender thread, one at a time as always. A claim ahead is given back unsent
    (``outbox.unclaim``) when that request fails, since its answer may pause the pixel, open
    its circuit or start a bisection, which the next claim must see."""

    def __init__(self, claim: Callable[[], _Claimed] | None, claimer: _Claimer) -> None:
        self.claim, self.claimer = claim, claimer
        self.claiming: Future[_Claimed] | None = None

    @property
    def wanted(self) -> bool:
        return self.claim is not None

    def start(self) -> None:
        if self.claim is not None:
            claim, self.claim = self.claim, None
            self.claiming = self.claimer.submit(claim)

    def taken(self) -> _Claimed | None:
        """The batch claimed ahead, once claimed; ``None`` if none was or the database
        refused it (the claim is then made again after this batch, where an error stops the
        drain). Raises whatever else stopped the claim (a bug)."""
        claiming, self.claiming = self.claiming, None
        if claiming is None:
            return None
        try:
            return claiming.result()
        except DatabaseError:
            logger.warning("django-capi: could not claim the next batch ahead", exc_info=True)
            return None

    def give_back(self) -> None:
        try:
            claimed = self.taken()
        except Exception:
            logger.exception("django-capi: could not claim the next batch ahead")
            return
        if claimed is not None:
            _unclaim(claimed.lease)


def _deliver(
    claimed: _Claimed, client: GraphClient, sender: Executor, claim_ahead: _ClaimAhead
) -> DrainReport:
    """Deliver one lease's rows, pixel by pixel; the next lease is claimed during its last
    request (``claim_ahead``)."""
    lease = claimed.lease
    report = DrainReport(claimed=len(lease.rows))
    notices: list[Callable[[], None]] = []
    try:
        shares = [(pixel_id, list(rows)) for pixel_id, rows in groupby(lease.rows, key=_pixel)]
        for index, (pixel_id, rows) in enumerate(shares):
            delivery = _PixelDelivery(
                lease,
                pixel_id,
                rows,
                client,
                notices,
                fresh=not index,
                sender=sender,
                claim_ahead=claim_ahead if index == len(shares) - 1 else None,
            )
            report += delivery.run(probe=pixel_id in claimed.probing)
    except BaseException:
        _give_back(lease, client.conf.retry_base_seconds)
        raise
    finally:
        # Receivers and mail servers are slow or broken at times; they run once every row
        # of the lease is written, so they can never make it lapse, and they run even when
        # a write-back failed, so an alert decided on is never lost. The lease claimed
        # ahead may lapse behind a slow one: its rows are renewed before they are sent,
        # and those another worker took meanwhile are left to it (``_sendable``).
        for notice in notices:
            try:
                notice()
            except Exception:
                logger.exception("django-capi: a delivery notice failed")
    return report


_pixel = attrgetter("pixel_id")


def _give_back(lease: outbox.Lease, delay_seconds: float) -> None:
    """The drain of a lease stopped on an error: give back the rows it still holds now
    rather than when the lease lapses (where the database still answers)."""
    try:
        left = outbox.abandon(lease, delay=timedelta(seconds=delay_seconds))
    except Exception:
        logger.exception("django-capi: could not give back the rows of a failed drain")
        return
    if left:
        logger.error("django-capi: a drain stopped on an error; %d row(s) given back", left)


def _unclaim(lease: outbox.Lease) -> None:
    """Give back a lease claimed ahead and never sent (where the database still answers; its
    rows come back when the lease lapses otherwise)."""
    try:
        outbox.unclaim(lease)
    except DatabaseError:
        logger.exception("django-capi: could not give back a batch claimed ahead")


def _wait_out(request: Future[GraphResult]) -> None:
    """Wait for a request in flight to end, even when interrupted (a soft time limit, Ctrl-C),
    and raise the interruption then: nothing of its lease is written or given back while it
    may still reach Meta."""
    interrupted: BaseException | None = None
    while True:
        try:
            wait([request])
            break
        except BaseException as error:  # noqa: BLE001 -- raised below, once the request ended
            interrupted = interrupted or error
    if interrupted is not None:
        raise interrupted


class _PixelDelivery:
    """Sends one pixel's share of a lease and writes back what became of each row."""

    def __init__(
        self,
        lease: outbox.Lease,
        pixel_id: str,
        rows: list[Row],
        client: GraphClient,
        notices: list[Callable[[], None]],
        *,
        fresh: bool = False,
        sender: Executor | None = None,
        claim_ahead: _ClaimAhead | None = None,
    ) -> None:
        """``fresh``: nothing of the lease was sent yet, so the claim is the last renewal.
        ``claim_ahead`` runs during this pixel's last request, on ``sender``'s thread."""
        self.lease, self.pixel_id, self.rows, self.client = lease, pixel_id, rows, client
        self.conf = client.conf
        self.notices = notices
        self.report = DrainReport()
        self.fresh = fresh
        self.renewed_at = lease.claimed_at
        self.sender, self.claim_ahead = sender, claim_ahead

    def run(self, *, probe: bool) -> DrainReport:
        # Rows of an interrupted bisection go in their own groups, so it resumes where it was.
        fresh = [row for row in self.rows if row.bisect_group is None]
        keys = dict.fromkeys(row.bisect_group for row in self.rows if row.bisect_group)
        groups = [_Group(fresh)] + [
            _Group([row for row in self.rows if row.bisect_group == key], suspect=True)
            for key in keys
        ]
        groups = [group for group in groups if group.rows]
        if probe and groups:
            # A pixel whose setup was broken is probed with one event before the rest are
            # risked.
            head = groups[0]
            groups[:1] = [
                _Group(head.rows[:1], suspect=head.suspect),
                _Group(head.rows[1:], suspect=head.suspect),
            ]
        pending = groups[::-1]  # popped from the end: first group first
        while pending:
            current = pending.pop()
            group = self._sendable(current.rows)
            if not group:
                continue
            result = self._post(group, last=not pending)
            self.report.requests += 1
            failure = result.error
            if failure is None:
                self._delivered(group, result)
            elif failure.kind is ErrorKind.INVALID and len(group) > 1:
                # Meta refuses a whole batch for one bad event: halve until it stands alone.
                # k bad events among n cost O(k log n) extra requests.
                self._log(group, result, Outcome.BISECTED, [(group, Outcome.BISECTED)])
                half = len(group) // 2
                pending += [_Group(group[half:], suspect=True), _Group(group[:half], suspect=True)]
            elif failure.kind is ErrorKind.INVALID:
                attempt = self._log(group, result, Outcome.REJECTED, [(group, Outcome.REJECTED)])
                error = failure.describe(result.http_status)
                self._fail(group, Reason.REJECTED, error, result, attempt)
            elif failure.kind is ErrorKind.TRANSIENT:
                self._retry_or_give_up(group, result, failure, suspect=current.suspect)
            else:
                # Rate limits and a broken setup stop this pixel, for every group still here.
                waiting = group + [row for rest in pending for row in rest.rows]
                pending = []
                if failure.kind is ErrorKind.RATE_LIMIT:
                    self._pause(group, waiting, result, failure)
                else:
                    self._open_circuit(group, waiting, result, failure)
        return self.report

    def _post(self, group: list[Row], *, last: bool) -> GraphResult:
        """One request with ``group``; the lease's last one leaves the next claim to run
        while it is in flight."""
        payloads = [row.payload for row in group]
        ahead = self.claim_ahead
        if not (last and ahead is not None and ahead.wanted and self.sender is not None):
            return self.client.post_events(self.pixel_id, payloads)
        # In the caller's context: what it set (a trace, a log's request id) goes along.
        in_flight = self.sender.submit(
            contextvars.copy_context().run, self.client.post_events, self.pixel_id, payloads
        )
        try:
            ahead.start()
        finally:
            _wait_out(in_flight)
        result = in_flight.result()
        if result.error is not None:
            ahead.give_back()
        return result

    def _sendable(self, group: list[Row]) -> list[Row]:
        """The rows of ``group`` still ours, with a whole request's time left on their lease,
        and young enough for Meta."""
        if not group:
            return []
        exhausted = [row for row in group if row.attempts > self.conf.max_attempts]
        if exhausted:
            # Claimed past the limit: earlier drains of these rows never finished (a killed
            # worker, an error in a write-back). Stop before they break another one.
            self._fail(
                exhausted,
                Reason.EXHAUSTED,
                f"claimed {self.conf.max_attempts} times without an answer written back",
            )
            group = [row for row in group if row.attempts <= self.conf.max_attempts]
        if not (self.fresh and self._lease_holds()):
            group = self._renew(group)
        # Only the lease's first request goes on the claim alone: its rows were just leased,
        # with a whole request's time to spare, so renewing would rewrite each row for nothing.
        self.fresh = False
        now = self.lease.now()
        stale = [row for row in group if row.event_time < now - self._age_limit(row)]
        if stale:
            # Never sent: one stale event would make Meta reject every event beside it.
            self._fail(stale, Reason.EXPIRED, "event_time is too old for Meta by now; not sent")
        gone = {row.pk for row in stale}
        group = [row for row in group if row.pk not in gone]
        if group and not self._lease_holds():
            # Stalled since the renewal (a pause, a swapped-out process): the lease may have
            # lapsed and another worker taken the rows. Renew again rather than send twice.
            group = self._renew(group)
        return group

    def _renew(self, group: list[Row]) -> list[Row]:
        self.renewed_at = time.monotonic()
        return outbox.keep(self.lease, group, self.conf.lease_seconds)

    def _lease_holds(self) -> bool:
        """Whether the last renewal leaves time for a whole request. The renewal began at
        ``renewed_at``, so the lease runs at least ``lease_seconds`` from then."""
        request_time = self.conf.connect_timeout + self.conf.read_timeout
        left = self.conf.lease_seconds - (time.monotonic() - self.renewed_at)
        return left > request_time

    @staticmethod
    def _age_limit(row: Row) -> timedelta:
        return max_event_age(row.action_source) - SEND_MARGIN

    def _delivered(self, group: list[Row], result: GraphResult) -> None:
        # The request's record and the rows it delivered are written in one transaction.
        with outbox.writing(self.lease):
            attempt = self._log(group, result, Outcome.DELIVERED)
            written = outbox.mark_delivered(self.lease, group, result, attempt=attempt)
        self.report.delivered += len(written)
        if result.events_received != len(group):
            logger.warning(
                "django-capi: Meta received %s of %d events for pixel %s",
                result.events_received,
                len(group),
                self.pixel_id,
            )
        if pixels.record_success(self.lease.using, self.pixel_id):
            logger.warning("django-capi: pixel %s accepts events again", self.pixel_id)
        self._announce(signals.event_delivered, group, written)

    def _fail(
        self,
        group: list[Row],
        reason: OutboxEvent.FailureReason,
        error: str,
        result: GraphResult | None = None,
        attempt: int | None = None,
    ) -> None:
        written = outbox.mark_failed(
            self.lease, group, reason=reason, error=error, result=result, attempt=attempt
        )
        self.report.failed += len(written)
        logger.warning(
            "django-capi: %d event(s) for pixel %s failed (%s): %s",
            len(written),
            self.pixel_id,
            reason,
            error,
        )
        self._announce(signals.event_failed, group, written, reason=reason)

    def _retry_or_give_up(
        self,
        group: list[Row],
        result: GraphResult,
        failure: GraphFailure,
        *,
        suspect: bool,
    ) -> None:
        """A transient failure: the claim counted the attempt. A group cut from a refused
        batch keeps together (``bisect_group``) so the next drain resumes the bisection
        instead of sending its rows beside the bad event again."""
        error = failure.describe(result.http_status)
        delay = backoff_delay(
            max(row.attempts for row in group),
            base=self.conf.retry_base_seconds,
            cap=self.conf.retry_max_seconds,
        )
        now = self.lease.now()
        exhausted: list[Row] = []
        expiring: list[Row] = []
        last_chance: list[Row] = []
        retry: list[Row] = []
        for row in group:
            deadline = row.event_time + self._age_limit(row)
            if row.attempts >= self.conf.max_attempts:
                exhausted.append(row)
            elif deadline > now + delay:
                retry.append(row)
            elif deadline - now >= MIN_RETRY_DELAY:
                last_chance.append(row)
            else:
                expiring.append(row)
        attempt = self._log(
            group,
            result,
            Outcome.RETRY if retry or last_chance else Outcome.FAILED,
            [(exhausted + expiring, Outcome.FAILED), (last_chance + retry, Outcome.RETRY)],
        )
        if exhausted:
            self._fail(exhausted, Reason.EXHAUSTED, error, result, attempt)
        if expiring:
            self._fail(expiring, Reason.EXPIRED, f"{error} (too old to retry)", result, attempt)
        key = uuid.uuid4() if suspect else None
        if last_chance:
            # The backoff would land past Meta's age limit: one last try inside it.
            deadline = min(row.event_time + self._age_limit(row) for row in last_chance)
            delay_left = max(MIN_RETRY_DELAY, deadline - now - LAST_RETRY_LEAD)
            self._retry(last_chance, result, delay_left, error, key, attempt)
        if retry:
            self._retry(retry, result, delay, error, key, attempt)

    def _retry(
        self,
        group: list[Row],
        result: GraphResult,
        delay: timedelta,
        error: str,
        bisect_group: uuid.UUID | None,
        attempt: int,
    ) -> None:
        written = outbox.retry_later(
            self.lease,
            group,
            delay=delay,
            error=error,
            result=result,
            bisect_group=bisect_group,
            attempt=attempt,
        )
        self.report.retrying += len(written)

    def _pause(
        self, sent: list[Row], group: list[Row], result: GraphResult, failure: GraphFailure
    ) -> None:
        """``sent`` were refused for a rate limit; every row of ``group`` waits it out."""
        error = failure.describe(result.http_status)
        attempt = self._log(sent, result, Outcome.RATE_LIMITED, [(group, Outcome.RATE_LIMITED)])
        seconds = pixels.pause(self.lease.using, self.pixel_id, failure.retry_after, error)
        written = outbox.release(
            self.lease,
            group,
            delay=timedelta(seconds=seconds),
            error=error,
            result=result,
            attempt=attempt,
        )
        self.report.postponed += len(written)
        logger.warning(
            "django-capi: pixel %s is rate limited; pausing %.0f s: %s",
            self.pixel_id,
            seconds,
            error,
        )

    def _open_circuit(
        self, sent: list[Row], group: list[Row], result: GraphResult, failure: GraphFailure
    ) -> None:
        """``sent`` were refused for the setup; every row of ``group`` waits for the probe."""
        error = failure.describe(result.http_status)
        probe = self.conf.token_probe_seconds
        # The circuit first: the one worker that opens it owes the alert, whatever fails
        # after (the notice runs even when a write-back below raises).
        opened = pixels.open_circuit(
            self.lease.using,
            self.pixel_id,
            fingerprint=pixels.setup_fingerprint(self.conf.credentials(self.pixel_id)),
            probe_seconds=probe,
            error=error,
        )
        if opened:
            self.notices.append(lambda: _alert_setup_broken(self.pixel_id, error))
        attempt = self._log(sent, result, Outcome.TOKEN_INVALID, [(group, Outcome.TOKEN_INVALID)])
        written = outbox.release(
            self.lease,
            group,
            delay=timedelta(seconds=probe),
            error=error,
            result=result,
            attempt=attempt,
        )
        self.report.postponed += len(written)

    def _log(
        self,
        sent: list[Row],
        result: GraphResult,
        outcome: Outcome,
        undelivered: Sequence[tuple[Sequence[Row], Outcome]] = (),
    ) -> int:
        """One record of the request that carried ``sent``; rows it did not deliver are
        linked to it with what became of them."""
        return outbox.record_attempt(
            self.lease,
            self.pixel_id,
            result=result,
            outcome=outcome,
            batch_size=len(sent),
            undelivered=undelivered,
        )

    def _announce(
        self, signal: Signal, group: Sequence[Row], written: list[int], **kwargs: object
    ) -> None:
        if len(written) < len(group):
            logger.warning(
                "django-capi: %d row(s) were taken over by another worker after this lease "
                "lapsed; their new owner's outcome stands",
                len(group) - len(written),
            )
        if written:
            using = self.lease.using
            self.notices.append(lambda: _send_events(signal, using, written, **kwargs))


def _send_events(signal: Signal, using: str, ids: list[int], **kwargs: object) -> None:
    """Send ``signal`` with the rows ``ids`` as written; read only if someone listens."""
    if not signal.has_listeners():
        return
    events = list(OutboxEvent.objects.using(using).filter(pk__in=ids).order_by("pk"))
    signals.send_safely(signal, events=events, **kwargs)


@dataclass
class _Group:
    """Rows to send in one request; ``suspect`` when cut from a batch Meta refused."""

    rows: list[Row]
    suspect: bool = False


def _alert_setup_broken(pixel_id: str, error: str) -> None:
    message = (
        f"Meta refuses the Conversions API setup for pixel {pixel_id} (token, permissions, "
        f"pixel id or API version): {error.rstrip('.')}. Sending has stopped and no events "
        f"are lost; they are sent once DJANGO_CAPI is fixed."
    )
    logger.error("django-capi: %s", message)
    signals.send_safely(signals.token_invalid, pixel_id=pixel_id, error=error)
    from .alerts import mail_admins_once

    mail_admins_once(f"Meta Conversions API: sending stopped for pixel {pixel_id}", message)


def backoff_delay(attempts: int, *, base: float, cap: float) -> timedelta:
    """Exponential backoff with full jitter, so workers retrying together spread out. A
    floor of one second keeps a retry from coming back within the same drain at once."""
    ceiling = min(cap, base * 2 ** max(0, attempts - 1))
    return timedelta(seconds=max(1.0, random.uniform(0, ceiling)))  # noqa: S311
