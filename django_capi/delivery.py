"""One drain of the outbox: claim → batch per pixel → send → bisect → write back → signals.

Every way of running delivery (the Celery task, ``capi_drain``, the admin's "send now") calls
``drain``; this is the only place that decides what Meta's answer means for a row.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import timedelta
from itertools import groupby
from typing import Self

from django.core.mail import mail_admins
from django.db import router

from . import outbox, pixels, signals
from .client import ErrorKind, GraphClient, GraphResult
from .models import DeliveryAttempt, OutboxEvent
from .validation import max_event_age

logger = logging.getLogger(__name__)

Outcome = DeliveryAttempt.Outcome
Reason = OutboxEvent.FailureReason

#: Events this close to Meta's age limit are not sent: one stale event makes Meta reject the
#: whole request, and the request itself takes time.
SEND_MARGIN = timedelta(minutes=1)
#: Pause for a rate limit that does not say how long it lasts.
DEFAULT_RATE_LIMIT_PAUSE = 60.0


@dataclass
class DrainReport:
    """What one drain did, for logs, the admin's "send now" and the commands' output."""

    claimed: int = 0
    delivered: int = 0
    failed: int = 0
    retrying: int = 0
    postponed: int = 0
    requests: int = 0

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
) -> DrainReport:
    """Deliver due events until none are left (or a limit is reached). Safe to run in many
    processes at once: each batch is leased to one of them."""
    using = using or router.db_for_write(OutboxEvent)
    own_client = client is None
    client = client or GraphClient()
    deadline = None if time_limit is None else time.monotonic() + time_limit
    report = DrainReport()
    batches = 0
    try:
        while True:
            batch = drain_batch(using, client)
            report += batch
            batches += 1
            if batch.claimed == 0 or batches == max_batches:
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
    finally:
        if own_client:
            client.close()
    if report.claimed:
        logger.info("django-capi drain: %s", report)
    return report


def drain_batch(using: str, client: GraphClient) -> DrainReport:
    conf = client.conf
    blocked = pixels.blocked_pixels(using, conf.access_token)
    lease = outbox.claim(
        limit=conf.batch_size,
        lease_seconds=conf.lease_seconds,
        using=using,
        exclude_pixels=blocked,
    )
    report = DrainReport(claimed=len(lease.rows))
    for pixel_id, rows in groupby(lease.rows, key=lambda row: row.pixel_id):
        report += _PixelDelivery(lease, pixel_id, list(rows), client).run()
    return report


class _PixelDelivery:
    """Sends one pixel's share of a lease and writes back what became of each row."""

    def __init__(
        self, lease: outbox.Lease, pixel_id: str, rows: list[OutboxEvent], client: GraphClient
    ) -> None:
        self.lease, self.pixel_id, self.rows, self.client = lease, pixel_id, rows, client
        self.conf = client.conf
        self.report = DrainReport()

    def run(self) -> DrainReport:
        # Earlier pixels of the same lease may have taken a while.
        outbox.renew(self.lease, _ids(self.rows), self.conf.lease_seconds)
        fresh = [row for row in self.rows if not self._too_old(row)]
        stale = [row for row in self.rows if self._too_old(row)]
        if stale:
            # Never sent: one stale event would make Meta reject every event beside it.
            self._fail(stale, Reason.EXPIRED, "event_time is too old for Meta by now; not sent")
        pending: list[list[OutboxEvent]] = [fresh] if fresh else []
        while pending:
            group = pending.pop()
            result = self.client.post_events(self.pixel_id, [row.payload for row in group])
            self.report.requests += 1
            error = result.error
            if error is None:
                self._delivered(group, result)
                continue
            if error.kind is ErrorKind.INVALID and len(group) > 1:
                # Meta refuses a whole batch for one bad event: halve until it stands alone.
                # k bad events among n cost O(k log n) extra requests.
                self._log(group, result, Outcome.BISECTED)
                half = len(group) // 2
                pending += [group[half:], group[:half]]
                outbox.renew(self.lease, _ids(_flatten(pending)), self.conf.lease_seconds)
            elif error.kind is ErrorKind.INVALID:
                self._log(group, result, Outcome.REJECTED)
                self._fail(group, Reason.REJECTED, error.describe(result.http_status), result)
            elif error.kind is ErrorKind.TRANSIENT:
                self._retry_or_give_up(group, result)
            else:
                # Rate limits and broken tokens stop this pixel, for every group still here.
                waiting = group + _flatten(pending)
                pending = []
                if error.kind is ErrorKind.RATE_LIMIT:
                    self._pause(waiting, result)
                else:
                    self._open_circuit(waiting, result)
        return self.report

    def _too_old(self, row: OutboxEvent) -> bool:
        limit = max_event_age(row.action_source) - SEND_MARGIN
        return row.event_time < self.lease.db_now - limit

    def _delivered(self, group: list[OutboxEvent], result: GraphResult) -> None:
        self._log(group, result, Outcome.DELIVERED)
        count = outbox.mark_delivered(self.lease, _ids(group), result)
        self.report.delivered += count
        if pixels.close_circuit(self.lease.using, self.pixel_id):
            logger.warning("django-capi: pixel %s accepts events again", self.pixel_id)
        self._lost_lease(group, count)
        signals.send_safely(signals.event_delivered, events=group)

    def _fail(
        self,
        group: list[OutboxEvent],
        reason: OutboxEvent.FailureReason,
        error: str,
        result: GraphResult | None = None,
    ) -> None:
        count = outbox.mark_failed(
            self.lease, _ids(group), reason=reason, error=error, result=result
        )
        self.report.failed += count
        self._lost_lease(group, count)
        logger.warning(
            "django-capi: %d event(s) for pixel %s failed (%s): %s",
            count,
            self.pixel_id,
            reason,
            error,
        )
        signals.send_safely(signals.event_failed, events=group, reason=reason)

    def _retry_or_give_up(self, group: list[OutboxEvent], result: GraphResult) -> None:
        assert result.error is not None  # noqa: S101 - only called for failed requests
        error = result.error.describe(result.http_status)
        delay = backoff_delay(
            max(row.attempts for row in group),
            base=self.conf.retry_base_seconds,
            cap=self.conf.retry_max_seconds,
        )
        next_try = self.lease.db_now + delay
        exhausted, expiring, retry = [], [], []
        for row in group:
            if row.attempts >= self.conf.max_attempts:
                exhausted.append(row)
            elif row.event_time + max_event_age(row.action_source) - SEND_MARGIN <= next_try:
                expiring.append(row)
            else:
                retry.append(row)
        self._log(group, result, Outcome.RETRY if retry else Outcome.FAILED)
        if exhausted:
            self._fail(exhausted, Reason.EXHAUSTED, error, result)
        if expiring:
            self._fail(expiring, Reason.EXPIRED, f"{error} (too old to retry)", result)
        if retry:
            count = outbox.retry_later(
                self.lease, _ids(retry), delay=delay, error=error, result=result
            )
            self.report.retrying += count
            self._lost_lease(retry, count)

    def _pause(self, group: list[OutboxEvent], result: GraphResult) -> None:
        assert result.error is not None  # noqa: S101
        error = result.error.describe(result.http_status)
        seconds = result.error.retry_after or DEFAULT_RATE_LIMIT_PAUSE
        self._log(group, result, Outcome.RATE_LIMITED)
        self.report.postponed += outbox.release(
            self.lease, _ids(group), delay=timedelta(seconds=seconds), error=error, result=result
        )
        pixels.pause(self.lease.using, self.pixel_id, seconds, error)
        logger.warning(
            "django-capi: pixel %s is rate limited; pausing %.0f s: %s",
            self.pixel_id,
            seconds,
            error,
        )

    def _open_circuit(self, group: list[OutboxEvent], result: GraphResult) -> None:
        assert result.error is not None  # noqa: S101
        error = result.error.describe(result.http_status)
        probe = self.conf.token_probe_seconds
        self._log(group, result, Outcome.TOKEN_INVALID)
        self.report.postponed += outbox.release(
            self.lease, _ids(group), delay=timedelta(seconds=probe), error=error, result=result
        )
        opened = pixels.open_circuit(
            self.lease.using,
            self.pixel_id,
            token=self.conf.access_token,
            probe_seconds=probe,
            error=error,
        )
        if opened:
            self._alert_token_invalid(error)

    def _alert_token_invalid(self, error: str) -> None:
        message = (
            f"Meta refuses the Conversions API token or its permissions for pixel "
            f"{self.pixel_id}: {error.rstrip('.')}. Sending has stopped and no events are "
            f"lost; they are sent once DJANGO_CAPI['ACCESS_TOKEN'] is fixed."
        )
        logger.error("django-capi: %s", message)
        signals.send_safely(signals.token_invalid, pixel_id=self.pixel_id, error=error)
        try:
            mail_admins("Meta Conversions API: sending stopped", message, fail_silently=True)
        except Exception:
            logger.exception("django-capi could not mail the admins")

    def _log(self, group: list[OutboxEvent], result: GraphResult, outcome: Outcome) -> None:
        outbox.record_attempts(
            self.lease, group, result=result, outcome=outcome, batch_size=len(group)
        )

    def _lost_lease(self, group: list[OutboxEvent], written: int) -> None:
        if written < len(group):
            logger.warning(
                "django-capi: %d row(s) were taken over by another worker after this lease "
                "expired; their new owner's outcome stands",
                len(group) - written,
            )


def backoff_delay(attempts: int, *, base: float, cap: float) -> timedelta:
    """Exponential backoff with full jitter, so workers retrying together spread out. A
    floor of one second keeps a retry from coming back within the same drain at once."""
    ceiling = min(cap, base * 2 ** max(0, attempts - 1))
    return timedelta(seconds=max(1.0, random.uniform(0, ceiling)))  # noqa: S311


def _ids(rows: Sequence[OutboxEvent]) -> list[int]:
    return [row.pk for row in rows]


def _flatten(groups: list[list[OutboxEvent]]) -> list[OutboxEvent]:
    return [row for group in groups for row in group]
