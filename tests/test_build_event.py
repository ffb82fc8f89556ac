"""Building one event: Meta's rules are checked before anything is stored."""

import hashlib
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from django_capi.events import NO_BROWSER_WARNING, EventDraft, build_event
from django_capi.exceptions import EventValidationError

UA = "Mozilla/5.0 (X11; Linux x86_64) Test/1.0"
URL = "https://shop.example.com/checkout/"
FBP = "fb.1.1596403881668.1116446470"  # [FBC]'s example
FBC = "fb.1.1554763741205.IwAR2F4-dbP0l7Mn1IawQQGCINEz7PYXQvwjNwB_qa2ofrHyiLjcbCRxTDMgk"


def draft(**overrides):
    values = {
        "event_name": "Purchase",
        "event_id": "order-1",
        "user_data": {"em": "John_Smith@gmail.com", "client_user_agent": UA},
        "custom_data": {"value": Decimal("19.99"), "currency": "eur"},
        "event_source_url": URL,
    }
    values.update(overrides)
    return EventDraft(**values)


def problems_of(**overrides) -> str:
    with pytest.raises(EventValidationError) as error:
        build_event(draft(**overrides))
    return str(error.value)


def test_a_valid_purchase_becomes_a_meta_ready_payload():
    built = build_event(draft())
    payload = built.payload
    assert payload["event_name"] == "Purchase"
    assert payload["event_id"] == "order-1"
    assert payload["action_source"] == "website"
    assert payload["event_source_url"] == URL
    assert payload["user_data"] == {
        "em": "62a14e44f765419d10fea99367361a727c12365e2520f32218d505ed9aa0f62f",
        "client_user_agent": UA,
    }
    assert payload["custom_data"] == {"value": 19.99, "currency": "EUR"}
    assert isinstance(payload["event_time"], int)
    assert abs(payload["event_time"] - timezone.now().timestamp()) < 5
    assert built.event_time == datetime.fromtimestamp(payload["event_time"], tz=UTC)
    json.dumps(payload)  # storable as-is


def test_whole_decimal_amounts_stay_integers():
    built = build_event(draft(custom_data={"value": Decimal("10.00"), "currency": "USD"}))
    assert built.payload["custom_data"]["value"] == 10
    assert isinstance(built.payload["custom_data"]["value"], int)


def test_nested_custom_data_is_converted_to_json():
    contents = ({"id": "sku-1", "quantity": 2, "item_price": Decimal("4.50")},)
    built = build_event(draft(custom_data={"value": 9, "currency": "EUR", "contents": contents}))
    assert built.payload["custom_data"]["contents"] == [
        {"id": "sku-1", "quantity": 2, "item_price": 4.5}
    ]


def test_event_time_accepts_datetimes_and_seconds():
    moment = timezone.now() - timedelta(hours=3)
    assert build_event(draft(event_time=moment)).payload["event_time"] == int(moment.timestamp())
    seconds = int(moment.timestamp())
    assert build_event(draft(event_time=seconds)).payload["event_time"] == seconds


def test_browser_context_fills_user_data_and_the_url_but_explicit_values_win():
    built = build_event(
        draft(
            event_source_url=None,
            user_data={"em": "a@b.co", "client_ip_address": "198.51.100.1"},
            browser={
                "client_ip_address": "203.0.113.9",
                "client_user_agent": UA,
                "fbp": "fb.1.1596403881668.1116446470",
                "event_source_url": "https://shop.example.com/p/1",
            },
        )
    )
    user_data = built.payload["user_data"]
    assert user_data["client_ip_address"] == "198.51.100.1"
    assert user_data["client_user_agent"] == UA
    assert user_data["fbp"] == "fb.1.1596403881668.1116446470"
    assert built.payload["event_source_url"] == "https://shop.example.com/p/1"


def test_dropped_values_become_warnings_not_failures():
    user_data = {"em": "a@b.co", "ph": "12", "client_user_agent": UA, "fbp": FBP}
    built = build_event(draft(user_data=user_data))
    assert "ph" not in built.payload["user_data"]
    assert len(built.warnings) == 1
    assert built.warnings[0].startswith("ph")


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"event_name": ""}, "event_name must be a non-empty string"),
        ({"event_name": "X" * 51}, "event_name is longer than 50 characters"),
        ({"event_id": ""}, "event_id must be a non-empty string"),
        ({"action_source": "web"}, "action_source must be one of website, email, app"),
        (
            {"user_data": {"em": "a@b.co"}},
            (
                "website event without client_user_agent: "
                "provide request_context or another action_source"
            ),
        ),
        ({"event_source_url": None}, "website event without event_source_url"),
        ({"event_source_url": "/checkout/"}, "event_source_url must be an absolute http(s) URL"),
        ({"custom_data": {"currency": "EUR"}}, "Purchase needs custom_data value"),
        ({"custom_data": {"value": 10}}, "Purchase needs custom_data currency"),
        ({"custom_data": {"value": -1, "currency": "EUR"}}, "value must not be negative"),
        ({"custom_data": {"value": "10", "currency": "EUR"}}, "value must be a number"),
        ({"custom_data": {"value": True, "currency": "EUR"}}, "value must be a number"),
        ({"custom_data": {"value": float("nan"), "currency": "EUR"}}, "is not a finite number"),
        ({"custom_data": {"value": Decimal("Infinity"), "currency": "EUR"}}, "not a finite"),
        ({"custom_data": {"value": 1, "currency": "EUX"}}, "currency must be an ISO 4217 code"),
        ({"custom_data": {"value": 1, "currency": 978}}, "currency must be an ISO 4217 code"),
        (
            {"custom_data": {"value": 1, "currency": "EUR", "at": datetime(2026, 1, 1)}},
            "custom_data['at'] is a datetime, which JSON cannot carry",
        ),
        ({"custom_data": ["value", 1]}, "custom_data must be a dict"),
        ({"event_time": 1_700_000_000_000}, "event_time looks like milliseconds"),
        ({"event_time": "yesterday"}, "event_time must be a datetime or Unix seconds"),
        ({"event_time": timezone.now() - timedelta(days=8)}, "more than 7 days old"),
        ({"event_time": timezone.now() + timedelta(minutes=10)}, "event_time is in the future"),
        ({"user_data": {"emial": "a@b.co"}}, "unknown user_data key 'emial'"),
        ({"user_data": ["em"]}, "user_data and request_context must be dicts"),
    ],
)
def test_each_rule_names_what_to_fix(overrides, expected):
    assert expected in problems_of(**overrides)


