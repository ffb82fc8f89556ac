"""Telling people before they have to look: a due backlog that nobody drains, or Meta
refusing a large share of events. Once per incident: an alert when it starts, a note when it
ends. (A broken token has its own once-per-incident alert: the pixel's circuit.)

``evaluate`` runs at the end of every drain task and ``capi_drain`` run, and from the web
process when it commits events (``dispatch``, at most once a minute there): a backlog with no
worker running at all is exactly when nobody else would notice.
"""

from __future__ import annotations

import logging
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
from .queries import oldest_due_age

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
    started: bool  # True: an incident began; False: it ended
    message: str


def evaluate(using: str | None = None) -> list[AlertChange]:
    """Compare the outbox with the alert thresholds; announce what started or ended.

    An incident ends only well below its threshold (half of it), so a value hovering around
    the line does not start and end it on every check.
    """
    using = using or router.db_for_write(OutboxEvent)
    conf = capi_settings()
    changes = []

    waited = oldest_due_age(OutboxEvent.objects.using(using), None)
    limit = timedelta(seconds=conf.alert_backlog_seconds)
    message = (
        f"the oldest due event has waited {int(waited.total_seconds()) // 60} min for a "
        "drainer: are the Celery workers (or capi_drain) running?"
        if waited is not None
        else ""
    )
    changes += _flip(
        using,
        BACKLOG,
        start=waited is not None and waited > limit,
        end=waited is None or waited < limit / 2,
        message=message,
    )

    good, bad = _last_hour(using)
    total = good + bad
    rate = bad / total if total else 0.0
    enough = total >= MIN_EVENTS_FOR_RATE
    changes += _flip(
        using,
        FAILURE_RATE,
        start=enough and rate > conf.alert_failure_rate,
        end=not enough or rate < conf.alert_failure_rate / 2,
        message=(
            f"{bad} of the last hour's {total} deliveries failed or must be retried "
            f"({rate:.0%}); the admin's health page lists the reasons"
        ),
    )
    return changes


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


def _last_hour(using: str) -> tuple[int, int]:
    """Requests' outcomes per event in the last hour: delivered, and failed or to be retried.
    Counting attempts, not rows, sees a Meta outage at once, while rows still wait in their
    backoff (rate limits and token errors have their own handling and are left out). A
    request counts once for each event it carried."""
    outcomes = dict(
        DeliveryAttempt.objects.using(using)
        .filter(attempted_at__gte=Now() - timedelta(hours=1))
        .values_list("outcome")
        .annotate(n=Sum("batch_size"))
        .order_by()
    )
    good = outcomes.get(DeliveryAttempt.Outcome.DELIVERED, 0)
    bad = sum(
        outcomes.get(outcome, 0)
        for outcome in (
            DeliveryAttempt.Outcome.RETRY,
            DeliveryAttempt.Outcome.FAILED,
            DeliveryAttempt.Outcome.REJECTED,
        )
    )
    return good, bad


def _flip(using: str, kind: str, *, start: bool, end: bool, message: str) -> list[AlertChange]:
    """Record the incident's state; report a change only to the one caller that made it."""
    states = AlertState.objects.using(using)
    states.get_or_create(kind=kind)
    if start:
        changed = states.filter(kind=kind, active=False).update(
            active=True, since=Now(), message=message
        )
    elif end:
        changed = states.filter(kind=kind, active=True).update(active=False, message="")
    else:
        changed = 0
    if not changed:
        return []
    change = AlertChange(kind=kind, started=start, message=message if start else "")
    _announce(change)
    return [change]


def _announce(change: AlertChange) -> None:
    signal: Signal = signals.alert_raised if change.started else signals.alert_resolved
    signals.send_safely(signal, kind=change.kind, message=change.message)
    if not change.started:
        logger.warning("django-capi: %s alert resolved", change.kind)
        return
    logger.error("django-capi: %s: %s", change.kind, change.message)
    mail_admins_once(f"Meta Conversions API: {change.kind}", change.message)


def mail_admins_once(subject: str, message: str) -> None:
    """The mail of an incident's start, if ``ALERT_MAIL_ADMINS`` allows; never raises."""
    if not capi_settings().alert_mail_admins:
        return
    try:
        mail_admins(subject, message, fail_silently=True)
    except Exception:
        logger.exception("django-capi could not mail the admins")
