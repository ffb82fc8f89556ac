"""The health dashboard: its figures against a hand-computed data set, and the page."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from django.contrib.auth.models import Permission, User
from django.core.exceptions import PermissionDenied
from django.db import connection
from django.test import RequestFactory, override_settings
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from django_capi import charts
from django_capi.constants import MATCH_KEYS
from django_capi.dashboard import health_figures, health_view
from django_capi.models import AlertState, OutboxEvent, PixelState
from tests.factories import OutboxEventFactory

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 3, 15, 12, 30, tzinfo=UTC)
ALL_KEYS = dict.fromkeys(MATCH_KEYS, "x")
SCRIPT = "<script>alert('xss')</script>"


def at(day: int, hour: int, minute: int = 0, month: int = 3) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=UTC)


def event(
    status: str = "delivered",
    *,
    created: datetime,
    name: str = "Purchase",
    pixel: str = "111",
    user_data: dict[str, Any] | None = None,
    **fields: Any,
) -> OutboxEvent:
    """An unsaved website row created (and due) at ``created``, for ``bulk_create``."""
    fields.setdefault("next_attempt_at", created)
    return OutboxEventFactory.build(
        status=status,
        created_at=created,
        event_time=created,
        event_name=name,
        pixel_id=pixel,
        action_source="website",
        user_data=user_data,
        **fields,
    )


def delivered(when: datetime, **kwargs: Any) -> OutboxEvent:
    return event(created=when - timedelta(minutes=1), delivered=True, delivered_at=when, **kwargs)


def failed(reason: str, error: str, *, attempt: datetime | None, **kwargs: Any) -> OutboxEvent:
    kwargs.setdefault("created", (attempt or NOW) - timedelta(minutes=30))
    return event(
        "failed",
        failed=True,
        failure_reason=reason,
        last_error=error,
        last_attempt_at=attempt,
        **kwargs,
    )


@pytest.fixture
def known_data() -> None:
    """The data set every expectation below is computed from by hand, as of ``NOW``."""
    create_known_data(shift=timedelta(0))


@pytest.fixture
def live_data() -> None:
    """The same data, moved so that ``NOW`` is this moment: the page reads the real clock."""
    create_known_data(shift=datetime.now(UTC) - NOW)


def create_known_data(shift: timedelta) -> None:
    events = [
        # Delivered, in the coverage window (created after 8 March 12:30).
        delivered(at(15, 12, 20), user_data=ALL_KEYS),
        delivered(at(15, 12, 5), user_data={"em": "x", "ph": "x"}),
        delivered(at(14, 9, 59), user_data={"em": "x"}, pixel="222"),
        delivered(at(13, 12, 59)),  # no user_data at all
        delivered(
            at(13, 13, 0), name="Lead", pixel="222", user_data={"em": "x", "client_user_agent": "x"}
        ),
        # Delivered long ago: only the daily chart sees the second one.
        delivered(at(13, 23, 59, month=2), user_data=ALL_KEYS),
        delivered(at(14, 0, 0, month=2), user_data=ALL_KEYS),
        # Failed: at the last attempt, or at creation when never attempted.
        failed(
            "rejected", f"Invalid parameter {SCRIPT}", attempt=at(15, 11, 30), user_data=ALL_KEYS
        ),
        failed(
            "rejected", f"Invalid parameter {SCRIPT}", attempt=at(15, 11, 45), user_data=ALL_KEYS
        ),
        failed("invalid", "event_time is too old", attempt=None, created=at(14, 22, 15)),
        failed("exhausted", "HTTP 503", attempt=at(1, 8), created=at(27, 8, month=2)),
        failed("expired", "too old for Meta", attempt=at(1, 8, month=1)),
        # Pending: two due (for 5 and 1 minutes), one waiting for its retry.
        event(
            "pending",
            created=NOW - timedelta(days=2),
            next_attempt_at=NOW - timedelta(minutes=5),
            name="Lead",
            pixel="222",
            user_data={"ph": "x"},
        ),
        event(
            "pending", created=NOW - timedelta(minutes=1), name="Lead", pixel="222", user_data={}
        ),
        event(
            "pending",
            created=NOW - timedelta(hours=1),
            next_attempt_at=NOW + timedelta(minutes=10),
            name="Lead",
            pixel="333",
            user_data={"em": "x"},
        ),
        # Cancelled events never reach Meta: no coverage.
        event("cancelled", created=NOW - timedelta(hours=3), name="Lead", user_data=ALL_KEYS),
    ]
    states = [
        PixelState(
            pixel_id="111",
            circuit_opened_at=NOW - timedelta(hours=1),
            next_probe_at=NOW + timedelta(minutes=4),
            last_error=f"Invalid OAuth access token {SCRIPT}",
        ),
        PixelState(pixel_id="444", paused_until=NOW + timedelta(minutes=10), last_error="429"),
        PixelState(pixel_id="555", paused_until=NOW - timedelta(hours=1), last_error="429"),
    ]
    for row in [*events, *states]:
        for field in row._meta.concrete_fields:
            value = getattr(row, field.attname)
            if isinstance(value, datetime):
                setattr(row, field.attname, value + shift)
    OutboxEvent.objects.bulk_create(events)
    PixelState.objects.bulk_create(states)


def nonzero(series: list[tuple[datetime, int]]) -> dict[datetime, int]:
    return {start: count for start, count in series if count}


def test_counts_and_oldest_due(known_data: None) -> None:
    figures = health_figures(now=NOW)
    assert figures.counts == {"pending": 3, "delivered": 7, "failed": 5, "cancelled": 1}
    assert list(figures.counts) == ["pending", "delivered", "failed", "cancelled"]
    assert figures.oldest_due_age == timedelta(minutes=5)
    assert figures.now == NOW
    assert figures.database == "default"


def test_hourly_series_cover_48_hours_with_zeros(known_data: None) -> None:
    figures = health_figures(now=NOW)
    for series in (figures.delivered_hourly, figures.failed_hourly):
        assert len(series) == 48
        assert series[0][0] == at(13, 13) and series[-1][0] == at(15, 12)
        assert all(b - a == timedelta(hours=1) for (a, _), (b, _) in itertools.pairwise(series))
    # 13 March 12:59 is a minute too early; 13:00 is the first bucket's first instant.
    assert nonzero(figures.delivered_hourly) == {at(13, 13): 1, at(14, 9): 1, at(15, 12): 2}
    # The event failed at capture counts at its creation.
    assert nonzero(figures.failed_hourly) == {at(14, 22): 1, at(15, 11): 2}


def test_daily_series_cover_30_days_with_zeros(known_data: None) -> None:
    figures = health_figures(now=NOW)
    for series in (figures.delivered_daily, figures.failed_daily):
        assert len(series) == 30
        assert series[0][0] == at(14, 0, month=2) and series[-1][0] == at(15, 0)
    assert nonzero(figures.delivered_daily) == {
        at(14, 0, month=2): 1,
        at(13, 0): 2,
        at(14, 0): 1,
        at(15, 0): 2,
    }
    assert nonzero(figures.failed_daily) == {at(1, 0): 1, at(14, 0): 1, at(15, 0): 2}


def test_top_failure_reasons(known_data: None) -> None:
    reasons = health_figures(now=NOW).failure_reasons
    assert [(r.reason, r.error, r.count, r.last_seen) for r in reasons] == [
        ("rejected", f"Invalid parameter {SCRIPT}", 2, at(15, 11, 45)),
        ("invalid", "event_time is too old", 1, at(14, 22, 15)),
        ("exhausted", "HTTP 503", 1, at(1, 8)),
    ]  # the expired one failed before the 30 days
    assert reasons[0].reason_label == "Rejected by Meta"


def test_top_failure_reasons_stop_at_ten() -> None:
    OutboxEvent.objects.bulk_create(
        failed("rejected", f"error {n}", attempt=NOW - timedelta(hours=1)) for n in range(12)
    )
    assert len(health_figures(now=NOW).failure_reasons) == 10


def test_pixels(known_data: None) -> None:
    pixels = {p.pixel_id: p for p in health_figures(now=NOW).pixels}
    assert [p.pixel_id for p in health_figures(now=NOW).pixels] == [
        "111",
        "444",
        "222",
        "333",
        "555",
    ]
    assert pixels["111"].state == "circuit_open"
    assert pixels["111"].circuit_opened_at == NOW - timedelta(hours=1)
    assert pixels["111"].next_probe_at == NOW + timedelta(minutes=4)
    assert pixels["444"].state == "paused"
    assert pixels["444"].paused_until == NOW + timedelta(minutes=10)
    # A pause that ended is healthy; pixels with rows but no state are healthy.
    assert {pixels[p].state for p in ("555", "222", "333")} == {"healthy"}


def test_match_key_coverage(known_data: None) -> None:
    coverage = {row.event_name: row for row in health_figures(now=NOW).coverage}
    # Purchase: four delivered in the window, on two pixels; failed ones do not count.
    assert coverage["Purchase"].events == 4
    assert coverage["Purchase"].shares == {
        "em": 3 / 4,
        "ph": 2 / 4,
        "external_id": 1 / 4,
        "fbc": 1 / 4,
        "fbp": 1 / 4,
        "client_ip_address": 1 / 4,
        "client_user_agent": 1 / 4,
    }
    # Lead: one delivered, three pending; the cancelled one does not count.
    assert coverage["Lead"].events == 4
    assert coverage["Lead"].shares == {
        **dict.fromkeys(MATCH_KEYS, 0.0),
        "em": 2 / 4,
        "ph": 1 / 4,
        "client_user_agent": 1 / 4,
    }
    assert list(coverage) == ["Lead", "Purchase"]  # same count: by name


def test_empty_outbox_reads_the_database_clock() -> None:
    figures = health_figures()
    assert abs(figures.now - datetime.now(UTC)) < timedelta(minutes=1)
    assert figures.counts == dict.fromkeys(["pending", "delivered", "failed", "cancelled"], 0)
    assert figures.oldest_due_age is None
    assert len(figures.delivered_hourly) == 48 and not nonzero(figures.delivered_hourly)
    assert figures.failure_reasons == figures.pixels == figures.coverage == []


def test_oldest_due_age_by_the_database_clock() -> None:
    OutboxEvent.objects.bulk_create(
        [event("pending", created=datetime.now(UTC) - timedelta(hours=2))]
    )
    age = health_figures().oldest_due_age
    assert age is not None and timedelta(hours=2) <= age < timedelta(hours=2, minutes=1)


@override_settings(TIME_ZONE="Europe/Paris")
def test_buckets_follow_the_time_zone_across_daylight_saving() -> None:
    paris = ZoneInfo("Europe/Paris")
    # 29 March 2026: 02:00 in Paris does not exist. 23:30 UTC on the 28th is the 29th there.
    now = datetime(2026, 3, 29, 12, 10, tzinfo=paris)
    OutboxEvent.objects.bulk_create(
        [
            delivered(datetime(2026, 3, 28, 23, 30, tzinfo=UTC)),
            delivered(datetime(2026, 3, 29, 1, 30, tzinfo=paris)),
            delivered(datetime(2026, 3, 29, 3, 15, tzinfo=paris)),
        ]
    )
    figures = health_figures(now=now)
    starts = [start for start, _ in figures.delivered_hourly]
    assert len(starts) == 48 and starts[-1] == datetime(2026, 3, 29, 12, tzinfo=paris)
    # Python subtracts wall-clock times of one zone: compare instants in UTC.
    utc = [start.astimezone(UTC) for start in starts]
    assert all(b - a == timedelta(hours=1) for a, b in itertools.pairwise(utc))
    assert 2 not in {s.hour for s in starts if s.day == 29}
    assert nonzero(figures.delivered_hourly) == {
        datetime(2026, 3, 29, 0, tzinfo=paris): 1,
        datetime(2026, 3, 29, 1, tzinfo=paris): 1,
        datetime(2026, 3, 29, 3, tzinfo=paris): 1,
    }
    assert nonzero(figures.delivered_daily) == {datetime(2026, 3, 29, tzinfo=paris): 3}


@override_settings(TIME_ZONE="Europe/Paris")
def test_a_repeated_hour_is_one_bucket() -> None:
    paris = ZoneInfo("Europe/Paris")
    # 25 October 2026: 02:00-03:00 happens twice in Paris (00:00 and 01:00 UTC).
    OutboxEvent.objects.bulk_create(
        [
            delivered(datetime(2026, 10, 25, 0, 30, tzinfo=UTC)),
            delivered(datetime(2026, 10, 25, 1, 30, tzinfo=UTC)),
        ]
    )
    figures = health_figures(now=datetime(2026, 10, 25, 12, 0, tzinfo=UTC))
    assert len(figures.delivered_hourly) == 47
    assert nonzero(figures.delivered_hourly) == {datetime(2026, 10, 25, 2, tzinfo=paris): 2}


@override_settings(USE_TZ=False, TIME_ZONE="UTC")
def test_naive_datetimes_without_time_zone_support() -> None:
    now = datetime(2026, 3, 15, 12, 30)
    OutboxEvent.objects.bulk_create(
        [
            delivered(datetime(2026, 3, 15, 11, 10)),
            event("failed", created=datetime(2026, 3, 1, 9, 0), failure_reason="invalid"),
        ]
    )
    figures = health_figures(now=now)
    assert nonzero(figures.delivered_hourly) == {datetime(2026, 3, 15, 11): 1}
    assert nonzero(figures.failed_daily) == {datetime(2026, 3, 1): 1}
    assert len(figures.delivered_daily) == 30


# The page.


@pytest.fixture
def rf_get(rf: RequestFactory) -> Any:
    def get(user: User, query: str = "") -> Any:
        request = rf.get(f"/admin/django_capi/outboxevent/health/{query}")
        request.user = user
        response = health_view(request)
        response.render()
        return response

    return get


def test_the_page_shows_every_section(live_data: None, admin_user: User, rf_get: Any) -> None:
    response = rf_get(admin_user)
    assert response.status_code == 200
    html = response.content.decode()
    assert "<title>Conversions API health |" in html
    for section in ("capi-tiles", "capi-hourly", "capi-daily", "capi-failures", "capi-pixels"):
        assert f'id="{section}"' in html or f'class="{section}"' in html, section
    assert html.count('<svg viewBox="0 0 960 ') == 2 and html.count('role="img"') == 2
    assert "Events delivered and failed per hour, last 48 hours" in html
    assert "an estimate of Event Match Quality before Meta computes it" in html
    assert "circuit open" in html and "paused" in html and "healthy" in html
    assert "75 %" in html  # Purchase events carrying em
    assert "waiting 5\xa0minutes" in html


def test_untrusted_messages_are_escaped(live_data: None, admin_user: User, rf_get: Any) -> None:
    html = rf_get(admin_user).content.decode()
    assert SCRIPT not in html
    assert "Invalid parameter &lt;script&gt;alert(&#x27;xss&#x27;)&lt;/script&gt;" in html
    assert "Invalid OAuth access token &lt;script&gt;" in html


def test_the_page_through_the_admin_url(live_data: None, admin_client: Any) -> None:
    response = admin_client.get(reverse("admin:django_capi_outboxevent_health"))
    assert response.status_code == 200
    assert b"Conversions API health" in response.content


def test_staff_without_the_view_permission_get_403(client: Any, rf_get: Any) -> None:
    staff = User.objects.create_user("staff", password="pw", is_staff=True)
    with pytest.raises(PermissionDenied):
        rf_get(staff)
    client.force_login(staff)
    assert client.get(reverse("admin:django_capi_outboxevent_health")).status_code == 403


def test_staff_with_the_view_permission_see_it(rf_get: Any) -> None:
    staff = User.objects.create_user("viewer", is_staff=True)
    staff.user_permissions.add(Permission.objects.get(codename="view_outboxevent"))
    assert rf_get(User.objects.get(pk=staff.pk)).status_code == 200


def test_non_staff_with_the_permission_get_403(rf_get: Any) -> None:
    user = User.objects.create_user("shopper")
    user.user_permissions.add(Permission.objects.get(codename="view_outboxevent"))
    with pytest.raises(PermissionDenied):
        rf_get(User.objects.get(pk=user.pk))


def many_events(names: int, per_name: int) -> None:
    OutboxEvent.objects.bulk_create(
        delivered(
            NOW - timedelta(hours=n % 40, days=n % 5),
            name=f"Event{n % names}",
            pixel=str(n % 3),
            user_data={"em": "x"},
        )
        for n in range(names * per_name)
    )


#: The page's queries: the database clock, counts, oldest due row, four series, failure
#: reasons, alerts, pixel states and coverage (11), plus the session and user of a logged-in
#: admin.
PAGE_QUERIES = 13


def test_the_query_count_is_bounded(admin_client: Any, django_assert_max_num_queries: Any) -> None:
    url = reverse("admin:django_capi_outboxevent_health")
    admin_client.get(url)  # warm the admin's caches (content types)
    many_events(names=2, per_name=3)
    with CaptureQueriesContext(connection) as few:
        admin_client.get(url)
    many_events(names=40, per_name=25)  # more rows, more event names, more pixels
    with django_assert_max_num_queries(PAGE_QUERIES), CaptureQueriesContext(connection) as many:
        assert admin_client.get(url).status_code == 200
    assert len(many) == len(few)


def test_another_outbox_database(admin_user: User, rf_get: Any) -> None:
    html = rf_get(admin_user, "?database=nonsense").content.decode()
    assert "<strong>default</strong>" in html and '<a href="?database=other">other</a>' in html


@pytest.mark.django_db(databases=["default", "other"])
def test_the_other_outbox_database(admin_user: User, rf_get: Any) -> None:
    OutboxEvent.objects.using("other").bulk_create([event("pending", created=NOW)])
    assert health_figures(using="other", now=NOW).counts["pending"] == 1
    html = rf_get(admin_user, "?database=other").content.decode()
    assert "<strong>other</strong>" in html


# The chart geometry.


def test_chart_scales_each_panel_and_keeps_small_bars_visible() -> None:
    starts = [at(15, 0) + timedelta(hours=n) for n in range(4)]
    chart = charts.delivery_chart(
        list(zip(starts, [0, 5000, 10, 0], strict=True)),
        list(zip(starts, [0, 0, 3, 0], strict=True)),
        hourly=True,
    )
    delivered_panel, failed_panel = chart.panels
    assert [g.label for g in delivered_panel.gridlines] == ["0", "2,500", "5,000"]
    assert [g.label for g in failed_panel.gridlines] == ["0", "5"]
    small = delivered_panel.bars[1]
    assert float(small.height) >= charts.MIN_BAR
    assert small.title == "Sun 15 Mar, 02:00: 10 delivered"
    assert len(delivered_panel.bars) == 2 and len(failed_panel.bars) == 1
    assert chart.rows[1] == ("Sun 15 Mar, 01:00", 5000, 0)
    assert [label.text for label in chart.time_labels] == ["Sun 15"]
    assert "," not in delivered_panel.bars[0].x  # never a localized coordinate


@pytest.mark.parametrize(
    ("share", "text", "css"),
    [(0, "0 %", "capi-cov-0"), (0.004, "<1 %", "capi-cov-0"), (0.5, "50 %", "capi-cov-2"),
     (0.899, "89 %", "capi-cov-3"), (0.999, "99 %", "capi-cov-4"), (1, "100 %", "capi-cov-4")],
)  # fmt: skip
def test_share_cells(share: float, text: str, css: str) -> None:
    assert charts.share_cell(share) == (text, css)


def test_each_pixel_row_shows_its_own_alerts(
    known_data: None, admin_user: User, rf_get: Any
) -> None:
    AlertState.objects.bulk_create(
        [
            AlertState(
                kind="failure_rate",
                pixel_id="222",
                active=True,
                message="pixel 222: 40 % <failed>",
            ),
            AlertState(
                kind="backlog", pixel_id="666", active=True, message="pixel 666: waited 20 min"
            ),
            AlertState(kind="backlog", pixel_id="333", active=False),  # over
        ]
    )
    pixels = {p.pixel_id: p for p in health_figures(now=NOW).pixels}
    assert pixels["222"].alerts == ("pixel 222: 40 % <failed>",)
    assert pixels["666"].alerts == ("pixel 666: waited 20 min",)  # no rows, no state: listed
    assert pixels["333"].alerts == pixels["111"].alerts == ()
    order = [p.pixel_id for p in health_figures(now=NOW).pixels]
    assert order.index("222") < order.index("333")  # healthy but alerting: first of the healthy
    page = rf_get(admin_user).content.decode()
    assert "pixel 222: 40 % &lt;failed&gt;" in page