def test_every_problem_is_reported_at_once():
    message = problems_of(event_name="", custom_data={"value": -1, "currency": "XXY"})
    assert "event_name" in message
    assert "negative" in message
    assert "ISO 4217" in message


def test_value_rules_also_apply_to_other_events():
    assert "value must be a number" in problems_of(
        event_name="AddToCart", custom_data={"value": "cheap"}
    )
    built = build_event(draft(event_name="AddToCart", custom_data=None))
    assert "custom_data" not in built.payload


def test_physical_store_events_may_be_62_days_old():
    old = timezone.now() - timedelta(days=30)
    store = {"action_source": "physical_store", "event_source_url": None, "event_time": old}
    assert build_event(draft(**store)).payload["event_time"] == int(old.timestamp())
    too_old = {**store, "event_time": timezone.now() - timedelta(days=63)}
    assert "more than 62 days old" in problems_of(**too_old)


def test_a_small_clock_skew_into_the_future_is_tolerated():
    soon = timezone.now() + timedelta(seconds=30)
    assert build_event(draft(event_time=soon)).payload["event_time"] == int(soon.timestamp())


@pytest.mark.parametrize(
    "user_data",
    [
        {"client_user_agent": UA},
        {"ge": "f", "ct": "Paris", "st": "Île-de-France", "country": "FR", "client_user_agent": UA},
        {"db": "1997-02-16", "client_user_agent": UA},
        {"fn": "Mary", "ge": "f"},
        {"ln": "Smith", "ge": "m"},
        {},
    ],
)
def test_baseline_matching_rejects_weak_combinations(user_data):
    message = problems_of(action_source="email", event_source_url=None, user_data=user_data)
    assert "user_data cannot be matched to a person" in message


@pytest.mark.parametrize(
    "user_data",
    [
        {"em": "a@b.co"},
        {"client_user_agent": UA, "client_ip_address": "203.0.113.9"},
        {"fn": "Mary", "ln": "Smith", "ge": "f"},
        {"external_id": "customer-7"},
        {"fbp": "fb.1.1596403881668.1116446470", "client_user_agent": UA},
    ],
)
def test_baseline_matching_accepts_identifying_data(user_data):
    built = build_event(draft(action_source="email", event_source_url=None, user_data=user_data))
    assert built.payload["user_data"]


def test_problems_never_contain_the_raw_value():
    raw_email = "Secret.Person@@Example.com"
    message = problems_of(user_data={"em": raw_email, "fn": "Secretperson"}, event_name="")
    assert "secret" not in message.lower()


def test_hashes_match_an_independent_computation():
    built = build_event(draft(user_data={"em": "  Foo@Bar.COM ", "client_user_agent": UA}))
    assert built.payload["user_data"]["em"] == hashlib.sha256(b"foo@bar.com").hexdigest()


# --- a website event without the browser's ids ---------------------------------------------


@pytest.mark.parametrize(
    "browser",
    [
        {},  # a payment webhook, nothing stored at checkout
        {"client_user_agent": UA, "client_ip_address": "203.0.113.9"},  # only what was kept
    ],
)
def test_a_website_event_without_fbc_fbp_or_a_browser_context_is_warned(browser):
    built = build_event(draft(browser=browser))
    assert built.warnings == [NO_BROWSER_WARNING]
    assert "browser_context(request)" in built.warnings[0]
    assert "request_context" in built.warnings[0]


@pytest.mark.parametrize(
    ("action_source", "browser", "user_data"),
    [
        # browser_context() of a visitor without cookies: the mapping is right
        ("website", {"client_user_agent": UA, "event_source_url": URL}, {}),
        ("website", {"client_user_agent": UA, "fbp": FBP}, {}),
        ("website", {"client_user_agent": UA, "fbc": FBC}, {}),
        ("website", {}, {"client_user_agent": UA, "fbc": FBC}),
        ("system_generated", {}, {}),
    ],
)
def test_events_with_the_browsers_ids_or_its_context_are_not_warned(
    action_source, browser, user_data
):
    overrides = {"user_data": {"em": "a@b.co", **user_data}} if user_data else {}
    built = build_event(draft(action_source=action_source, browser=browser, **overrides))
    assert built.warnings == []
