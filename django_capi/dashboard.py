"""The health dashboard: what the outbox did lately, computed by the database.

Each figure is one query that an index or a time window bounds, so the page stays fast on an
outbox of millions of rows; nothing loads rows into Python to count them. Times come from the
database clock, like every other time in the outbox, and buckets follow ``settings.TIME_ZONE``
(the current request's time zone would make two admins see different days).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta, tzinfo

from django.conf import settings
from django.contrib import admin
from django.contrib.admin.sites import AdminSite, all_sites
from django.core.exceptions import PermissionDenied
from django.db import router
from django.db.models import CharField, Count, F, Max, Q, QuerySet, Value
from django.db.models.functions import Coalesce, TruncDay, TruncHour
from django.db.models.lookups import GreaterThan
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.timesince import timesince
from django.utils.translation import gettext as _

from . import alerts, charts, outbox
from .conf import DEFAULTS, capi_settings
from .constants import MATCH_KEYS
from .exceptions import CapiConfigurationError
from .models import OutboxEvent, PixelState
from .queries import oldest_due_age

Status = OutboxEvent.Status

HOURS = 48
DAYS = 30
COVERAGE_DAYS = 7
TOP_REASONS = 10
PERMISSION = "django_capi.view_outboxevent"

Series = list[tuple[datetime, int]]


@dataclass(frozen=True)
class FailureCount:
    """Failed events sharing one reason and one error message."""

    reason: str
    reason_label: str
    error: str
    count: int
    last_seen: datetime


@dataclass(frozen=True)
class PixelHealth:
    """One pixel's delivery state; ``state`` is ``healthy``, ``paused`` or ``circuit_open``."""

    pixel_id: str
    state: str
    paused_until: datetime | None = None
    circuit_opened_at: datetime | None = None
    next_probe_at: datetime | None = None
    last_error: str = ""
    #: The messages of the pixel's alerts going on (a backlog, a failure rate).
    alerts: tuple[str, ...] = ()


@dataclass(frozen=True)
class KeyCoverage:
    """The share (0 to 1) of one event name's events carrying each match key."""

    event_name: str
    events: int
    shares: dict[str, float]


@dataclass(frozen=True)
class HealthFigures:
    """Everything the health page shows, as of ``now`` on database alias ``database``."""

    now: datetime
    database: str
    #: Rows per status, every status present (zero included), in ``Status`` order.
    counts: dict[str, int]
    #: How long the due row that has waited longest has been due (``now - next_attempt_at``);
    #: None when no row is due. Rows in flight (leased) do not count and a paused pixel's rows
    #: are moved past the pause, so this is how far the drainers lag; a retry's backoff and
    #: a pause are not lag. It is the figure ``ALERT_BACKLOG_SECONDS`` is compared with.
    oldest_due_age: timedelta | None
    #: (bucket start, count), oldest first, empty buckets included. Delivered rows count at
    #: ``delivered_at``; failed rows at their last attempt, or at ``created_at`` when they
    #: failed at capture and were never attempted.
    delivered_hourly: Series
    failed_hourly: Series
    delivered_daily: Series
    failed_daily: Series
    #: The commonest (reason, message) among rows that failed in the daily chart's window.
    failure_reasons: list[FailureCount]
    pixels: list[PixelHealth]
    #: Pending and delivered events created in the last ``COVERAGE_DAYS`` days (failed and
    #: cancelled ones never reach Meta), most frequent event name first.
    coverage: list[KeyCoverage]


def health_figures(*, using: str | None = None, now: datetime | None = None) -> HealthFigures:
    """Compute every figure of the dashboard on database ``using``, as of ``now`` (the
    database's clock when None)."""
    db = using or router.db_for_read(OutboxEvent)
    rows = OutboxEvent.objects.using(db)
    oldest_due = oldest_due_age(rows, now)
    reference = now if now is not None else outbox.database_now(db)
    zone = timezone.get_default_timezone() if settings.USE_TZ else None
    hours = _hour_buckets(reference, zone)
    days = _day_buckets(reference, zone)
    hours_end = hours[-1] + timedelta(hours=1)
    days_end = _midnight(_local(reference, zone).date() + timedelta(days=1), zone)

    delivered = rows.filter(status=Status.DELIVERED).annotate(at=F("delivered_at"))
    failed = rows.filter(status=Status.FAILED).annotate(
        at=Coalesce("last_attempt_at", "created_at")
    )
    failed_lately = failed.filter(at__gte=days[0], at__lt=days_end)
    coverage, coverage_pixels = _coverage(rows, since=reference - timedelta(days=COVERAGE_DAYS))
    return HealthFigures(
        now=reference,
        database=db,
        counts=_counts(rows),
        oldest_due_age=oldest_due,
        delivered_hourly=_series(delivered, TruncHour, hours, hours_end, zone),
        failed_hourly=_series(failed, TruncHour, hours, hours_end, zone),
        delivered_daily=_series(delivered, TruncDay, days, days_end, zone),
        failed_daily=_series(failed, TruncDay, days, days_end, zone),
        failure_reasons=_failure_reasons(failed_lately),
        pixels=_pixels(db, reference, coverage_pixels),
        coverage=coverage,
    )


