"""The outbox admin: status at a glance, Meta's answer, and replay for those allowed to."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission, User
from django.urls import reverse
from django.utils import timezone

from django_capi.models import AttemptEvent, DeliveryAttempt, OutboxEvent
from tests.factories import OrderFactory, OutboxEventFactory

pytestmark = pytest.mark.django_db(transaction=True)

CHANGELIST = "admin:django_capi_outboxevent_changelist"


def staff(*permissions: str) -> User:
    user = User.objects.create_user("-".join(permissions), password="x", is_staff=True)
    for codename in permissions:
        user.user_permissions.add(Permission.objects.get(codename=codename))
    return user


@pytest.fixture
def viewer(client):
    client.force_login(staff("view_outboxevent"))
    return client


@pytest.fixture
def operator(client):
    client.force_login(staff("view_outboxevent", "replay_outboxevent"))
    return client


def test_the_changelist_shows_status_error_and_source(viewer):
    order = OrderFactory(status="paid")
    row = OutboxEvent.objects.get()
    OutboxEvent.objects.filter(pk=row.pk).update(
        status="failed", last_error="Meta HTTP 400 code 100 Event Timestamp Too Old: too old"
    )
    html = viewer.get(reverse(CHANGELIST)).content.decode()
    assert "Purchase" in html
    assert "background:#b00020" in html  # the failed badge
    assert "Meta HTTP 400 code 100 Event Timestamp Too Old" in html
    assert f"shop.order {order.pk}" in html


def test_search_is_exact_on_event_id_and_source_id(viewer):
    rows = OutboxEventFactory.create_batch(3)
    response = viewer.get(reverse(CHANGELIST), {"q": rows[1].event_id})
    assert [row.pk for row in response.context["cl"].result_list] == [rows[1].pk]
    response = viewer.get(reverse(CHANGELIST), {"q": rows[1].event_id[:-1]})
    assert list(response.context["cl"].result_list) == []


def test_filters_and_date_hierarchy_work(viewer):
    failed = OutboxEventFactory.create_batch(2)[0]
    OutboxEvent.objects.filter(pk=failed.pk).update(status="failed")
    response = viewer.get(reverse(CHANGELIST), {"status__exact": "failed"})
    assert [row.event_id for row in response.context["cl"].result_list] == [failed.event_id]
    assert response.context["cl"].date_hierarchy == "created_at"


def test_the_detail_shows_the_payload_and_attempts_and_cannot_edit(viewer):
    row = OutboxEventFactory.create()
    attempt = DeliveryAttempt.objects.create(
        outcome="retry",
        batch_size=1,
        http_status=503,
        error_message="<script>x</script>",
        duration_ms=12,
    )
    AttemptEvent.objects.create(attempt=attempt, event=row, outcome="retry")
    url = reverse("admin:django_capi_outboxevent_change", args=[row.pk])
    html = viewer.get(url).content.decode()
    assert f"&quot;event_id&quot;: &quot;{row.event_id}&quot;" in html  # pretty-printed, escaped
    assert "&lt;script&gt;x&lt;/script&gt;" in html
    assert "<script>x</script>" not in html
    assert 'name="_save"' not in html
    response = viewer.post(url, {"event_name": "Edited"})
    assert response.status_code == 403
    assert OutboxEvent.objects.get().event_name == "Lead"


def test_the_attempt_history_shows_metas_messages_escaped(viewer):
    row = OutboxEventFactory.create()
    attempt = DeliveryAttempt.objects.create(
        outcome="delivered",
        batch_size=1,
        http_status=200,
        events_received=1,
        messages=["fbc was <b>modified</b>", "low match quality"],
        duration_ms=12,
    )
    OutboxEvent.objects.filter(pk=row.pk).update(last_attempt=attempt)
    url = reverse("admin:django_capi_outboxevent_change", args=[row.pk])
    html = viewer.get(url).content.decode()
    assert "<li>fbc was &lt;b&gt;modified&lt;/b&gt;</li><li>low match quality</li>" in html
    assert "<b>modified</b>" not in html


def test_actions_need_the_replay_permission(client):
    OutboxEventFactory.create()
    client.force_login(staff("view_outboxevent"))
    assert client.get(reverse(CHANGELIST)).context["action_form"] is None  # no actions at all
    client.force_login(staff("view_outboxevent", "replay_outboxevent"))
    choices = client.get(reverse(CHANGELIST)).context["action_form"].fields["action"].choices
    assert {"replay", "send_now", "cancel"} <= {name for name, _ in choices}


def test_replay_from_the_admin_reports_what_it_did(operator):
    rows = OutboxEventFactory.create_batch(2)
    old = OutboxEventFactory.create_batch(1, age=timedelta(days=9))
    OutboxEvent.objects.update(status="failed")
    response = operator.post(
        reverse(CHANGELIST),
        {"action": "replay", "_selected_action": [r.pk for r in rows + old]},
        follow=True,
    )
    text = " ".join(str(m) for m in response.context["messages"])
    assert "2 replayed" in text
    assert "1 refused: older than Meta accepts" in text
    assert OutboxEvent.objects.filter(status="pending").count() == 2


def test_cancel_from_the_admin(operator):
    rows = OutboxEventFactory.create_batch(2)
    operator.post(reverse(CHANGELIST), {"action": "cancel", "_selected_action": [rows[0].pk]})
    assert OutboxEvent.objects.get(pk=rows[0].pk).status == "cancelled"


def test_send_now_from_the_admin(operator, capi_graph):
    rows = OutboxEventFactory.create_batch(2)
    response = operator.post(
        reverse(CHANGELIST),
        {"action": "send_now", "_selected_action": [rows[0].pk]},
        follow=True,
    )
    text = " ".join(str(m) for m in response.context["messages"])
    assert "Sent now: claimed 1, delivered 1" in text
    assert capi_graph.event_ids() == [rows[0].event_id]


@pytest.mark.parametrize("count", [10, 120])
def test_the_changelist_query_count_does_not_grow_with_rows(
    viewer, count, django_assert_max_num_queries
):
    OrderFactory.create_batch(count, status="paid")
    with django_assert_max_num_queries(12):
        response = viewer.get(reverse(CHANGELIST))
    assert response.status_code == 200


def test_no_full_count_is_made(viewer, django_assert_max_num_queries):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    OutboxEventFactory.create_batch(5)
    with CaptureQueriesContext(connection) as captured:
        viewer.get(reverse(CHANGELIST))
    counts = [q["sql"] for q in captured.captured_queries if "COUNT(" in q["sql"].upper()]
    assert counts, "the page must count something"
    assert all("LIMIT" in sql.upper() for sql in counts), counts


def test_the_health_dashboard_is_linked_from_the_app_index_and_the_changelist(viewer):
    health = reverse("admin:django_capi_outboxevent_health")
    assert health in viewer.get(reverse("admin:app_list", args=["django_capi"])).content.decode()
    assert health in viewer.get(reverse(CHANGELIST)).content.decode()
    assert viewer.get(health).status_code == 200


def test_a_viewer_cannot_run_an_action_by_posting_it(viewer):
    OutboxEventFactory.create()
    OutboxEvent.objects.update(status="failed")
    response = viewer.post(
        reverse(CHANGELIST),
        {"action": "replay", "_selected_action": [OutboxEvent.objects.get().pk]},
    )
    assert response.status_code in (200, 302, 403)
    assert OutboxEvent.objects.get().status == "failed"


def test_nobody_deletes_rows_from_the_admin(client):
    client.force_login(User.objects.create_superuser("root", password="x"))
    row = OutboxEventFactory.create()
    actions = client.get(reverse(CHANGELIST)).context["action_form"].fields["action"].choices
    assert "delete_selected" not in {name for name, _ in actions}
    url = reverse("admin:django_capi_outboxevent_delete", args=[row.pk])
    assert client.post(url, {"post": "yes"}).status_code == 403
    assert OutboxEvent.objects.filter(pk=row.pk).exists()


def test_select_all_beyond_the_counted_rows_is_refused(operator, monkeypatch):
    from django_capi.admin import CappedPaginator

    monkeypatch.setattr(CappedPaginator, "cap", 2)
    OutboxEventFactory.create_batch(3)
    OutboxEvent.objects.update(status="failed")
    response = operator.post(
        reverse(CHANGELIST),
        {"action": "cancel", "select_across": "1", "_selected_action": [1]},
        follow=True,
    )
    text = " ".join(str(m) for m in response.context["messages"])
    assert "More than 2 events are selected" in text
    assert not OutboxEvent.objects.filter(status="cancelled").exists()


def test_search_matches_ids_exactly_with_their_case(viewer):
    rows = OutboxEventFactory.create_batch(1, event_id="CaseSensitive-0")
    found = viewer.get(reverse(CHANGELIST), {"q": rows[0].event_id}).context["cl"].result_list
    assert [row.pk for row in found] == [rows[0].pk]
    upper = viewer.get(reverse(CHANGELIST), {"q": rows[0].event_id.upper()})
    assert list(upper.context["cl"].result_list) == []


def test_filter_choices_come_from_declarations_not_from_the_table(viewer):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    OutboxEventFactory.create_batch(2)
    with CaptureQueriesContext(connection) as captured:
        viewer.get(reverse(CHANGELIST))
    assert not any(
        "DISTINCT" in q["sql"].upper() and "EVENT_NAME" in q["sql"].upper()
        for q in captured.captured_queries
    )
    html = viewer.get(reverse(CHANGELIST)).content.decode()
    assert "?event_name=Purchase" in html
    assert "?pixel_id=1234567890" in html


def test_the_date_hierarchy_needs_no_distinct_over_the_table(viewer):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    OutboxEventFactory.create_batch(3)
    year = timezone.now().year
    pages = [{}, {"created_at__year": year}, {"created_at__year": year, "created_at__month": 2}]
    for params in pages:
        with CaptureQueriesContext(connection) as captured:
            html = viewer.get(reverse(CHANGELIST), params).content.decode()
        assert not any("DISTINCT" in q["sql"].upper() for q in captured.captured_queries)
        assert 'class="xfull"' in html or "date-hierarchy" in html or "toplinks" in html
    february = viewer.get(reverse(CHANGELIST), pages[2]).content.decode()
    assert "created_at__day=29" in february or "created_at__day=28" in february
    assert f"?created_at__year={year}" in viewer.get(reverse(CHANGELIST)).content.decode()


# --- No query string makes the changelist fail ---------------------------------------------

#: Found on the filter and search row: these find nothing, on a normal page.
NOTHING_MATCHES = [
    {"pixel_id": "\x00"},
    {"event_name": "\x00"},
    {"event_name": "Purchase\x00"},
    {"pixel_id": "1" * 100_000},
    {"event_name": "x" * 100_000},
    {"q": "e" * 100_000},
]
#: Anything else a URL can carry: Django's "incorrect lookup parameters" page (?e=1).
REFUSED = [
    {"status__exact": "\x00"},
    {"action_source__exact": "\x00"},
    {"failure_reason__exact": "\x00"},
    {"status": "\x00"},
    {"event_id": "\x00"},
    {"payload__has_key": "\x00"},
    # Not offered: each would parse every payload of the outbox (PostgreSQL keeps json).
    {"payload__has_key": "event_name"},
    {"payload__user_data__has_key": "em"},
    {"payload__event_name": "Purchase"},
    {"payload": "{}"},
    {"created_at__gte": "\x00"},
    {"event_id__regex": "("},
    {"created_at__year": "9999"},
    {"created_at__year": "9999", "created_at__month": "12"},
    {"created_at__year": "2026", "created_at__month": "13"},
    {"created_at__year": "9" * 5000},
    {"created_at__year": "x"},
    {"attempts": "abc"},
]


@pytest.mark.parametrize("params", NOTHING_MATCHES)
def test_a_value_no_row_can_hold_finds_nothing(viewer, params):
    OutboxEventFactory.create_batch(2)
    response = viewer.get(reverse(CHANGELIST), params)
    assert response.status_code == 200
    assert list(response.context["cl"].result_list) == []


@pytest.mark.parametrize("params", REFUSED)
def test_other_unusable_parameters_get_the_admins_error_page(viewer, params):
    OutboxEventFactory.create_batch(2)
    response = viewer.get(reverse(CHANGELIST), params)
    assert response.status_code == 302
    assert response["Location"].endswith("?e=1")
    assert viewer.get(response["Location"]).status_code == 200


@pytest.mark.parametrize(
    "params",
    [{"p": "\x00"}, {"o": "\x00"}, {"e": "\x00"}, {"q": "ev-0\x00"}, {"attempts": "9" * 40}],
)
def test_parameters_django_checks_itself_still_show_the_page(viewer, params):
    OutboxEventFactory.create_batch(2)
    assert viewer.get(reverse(CHANGELIST), params).status_code == 200


def test_a_failed_row_shows_no_next_attempt_in_the_list_or_its_page(viewer):
    failed = OutboxEventFactory(failed=True, next_attempt_at=timezone.now() + timedelta(days=3))
    pending = OutboxEventFactory(backing_off=True)
    response = viewer.get(reverse(CHANGELIST))
    model_admin = response.context["cl"].model_admin
    assert model_admin.next_attempt(failed) == "-"
    assert model_admin.next_attempt(pending) == pending.next_attempt_at
    cells = re.findall(r'<td class="field-next_attempt[^"]*">(.*?)</td>', response.content.decode())
    assert len(cells) == 2
    assert sorted(cell == "-" for cell in cells) == [False, True]  # the failed row's is blank
    assert str(pending.next_attempt_at.year) in next(cell for cell in cells if cell != "-")

    page = viewer.get(reverse("admin:django_capi_outboxevent_change", args=[failed.pk]))
    field = re.search(
        r'field-next_attempt.*?<div class="readonly">(.*?)</div>',
        page.content.decode(),
        re.DOTALL,
    )
    assert field is not None
    assert field.group(1).strip() == "-"


def test_a_row_in_flight_shows_its_lease_instead_of_the_time_it_became_due(viewer):
    due = timezone.now() - timedelta(hours=2)
    sending = OutboxEventFactory(leased=True, next_attempt_at=due)
    lapsed = OutboxEventFactory(
        leased=True, next_attempt_at=due, leased_until=timezone.now() - timedelta(minutes=1)
    )
    response = viewer.get(reverse(CHANGELIST))
    model_admin = response.context["cl"].model_admin
    shown = model_admin.next_attempt(sending)
    assert shown.startswith("in flight until ")
    assert str(sending.leased_until.year) in shown
    # A lease that lapsed holds nothing: the row waits for a worker again.
    assert model_admin.next_attempt(lapsed) == due
    cells = re.findall(r'<td class="field-next_attempt[^"]*">(.*?)</td>', response.content.decode())
    assert sum(cell.startswith("in flight until") for cell in cells) == 1

    page = viewer.get(reverse("admin:django_capi_outboxevent_change", args=[sending.pk]))
    field = re.search(
        r'field-next_attempt.*?<div class="readonly">(.*?)</div>', page.content.decode(), re.DOTALL
    )
    assert field is not None
    assert field.group(1).strip().startswith("in flight until")
