"""Telling people before they have to look: a due backlog that nobody drains, or Meta
refusing a large share of events. Per pixel and once per incident: an alert when it starts,
a note when it ends, each naming its pixel, so a pixel in trouble is never hidden by a
healthy one's volume. (A broken token has its own once-per-incident alert: the pixel's
circuit.)

``evaluate`` runs at the end of every drain task and ``capi_drain`` run, and from the web
process when it commits events (``dispatch``, at most once a minute there): a backlog with no
worker running at all is exactly when nobody else would notice.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import timedelta

from django.core.cache import cache
from django.core.mail import mail_admins
from django.db import router
from django.db.models import Sum
from django.db.models.functions import Now
from django.dispatch import Signal

from . import signals
from .conf import capi_settings
from .models import AlertState, DeliveryAttempt, OutboxEvent
from .queries import due_ages_by_pixel

logger = logging.getLogger(__name__)

BACKLOG = "backlog"
FAILURE_RATE = "failure_rate"
#: A failure rate over fewer events than this is noise, not an incident.
MIN_EVENTS_FOR_RATE = 20
#: How often the web process may look (the drainers look after every drain).
WEB_CHECK_SECONDS = 60


@dataclass(frozen=True)
class AlertChange:
    kind: str
    pixel_id: str
    started: bool  # True: an incident began; False: it ended
    message: str


def evaluate(using: str | None = None) -> list[AlertChange]:
    """Compare each pixel's outbox with the alert thresholds; announce what started or ended.

    An incident ends only well below its threshold (half of it), so a value hovering around
    the line does not start and end it on every check.
    """
    using = using or router.db_for_write(OutboxEvent)
    conf = capi_settings()
    active = _active(using)
    changes = []

    limit = timedelta(seconds=conf.alert_backlog_seconds)
    # Only rows past the end line (half the limit) are read: a pixel not among them ends.
    rows = OutboxEvent.objects.using(using)
    waits = due_ages_by_pixel(rows, longer_than=limit / 2)
    for pixel_id in sorted(waits.keys() | active[BACKLOG]):
        waited = waits.get(pixel_id)
        changes += _flip(
            using,
            BACKLOG,
            pixel_id,
            active=pixel_id in active[BACKLOG],
            start=waited is not None and waited > limit,
            end=waited is None,
            message=(
                f"pixel {pixel_id}: the oldest due event has waited "
                f"{int(waited.total_seconds()) // 60} min for a drainer: are the Celery "
                "workers (or capi_drain) running?"
                if waited is not None
                else ""
            ),
        )

    outcomes = _last_hour(using)
    for pixel_id in sorted(outcomes.keys() | active[FAILURE_RATE]):
        good, bad = outcomes.get(pixel_id, (0, 0))
        total = good + bad
        rate = bad / total if total else 0.0
        enough = total >= MIN_EVENTS_FOR_RATE
        changes += _flip(
            using,
            FAILURE_RATE,
            pixel_id,
            active=pixel_id in active[FAILURE_RATE],
            start=enough and rate > conf.alert_failure_rate,
            end=not enough or rate < conf.alert_failure_rate / 2,
            message=(
                f"pixel {pixel_id}: {bad} of the last hour's {total} deliveries failed or must "
                f"be retried ({rate:.0%}); the admin's health page lists the reasons"
            ),
        )
    return changes


@dataclass(frozen=True)
class ActiveAlert:
    """An incident going on, for the health page."""

    kind: str
    pixel_id: str
    message: str


def active_alerts(using: str) -> list[ActiveAlert]:
    """The incidents going on, by pixel and kind (one query of a table of a few rows)."""
    rows = AlertState.objects.using(using).filter(active=True)
    return [
        ActiveAlert(kind, pixel_id, message)
        for kind, pixel_id, message in rows.order_by("kind", "pixel_id").values_list(
            "kind", "pixel_id", "message"
        )
    ]


def evaluate_safely(using: str) -> None:
    """``evaluate``, logging instead of raising: an alert problem must never undo a drain
    that worked, nor reach a commit."""
    try:
        evaluate(using)
    except Exception:
        logger.exception("django-capi could not evaluate its alerts on %r", using)


def evaluate_from_web(using: str) -> None:
    """The web process's look, at most once a minute."""
    if cache.add(f"django_capi:alerts:{using}", 1, timeout=WEB_CHECK_SECONDS):
        evaluate_safely(using)


def _last_hour(using: str) -> dict[str, tuple[int, int]]:
    """Requests' outcomes per event in the last hour, per pixel: delivered, and failed or to
    be retried. Counting attempts, not rows, sees a Meta outage at once, while rows still
    wait in their backoff (rate limits and token errors have their own handling and are left
    out). A request counts once for each event it carried."""
    bad_outcomes = (
        DeliveryAttempt.Outcome.RETRY,
        DeliveryAttempt.Outcome.FAILED,
        DeliveryAttempt.Outcome.REJECTED,
    )
    counts: dict[str, tuple[int, int]] = {}
    found = (
        DeliveryAttempt.objects.using(using)
        .filter(attempted_at__gte=Now() - timedelta(hours=1))
        .exclude(pixel_id="")  # every request the drainer records names its pixel
        .values_list("pixel_id", "outcome")
        .annotate(n=Sum("batch_size"))
        .order_by()
    )
    for pixel_id, outcome, n in found:
        good, bad = counts.get(pixel_id, (0, 0))
        if outcome == DeliveryAttempt.Outcome.DELIVERED:
            good += n
        elif outcome in bad_outcomes:
            bad += n
        counts[pixel_id] = (good, bad)
    return counts


def _active(using: str) -> dict[str, set[str]]:
    """The pixels with an incident going on, by kind."""
    active: dict[str, set[str]] = defaultdict(set)
    for alert in active_alerts(using):
        active[alert.kind].add(alert.pixel_id)
    return active


def _flip(
    using: str, kind: str, pixel_id: str, *, active: bool, start: bool, end: bool, message: str
) -> list[AlertChange]:
    """Record the incident's state; report a change only to the one caller that made it.
    ``active`` is what this caller read: a row is touched only when it may change."""
    if (start and active) or (not start and not (end and active)):
        return []  # nothing to change, as far as this caller saw
    states = AlertState.objects.using(using)
    row = states.filter(kind=kind, pixel_id=pixel_id)
    if start:
        states.get_or_create(kind=kind, pixel_id=pixel_id)
        changed = row.filter(active=False).update(active=True, since=Now(), message=message)
    else:
        changed = row.filter(active=True).update(active=False, message="")
    if not changed:
        return []
    change = AlertChange(
        kind=kind, pixel_id=pixel_id, started=start, message=message if start else ""
    )
    _announce(change)
    return [change]


def _announce(change: AlertChange) -> None:
    signal: Signal = signals.alert_raised if change.started else signals.alert_resolved
    signals.send_safely(signal, kind=change.kind, pixel_id=change.pixel_id, message=change.message)
    if not change.started:
        logger.warning("django-capi: %s alert resolved for pixel %s", change.kind, change.pixel_id)
        return
    logger.error("django-capi: %s: %s", change.kind, change.message)
    mail_admins_once(
        f"Meta Conversions API: {change.kind} on pixel {change.pixel_id}", change.message
    )


def mail_admins_once(subject: str, message: str) -> None:
    """The mail of an incident's start, if ``ALERT_MAIL_ADMINS`` allows; never raises."""
    if not capi_settings().alert_mail_admins:
        return
    try:
        mail_admins(subject, message, fail_silently=True)
    except Exception:
        logger.exception("django-capi could not mail the admins")