def _counts(rows: QuerySet[OutboxEvent]) -> dict[str, int]:
    # One COUNT per status, in one UNION ALL: each is answered by its status's partial index
    # (capi_outbox_due, _delivered, _failed, _failed_cancelled). The outbox keeps no index of every
    # row by status, which a GROUP BY status would need: it would cost each checkout and
    # each delivery an index entry.
    per_status = [
        rows.filter(status=status)
        .annotate(status_=Value(status, output_field=CharField()))
        .values_list("status_")
        .annotate(n=Count("*"))
        .order_by()
        for status in Status.values
    ]
    found = dict(per_status[0].union(*per_status[1:], all=True))
    return {status: found.get(status, 0) for status in Status.values}


def _local(moment: datetime, zone: tzinfo | None) -> datetime:
    """Wall-clock time in ``zone``, naive: what a bucket is keyed by."""
    return timezone.make_naive(moment, zone) if zone is not None else moment


def _midnight(day: date, zone: tzinfo | None) -> datetime:
    start = datetime.combine(day, time.min)
    return timezone.make_aware(start, zone) if zone is not None else start


def _hour_buckets(reference: datetime, zone: tzinfo | None) -> list[datetime]:
    """The starts of the last ``HOURS`` local hours, this one included. Stepping in UTC keeps
    daylight saving right: a skipped hour never appears, a repeated one appears once."""
    if zone is None:
        this_hour = reference.replace(minute=0, second=0, microsecond=0)
        return [this_hour - timedelta(hours=n) for n in reversed(range(HOURS))]
    this_hour = timezone.localtime(reference, zone).replace(minute=0, second=0, microsecond=0)
    base = this_hour.astimezone(UTC)
    starts: dict[datetime, datetime] = {}
    for n in reversed(range(HOURS)):
        start = (base - timedelta(hours=n)).astimezone(zone)
        starts.setdefault(_local(start, zone), start)
    return list(starts.values())


def _day_buckets(reference: datetime, zone: tzinfo | None) -> list[datetime]:
    today = _local(reference, zone).date()
    return [_midnight(today - timedelta(days=n), zone) for n in reversed(range(DAYS))]


def _series(
    rows: QuerySet[OutboxEvent],
    trunc: type[TruncHour | TruncDay],
    starts: list[datetime],
    end: datetime,
    zone: tzinfo | None,
) -> Series:
    """Rows per bucket of their ``at`` annotation, in one grouped query; zeros filled in."""
    found = (
        rows.filter(Q(at__gte=starts[0], at__lt=end))
        .annotate(bucket=trunc("at", tzinfo=zone))
        .values_list("bucket")
        .annotate(n=Count("*"))
        .order_by()
    )
    counts: dict[datetime, int] = {}
    for bucket, n in found:
        key = _local(bucket, zone)
        counts[key] = counts.get(key, 0) + n
    return [(start, counts.get(_local(start, zone), 0)) for start in starts]


def _failure_reasons(failed: QuerySet[OutboxEvent]) -> list[FailureCount]:
    grouped = (
        failed.values_list("failure_reason", "last_error")
        .annotate(n=Count("*"), last_seen=Max("at"))
        .order_by("-n", "-last_seen")[:TOP_REASONS]
    )
    labels = dict(OutboxEvent.FailureReason.choices)
    return [
        FailureCount(reason, str(labels.get(reason, reason)), error, n, last_seen)
        for reason, error, n, last_seen in grouped
    ]


