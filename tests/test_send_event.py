"""``send_event``: events that are not model saves, recorded in the caller's transaction."""

import re
import uuid
from datetime import timedelta

import pytest
from django.db import transaction
from django.test import RequestFactory, override_settings
from django.utils import timezone

from django_capi import OutboxEvent, send_event
from django_capi.context import use_browser_context
from django_capi.delivery import drain

pytestmark = pytest.mark.django_db(transaction=True)

UA = "Mozilla/5.0 (X11; Linux x86_64) Test/1.0"


def shop_request():
    request = RequestFactory().get(
        "/product/7/?color=red",
        HTTP_USER_AGENT=UA,
        REMOTE_ADDR="203.0.113.5",
        HTTP_X_FORWARDED_FOR="6.6.6.6",
        HTTP_HOST="shop.example.com",
    )
    request.COOKIES.update(
        {"_fbp": "fb.1.1596403881668.1116446470", "_fbc": "fb.1.1554763741205.AbC"}
    )
    return request


def test_a_request_supplies_the_browser_context():
    row = send_event(
        "AddToCart",
        user_data={"em": "shopper@example.com"},
        custom_data={"content_ids": ["sku-7"], "value": 12, "currency": "USD"},
        request=shop_request(),
    )
    assert row.status == OutboxEvent.Status.PENDING
    user_data = row.payload["user_data"]
    assert user_data["client_ip_address"] == "203.0.113.5"  # never the spoofable header
    assert user_data["client_user_agent"] == UA
    assert user_data["fbp"] == "fb.1.1596403881668.1116446470"
    assert user_data["fbc"] == "fb.1.1554763741205.AbC"
    # The query string is dropped: shops and mail links put emails there.
    assert row.payload["event_source_url"] == "http://shop.example.com/product/7/"
    assert row.source is None


def test_a_fresh_event_id_when_none_is_given():
    first = send_event("Lead", user_data={"em": "a@b.co"}, action_source="system_generated")
    second = send_event("Lead", user_data={"em": "a@b.co"}, action_source="system_generated")
    assert first.pk != second.pk
    assert uuid.UUID(first.event_id) != uuid.UUID(second.event_id)


def test_the_same_event_id_returns_the_existing_row():
    kwargs = {"user_data": {"em": "a@b.co"}, "action_source": "phone_call", "event_id": "crm-9"}
    first = send_event("Lead", **kwargs)
    second = send_event("Lead", **{**kwargs, "user_data": {"em": "other@b.co"}})
    assert first.pk == second.pk
    assert OutboxEvent.objects.count() == 1


def test_it_joins_the_callers_transaction():
    with pytest.raises(ZeroDivisionError), transaction.atomic():
        send_event("Lead", user_data={"em": "a@b.co"}, action_source="chat")
        1 / 0  # noqa: B018
    assert not OutboxEvent.objects.exists()


def test_invalid_input_returns_a_failed_row_instead_of_raising():
    row = send_event("Purchase", user_data={"em": "a@b.co"}, request=shop_request())
    assert row.pk is not None
    assert row.status == OutboxEvent.Status.FAILED
    assert "Purchase needs custom_data value" in row.last_error


def test_an_unknown_user_data_key_is_named():
    row = send_event("Lead", user_data={"email": "a@b.co"}, action_source="chat")
    assert row.status == OutboxEvent.Status.FAILED
    assert row.last_error == "unknown user_data key 'email'"


def test_without_a_request_the_current_browser_context_is_used():
    context = {
        "client_user_agent": UA,
        "client_ip_address": "198.51.100.4",
        "event_source_url": "https://shop.example.com/cart/",
    }
    with use_browser_context(context):
        row = send_event("InitiateCheckout", user_data={"external_id": "user-1"})
    assert row.status == OutboxEvent.Status.PENDING
    assert row.payload["user_data"]["client_ip_address"] == "198.51.100.4"
    assert row.payload["event_source_url"] == "https://shop.example.com/cart/"


def test_an_unusable_name_or_id_is_a_failed_row_every_time_never_an_exception():
    first = send_event("X" * 60, event_id="a", user_data={"em": "a@b.co"})
    second = send_event("X" * 60, event_id="a", user_data={"em": "a@b.co"})
    assert first.pk != second.pk
    assert first.status == second.status == OutboxEvent.Status.FAILED
    assert "event_name is longer than 50 characters" in first.last_error
    long_id = send_event("Lead", event_id="i" * 101, user_data={"em": "a@b.co"})
    assert "event_id is longer than 100 characters" in long_id.last_error


