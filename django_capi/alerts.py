"""Telling people before they have to look: a due backlog that nobody drains, or Meta
refusing a large share of events. Once per incident: an alert when it starts, a note when it
ends. (A broken token has its own once-per-incident alert: the pixel's circuit.)

``evaluate`` runs at the end of every drain task and ``capi_drain`` run, and from the web
process when it commits events (at most once a minute there): a backlog with no worker
running at all is exactly when nobody else would notice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from django.core.cache import cache
from django.core.mail import mail_admins
from django.db import router
from django.db.models import QuerySet
from django.db.models.functions import Coalesce, Now
from django.dispatch import Signal

from . import signals
from .conf import capi_settings
from .dashboard import oldest_due_age
from .models import AlertState, OutboxEvent

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
    """Compare the outbox with the alert thresholds; announce what started or ended."""
    using = using or router.db_for_write(OutboxEvent)
    conf = capi_settings()
    rows = OutboxEvent.objects.using(using)
    changes = []

    waited = oldest_due_age(rows, None)
    limit = timedelta(seconds=conf.alert_backlog_seconds)
    backlog = waited is not None and waited > limit
    message = (
        f"the oldest due event has waited {int(waited.total_seconds()) // 60} min for a "
        "drainer: are the Celery workers (or capi_drain) running?"
        if backlog and waited is not None
        else ""
    )
    changes += _flip(using, BACKLOG, active=backlog, message=message)

    delivered, failed = _last_hour(rows)
    total = delivered + failed
    rate = failed / total if total else 0.0
    failing = total >= MIN_EVENTS_FOR_RATE and rate > conf.alert_failure_rate
    message = (
        f"{failed} of the last hour's {total} events failed ({rate:.0%}); "
        "the admin's health page lists the reasons"
        if failing
        else ""
    )
    changes += _flip(using, FAILURE_RATE, active=failing, message=message)
    return changes


def evaluate_from_web(using: str) -> None:
    """The web process's look, at most once a minute; never lets an error reach a commit."""
    if not cache.add(f"django_capi:alerts:{using}", 1, timeout=WEB_CHECK_SECONDS):
        return
    try:
        evaluate(using)
    except Exception:
        logger.exception("django-capi could not evaluate its alerts")


def _last_hour(rows: QuerySet[OutboxEvent]) -> tuple[int, int]:
    """Events delivered and failed in the last hour, by the database clock; each count is a
    range scan of its partial index (``capi_outbox_delivered``, ``capi_outbox_failed``)."""
    hour_ago = Now() - timedelta(hours=1)
    delivered = rows.filter(status="delivered", delivered_at__gte=hour_ago).count()
    failed = (
        rows.filter(status="failed")
        .annotate(failed_at=Coalesce("last_attempt_at", "created_at"))
        .filter(failed_at__gte=hour_ago)
        .count()
    )
    return delivered, failed


def _flip(using: str, kind: str, *, active: bool, message: str) -> list[AlertChange]:
    """Record the incident's state; report a change only to the one caller that made it."""
    states = AlertState.objects.using(using)
    states.get_or_create(kind=kind)
    if active:
        changed = states.filter(kind=kind, active=False).update(
            active=True, since=Now(), message=message
        )
    else:
        changed = states.filter(kind=kind, active=True).update(active=False, message="")
    if not changed:
        return []
    change = AlertChange(kind=kind, started=active, message=message)
    _announce(change)
    return [change]


def _announce(change: AlertChange) -> None:
    signal: Signal = signals.alert_raised if change.started else signals.alert_resolved
    signals.send_safely(signal, kind=change.kind, message=change.message)
    if not change.started:
        logger.warning("django-capi: %s alert resolved", change.kind)
        return
    logger.error("django-capi: %s: %s", change.kind, change.message)
    if capi_settings().alert_mail_admins:
        try:
            mail_admins(f"Meta Conversions API: {change.kind}", change.message, fail_silently=True)
        except Exception:
            logger.exception("django-capi could not mail the admins")