def _pixels(db: str, reference: datetime, seen: Iterable[str]) -> list[PixelHealth]:
    """Every pixel with a state row, an alert going on, or rows created in the coverage
    window (healthy unless a state row says otherwise), with its alerts. Problems first."""
    raised: dict[str, list[str]] = {}
    for alert in alerts.active_alerts(db):
        raised.setdefault(alert.pixel_id, []).append(alert.message)
    pixels = {pixel_id: PixelHealth(pixel_id, "healthy") for pixel_id in (*seen, *raised)}
    for state in PixelState.objects.using(db):
        if state.circuit_opened_at is not None:
            status = "circuit_open"
        elif state.paused_until is not None and state.paused_until > reference:
            status = "paused"
        else:
            status = "healthy"
        pixels[state.pixel_id] = PixelHealth(
            pixel_id=state.pixel_id,
            state=status,
            paused_until=state.paused_until if status == "paused" else None,
            circuit_opened_at=state.circuit_opened_at,
            next_probe_at=state.next_probe_at if status == "circuit_open" else None,
            last_error=state.last_error if status != "healthy" else "",
        )
    pixels = {
        pixel_id: replace(pixel, alerts=tuple(raised.get(pixel_id, ())))
        for pixel_id, pixel in pixels.items()
    }
    order = {"circuit_open": 0, "paused": 1, "healthy": 2}
    return sorted(
        pixels.values(), key=lambda pixel: (order[pixel.state], not pixel.alerts, pixel.pixel_id)
    )


def _coverage(
    rows: QuerySet[OutboxEvent], *, since: datetime
) -> tuple[list[KeyCoverage], set[str]]:
    """Match-key coverage per event name, and the pixels seen, from one grouped query.

    Each row's ``match_keys`` bits say which keys its ``user_data`` has, so no payload is
    read. Bounded by ``created_at`` (index capi_outbox_created). Grouping by
    pixel and status too lists every pixel with recent rows at no extra cost; only pending
    and delivered events count towards coverage, since failed and cancelled ones never reach
    Meta.
    """
    has = {
        f"has_{key}": Count("pk", filter=GreaterThan(F("match_keys").bitand(1 << bit), 0))
        for bit, key in enumerate(MATCH_KEYS)
    }
    grouped = (
        rows.filter(created_at__gte=since)
        .values_list("event_name", "pixel_id", "status")
        .annotate(events=Count("pk"), **has)
        .order_by()
    )
    totals: dict[str, list[int]] = {}  # event name: [events, then one count per key]
    pixels: set[str] = set()
    for event_name, pixel_id, status, *counts in grouped:
        pixels.add(pixel_id)
        if status in (Status.PENDING, Status.DELIVERED):
            total = totals.setdefault(event_name, [0] * len(counts))
            total[:] = [a + b for a, b in zip(total, counts, strict=True)]
    coverage = [
        KeyCoverage(
            name, events, {key: n / events for key, n in zip(MATCH_KEYS, has_key, strict=True)}
        )
        for name, (events, *has_key) in totals.items()
    ]
    coverage.sort(key=lambda row: (-row.events, row.event_name))
    return coverage, pixels


# The page.


def health_view(request: HttpRequest) -> HttpResponse:
    """The admin page: mounted by ``OutboxEventAdmin.get_urls`` behind ``admin_view``."""
    site = _admin_site(request)
    if not (site.has_permission(request) and request.user.has_perm(PERMISSION)):
        raise PermissionDenied
    databases = outbox.databases()
    chosen = request.GET.get("database", "")
    figures = health_figures(using=chosen if chosen in databases else None)
    try:
        backlog_alert = capi_settings().alert_backlog_seconds
    except CapiConfigurationError:  # the page must still show, settings broken or not
        backlog_alert = int(DEFAULTS["ALERT_BACKLOG_SECONDS"])
    age = figures.oldest_due_age
    context = {
        **site.each_context(request),
        "title": _("Conversions API health"),
        "opts": OutboxEvent._meta,
        "figures": figures,
        "databases": databases if len(databases) > 1 else [],
        "statuses": [(status, label, figures.counts[status]) for status, label in Status.choices],
        "oldest_due_words": None if age is None else _duration_words(age),
        "backlog_late": age is not None and age.total_seconds() > backlog_alert,
        "hourly_chart": charts.delivery_chart(
            figures.delivered_hourly, figures.failed_hourly, hourly=True
        ),
        "daily_chart": charts.delivery_chart(
            figures.delivered_daily, figures.failed_daily, hourly=False
        ),
        "match_keys": MATCH_KEYS,
        "coverage_rows": [
            (row, [charts.share_cell(row.shares[key]) for key in MATCH_KEYS])
            for row in figures.coverage
        ],
        "days": DAYS,
        "coverage_days": COVERAGE_DAYS,
    }
    return TemplateResponse(request, "django_capi/admin/health.html", context)


def _admin_site(request: HttpRequest) -> AdminSite:
    """The admin site serving this request (a project may run its own), else the default."""
    match = request.resolver_match
    for site in all_sites:
        if match is not None and site.name == match.namespace:
            return site
    return admin.site


def _duration_words(age: timedelta) -> str:
    if age < timedelta(minutes=1):
        return _("less than a minute")
    reference = timezone.now()
    return timesince(reference - age, reference)