@override_settings(ALLOWED_HOSTS=["shop.example.com"])
def test_a_forged_host_header_does_not_raise():
    request = RequestFactory().get("/", HTTP_HOST="evil.example", HTTP_USER_AGENT=UA)
    row = send_event("Lead", user_data={"em": "a@b.co"}, request=request)
    assert row.status == OutboxEvent.Status.FAILED
    assert "website event without event_source_url" in row.last_error


def test_a_nul_in_a_cookie_drops_that_key_and_the_event_goes():
    # Django decodes the octal escape of _fbp="fb.1.1700000000000.\000" into a NUL, which
    # PostgreSQL refuses: this raised DataError (a 500 on every page recording an event).
    request = RequestFactory().get(
        "/product/7/",
        HTTP_USER_AGENT=UA,
        HTTP_HOST="shop.example.com",
        HTTP_COOKIE='_fbp="fb.1.1700000000000.\\000"; _fbc=fb.1.1554763741205.AbC',
    )
    assert request.COOKIES["_fbp"] == "fb.1.1700000000000.\x00"
    row = send_event("ViewContent", user_data={"em": "a@b.co"}, request=request)
    row.refresh_from_db()
    assert row.status == OutboxEvent.Status.PENDING
    assert "fbp" not in row.payload["user_data"]
    assert row.payload["user_data"]["fbc"] == "fb.1.1554763741205.AbC"
    assert [warning.split(":")[0] for warning in row.warnings] == ["fbp"]


def test_unstorable_characters_anywhere_in_a_row_are_replaced_and_said():
    # The middleware cleans what a browser sends; an integrator's own values are cleaned here.
    row = send_event(
        "Lead",
        event_id="lead-\x00-1",
        user_data={"em": "a@b.co", "client_user_agent": "Mozilla/5.0 \udcff\x00"},
        custom_data={"content_name": "x\x00", "k\udcff": "v"},
        request=shop_request(),
    )
    row.refresh_from_db()
    assert row.status == OutboxEvent.Status.PENDING
    # With a suffix from the original id: "lead-\ud800-1" must not find this row.
    assert row.event_id == row.payload["event_id"]
    assert re.fullmatch("lead-\ufffd-1-[0-9a-f]{12}", row.event_id)
    assert row.payload["user_data"]["client_user_agent"] == "Mozilla/5.0 \ufffd\ufffd"
    assert row.payload["custom_data"] == {"content_name": "x\ufffd", "k\ufffd": "v"}
    assert len(row.warnings) == 4
    assert "the Pixel's event may not be deduplicated" in row.warnings[0]


def test_an_integer_event_id_such_as_an_order_number_is_accepted():
    row = send_event("Lead", event_id=1042, user_data={"em": "a@b.co"}, action_source="chat")
    assert (row.event_id, row.status) == ("1042", OutboxEvent.Status.PENDING)
    assert row.payload["event_id"] == "1042"


def test_an_unprintable_event_name_is_a_failed_row_not_an_exception():
    class Unprintable:
        def __str__(self):
            raise RuntimeError

    row = send_event(Unprintable(), user_data={"em": "a@b.co"}, action_source=Unprintable())
    assert row.status == OutboxEvent.Status.FAILED
    assert row.event_name == "(invalid)"
    assert "event_name must be a non-empty string" in row.last_error


def test_a_row_the_database_refuses_becomes_a_failed_row(monkeypatch):
    from django.db import DataError

    from django_capi import events

    original = events._insert_unless_recorded

    def refuse_pending(connection, values):
        if values["status"] == OutboxEvent.Status.PENDING:
            raise DataError("value too long")
        return original(connection, values)

    monkeypatch.setattr(events, "_insert_unless_recorded", refuse_pending)
    with transaction.atomic():
        row = send_event("Lead", user_data={"em": "a@b.co"}, action_source="chat")
    row.refresh_from_db()
    assert row.status == OutboxEvent.Status.FAILED
    assert row.last_error == (
        "the database refused the event (DataError); the traceback is in the log"
    )


def test_a_future_event_time_is_delivered_as_is_with_a_warning(capi_graph):
    tomorrow = int((timezone.now() + timedelta(days=1)).timestamp())
    row = send_event(
        "Lead", user_data={"em": "a@b.co"}, action_source="system_generated", event_time=tomorrow
    )
    assert row.status == OutboxEvent.Status.PENDING
    (warning,) = row.warnings
    assert "s in the future; Meta documents no limit, sent as is" in warning
    assert drain().delivered == 1
    (sent,) = capi_graph.requests[0].events
    assert sent["event_time"] == tomorrow
    row.refresh_from_db()
    assert row.status == OutboxEvent.Status.DELIVERED
