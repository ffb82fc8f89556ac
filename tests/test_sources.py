"""Every action source beyond the website: app, business messaging, offline and CRM events.

Each source delivers a valid event to the Graph emulator over real HTTP and fails an invalid
one with a reason that says what to fix: locally where Meta documents the rejection, and the
emulator refuses the same mistakes when a payload bypasses local validation.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.test import RequestFactory
from django.utils import timezone

from django_capi import ExtInfo, ModelEvent, OutboxEvent, register, send_event
from django_capi.delivery import drain
from django_capi.events import EventDraft, build_event
from django_capi.exceptions import EventValidationError
from django_capi.normalize import sha256_hex
from django_capi.sources import EXTINFO_NAMES, clean_extinfo
from django_capi.testing import rules
from tests.factories import OutboxEventFactory
from tests.shop.models import Order

Status = OutboxEvent.Status

#: Meta's own example of an Android device [APPD], by name.
ANDROID = ExtInfo(
    version="a2",
    package_name="com.example.shop",
    short_version=771,
    long_version="Version 7.7.1",
    os_version="10.1.1",
    device_model="OnePlus6",
    locale="en_US",
    timezone_abbreviation="GMT-1",
    carrier="TMobile",
    screen_width=1920,
    screen_height=2033,
    screen_density=2.0,
    cpu_cores=2,
    storage_size_gb=128,
    free_storage_gb=8,
    device_timezone="USA/New York",
)
ANDROID_LIST = [
    "a2",
    "com.example.shop",
    "771",
    "Version 7.7.1",
    "10.1.1",
    "OnePlus6",
    "en_US",
    "GMT-1",
    "TMobile",
    "1920",
    "2033",
    "2",
    "2",
    "128",
    "8",
    "USA/New York",
]
APP_DATA: dict[str, Any] = {
    "advertiser_tracking_enabled": True,
    "application_tracking_enabled": True,
    "extinfo": ANDROID,
}
MADID = "38400000-8cf0-11bd-b23e-10b96e40000d"


# --- ExtInfo ------------------------------------------------------------------------------


def test_extinfo_builds_metas_sixteen_strings_in_metas_order():
    assert ANDROID.as_list() == ANDROID_LIST


def test_extinfo_names_follow_metas_positions():
    # Positions of Meta's App Data Parameters page (and the SDK's ExtendedDeviceInfo).
    assert EXTINFO_NAMES == (
        "version",
        "package_name",
        "short_version",
        "long_version",
        "os_version",
        "device_model",
        "locale",
        "timezone_abbreviation",
        "carrier",
        "screen_width",
        "screen_height",
        "screen_density",
        "cpu_cores",
        "storage_size_gb",
        "free_storage_gb",
        "device_timezone",
    )


def test_extinfo_fills_what_is_unknown_with_empty_strings():
    values = ExtInfo(version="i2", os_version="17.4", screen_density=2.5).as_list()
    assert values == ["i2", "", "", "", "17.4", "", "", "", "", "", "", "2.5", "", "", "", ""]


@pytest.mark.parametrize(
    "extinfo",
    [
        pytest.param(ANDROID, id="ExtInfo"),
        pytest.param(ANDROID_LIST, id="metas-list"),
        pytest.param(tuple(ANDROID_LIST), id="tuple"),
        pytest.param({name: getattr(ANDROID, name) for name in EXTINFO_NAMES}, id="dict-of-names"),
        pytest.param(
            [*ANDROID_LIST[:9], 1920, 2033, 2.0, 2, 128, 8, ANDROID_LIST[15]], id="numbers"
        ),
    ],
)
def test_extinfo_is_taken_in_every_documented_shape(extinfo):
    problems: list[str] = []
    assert clean_extinfo(extinfo, problems) == ANDROID_LIST
    assert problems == []


@pytest.mark.parametrize(
    ("extinfo", "expected"),
    [
        (ANDROID_LIST[:15], "extinfo has 15 values; Meta requires all 16, in its order"),
        ([*ANDROID_LIST, ""], "extinfo has 17 values"),
        (["a3", *ANDROID_LIST[1:]], "version (position 0) must be 'a2' for Android or 'i2'"),
        ({"os_version": "14"}, "version (position 0) must be 'a2'"),
        ({"version": "a2"}, "OS version (position 4) is empty; Meta requires it"),
        ({"version": "a2", "os": "14"}, "extinfo has unknown names (os)"),
        (
            [*ANDROID_LIST[:5], ["OnePlus6"], *ANDROID_LIST[6:]],
            "extinfo device_model (position 5) is a list; Meta wants a string",
        ),
        ([*ANDROID_LIST[:9], float("nan"), *ANDROID_LIST[10:]], "not a usable number"),
        ("a2,com.example.shop", "extinfo must be Meta's list of 16 strings"),
    ],
)
def test_an_unusable_extinfo_says_what_to_fix(extinfo, expected):
    problems: list[str] = []
    assert clean_extinfo(extinfo, problems) is None
    assert any(expected in problem for problem in problems), problems


# --- building events ----------------------------------------------------------------------


def draft(**overrides: Any) -> EventDraft:
    fields: dict[str, Any] = {
        "event_name": "Purchase",
        "event_id": "evt-1",
        "action_source": "app",
        "user_data": {"madid": MADID, "anon_id": "install-42"},
        "custom_data": {"value": 4.99, "currency": "EUR"},
        "app_data": APP_DATA,
        **overrides,
    }
    return EventDraft(**fields)


def problems_of(**overrides: Any) -> str:
    with pytest.raises(EventValidationError) as caught:
        build_event(draft(**overrides))
    return str(caught.value)


def test_an_app_event_carries_app_data_and_unhashed_device_ids():
    built = build_event(draft())
    assert built.payload["app_data"] == {**APP_DATA, "extinfo": ANDROID_LIST}
    # anon_id and madid are sent as they are, never hashed [CIP], [PAR].
    assert built.payload["user_data"] == {"anon_id": "install-42", "madid": MADID}
    assert built.warnings == []


def test_app_data_flags_may_be_zero_or_one():
    app_data = {**APP_DATA, "advertiser_tracking_enabled": 0, "application_tracking_enabled": 1}
    built = build_event(draft(app_data=app_data))
    assert built.payload["app_data"]["advertiser_tracking_enabled"] is False
    assert built.payload["app_data"]["application_tracking_enabled"] is True


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"app_data": None}, "app event without app_data (Meta requires app_data"),
        ({"app_data": ["a2"]}, "app_data must be a dict"),
        (
            {"app_data": {"extinfo": ANDROID}},
            "app_data without advertiser_tracking_enabled (Meta requires it",
        ),
        (
            {"app_data": {"advertiser_tracking_enabled": True}},
            "app_data without extinfo (Meta requires its 16 device values",
        ),
        (
            {"app_data": {**APP_DATA, "advertiser_tracking_enabled": "yes"}},
            "advertiser_tracking_enabled must be True or False",
        ),
        ({"app_data": {**APP_DATA, "extinfo": ANDROID_LIST[:15]}}, "extinfo has 15 values"),
        ({"app_data": {**APP_DATA, "campaign_ids": {"id": 1}}}, "app_data['campaign_ids'] must"),
    ],
)
def test_an_invalid_app_event_says_what_to_fix(overrides, expected):
    assert expected in problems_of(**overrides)


def test_what_meta_would_take_in_app_data_is_sent_with_a_warning():
    app_data = {
        "advertiser_tracking_enabled": False,
        "extinfo": ANDROID,
        "install_referrer": "utm_source=meta",
        "url_schemes": ["shop"],
        "favourite_colour": "blue",
    }
    built = build_event(draft(app_data=app_data))
    assert built.payload["app_data"]["favourite_colour"] == "blue"
    assert built.payload["app_data"]["url_schemes"] == ["shop"]
    assert "application_tracking_enabled" not in built.payload["app_data"]
    assert any("without application_tracking_enabled" in w for w in built.warnings)
    assert any("app_data['favourite_colour'] is not a field Meta" in w for w in built.warnings)
    assert not any("install_referrer" in w for w in built.warnings)


def test_app_data_on_another_source_is_sent_with_a_warning():
    built = build_event(draft(action_source="other"))
    assert built.payload["app_data"]["extinfo"] == ANDROID_LIST
    assert any("app_data is for app events" in w for w in built.warnings)


def messaging(**overrides: Any) -> EventDraft:
    return draft(
        **{
            "action_source": "business_messaging",
            "app_data": None,
            "messaging_channel": "whatsapp",
            "user_data": {
                "whatsapp_business_account_id": 1029384756,
                "ctwa_clid": "ARAkLkA8rmlFeiCktEJQ",
            },
            **overrides,
        }
    )


def test_a_whatsapp_event_carries_its_channel_and_unhashed_ids():
    built = build_event(messaging(messaging_channel=" WhatsApp "))
    assert built.payload["messaging_channel"] == "whatsapp"
    assert built.payload["user_data"] == {
        "ctwa_clid": "ARAkLkA8rmlFeiCktEJQ",
        "whatsapp_business_account_id": "1029384756",
    }
    assert built.warnings == []


@pytest.mark.parametrize("channel", [None, ""])
def test_a_business_messaging_event_needs_its_channel(channel):
    with pytest.raises(EventValidationError) as caught:
        build_event(messaging(messaging_channel=channel))
    assert "business_messaging event without messaging_channel (Meta requires it)" in str(
        caught.value
    )


@pytest.mark.parametrize("channel", ["sms", 7])
def test_an_unknown_channel_names_metas_three(channel):
    with pytest.raises(EventValidationError) as caught:
        build_event(messaging(messaging_channel=channel))
    assert "messaging_channel must be one of 'whatsapp', 'messenger', 'instagram'" in str(
        caught.value
    )


def test_a_channel_without_its_ids_or_with_an_unlisted_event_is_sent_with_warnings():
    built = build_event(
        messaging(
            event_name="Subscribe",
            custom_data=None,
            messaging_channel="messenger",
            user_data={"page_id": "1234", "em": "a@b.co"},
        )
    )
    assert built.payload["messaging_channel"] == "messenger"
    assert any("messenger event without page_scoped_user_id" in w for w in built.warnings)
    assert any("'Subscribe' is not among the event names" in w for w in built.warnings)


def test_instagram_takes_either_name_of_its_business_account():
    user_data = {"ig_account_id": "17841400", "ig_sid": "5432"}
    built = build_event(messaging(messaging_channel="instagram", user_data=user_data))
    assert built.warnings == []
    built = build_event(messaging(messaging_channel="instagram", user_data={"ig_sid": "5432"}))
    (warning,) = built.warnings
    assert warning.startswith(
        "instagram event without instagram_business_account_id or ig_account_id in user_data"
    )


def test_a_channel_on_another_source_is_sent_with_a_warning():
    built = build_event(messaging(action_source="chat"))
    assert built.payload["messaging_channel"] == "whatsapp"
    assert any("messaging_channel is for business_messaging" in w for w in built.warnings)


def offline(**overrides: Any) -> EventDraft:
    return draft(
        **{
            "action_source": "physical_store",
            "app_data": None,
            "user_data": {"em": "shopper@example.com", "ph": "+1 650 555 1212"},
            **overrides,
        }
    )


def test_original_event_data_and_order_id_are_sent_as_meta_types_them():
    refund_of = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
    now = timezone.now()
    built = build_event(
        offline(
            event_time=now,
            custom_data={"value": 10, "currency": "EUR", "order_id": 1042},
            original_event_data={
                "event_name": "Purchase",
                "event_time": refund_of,
                "order_id": 1042,
                "event_id": "order-1042",
            },
        )
    )
    assert built.payload["custom_data"]["order_id"] == "1042"
    assert built.payload["original_event_data"] == {
        "event_name": "Purchase",
        "event_time": int(refund_of.timestamp()),
        "order_id": "1042",
        "event_id": "order-1042",
    }


@pytest.mark.parametrize("seconds", [1795000000.75, Decimal("1795000000.75")])
def test_original_event_time_takes_fractional_seconds_as_the_event_time_does(seconds):
    # time.time() is what many callers have at hand; Meta receives whole seconds.
    built = build_event(offline(original_event_data={"event_time": seconds}))
    assert built.payload["original_event_data"] == {"event_time": 1795000000}


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"original_event_data": ["Purchase"]}, "original_event_data must be a dict"),
        (
            {"original_event_data": {"event_time": "last week"}},
            "original_event_data['event_time'] must be a datetime or Unix seconds",
        ),
        (
            {"original_event_data": {"event_time": Decimal("sNaN")}},  # float() of it raises
            "original_event_data['event_time'] must be a datetime or Unix seconds",
        ),
        ({"original_event_data": {"order_id": ""}}, "['order_id'] must be a string"),
        (
            {"custom_data": {"value": 1, "currency": "EUR", "order_id": 1.5}},
            "custom_data order_id must be a non-empty string",
        ),
    ],
)
def test_unusable_original_event_data_says_what_to_fix(overrides, expected):
    with pytest.raises(EventValidationError) as caught:
        build_event(offline(**overrides))
    assert expected in str(caught.value)


def test_a_store_sale_may_be_62_days_old_and_no_older():
    built = build_event(offline(event_time=timezone.now() - timedelta(days=61)))
    assert built.payload["action_source"] == "physical_store"
    with pytest.raises(EventValidationError, match="more than 62 days old"):
        build_event(offline(event_time=timezone.now() - timedelta(days=63)))
    with pytest.raises(EventValidationError, match="more than 7 days old"):
        build_event(offline(action_source="phone_call", event_time=timezone.now() - timedelta(8)))


def test_a_crm_lead_stage_without_its_crm_names_is_sent_with_a_warning():
    crm = offline(
        event_name="Qualified Lead",
        action_source="system_generated",
        user_data={"lead_id": "525645896321548"},
        custom_data={"event_source": "crm"},
    )
    built = build_event(crm)
    assert built.payload["user_data"] == {"lead_id": 525645896321548}
    assert built.warnings == [
        (
            "CRM lead event without custom_data lead_event_source: Meta's Conversion Leads "
            "payload asks for event_source 'crm' and lead_event_source (your CRM's name)"
        )
    ]


# --- delivery over real HTTP, per action source -------------------------------------------

pytestmark_db = pytest.mark.django_db(transaction=True)
WEB_REQUEST = RequestFactory().get(
    "/checkout/done/", HTTP_USER_AGENT="Mozilla/5.0 Test", REMOTE_ADDR="203.0.113.7"
)
CUSTOMER = {"em": "shopper@example.com", "external_id": "customer-42"}
CRM_DATA = {"event_source": "crm", "lead_event_source": "Acme CRM"}

#: One valid event per action source: what send_event takes, and what Meta must receive.
VALID: dict[str, dict[str, Any]] = {
    "website": {"request": WEB_REQUEST, "user_data": CUSTOMER},
    "app": {"user_data": {"madid": MADID, "anon_id": "install-42"}, "app_data": APP_DATA},
    "business_messaging": {
        "messaging_channel": "instagram",
        "user_data": {"instagram_business_account_id": "17841400", "ig_sid": "5432"},
    },
    "physical_store": {
        "user_data": {**CUSTOMER, "ph": "+1 650 555 1212"},
        "event_time": timedelta(days=30),
        "custom_data": {"value": 25, "currency": "EUR", "order_id": 1042},
    },
    "phone_call": {"user_data": {"ph": "+44 20 7946 0958"}},
    "chat": {"user_data": CUSTOMER, "event_source_url": "support-chat"},
    "email": {"user_data": CUSTOMER},
    "system_generated": {
        "event_name": "Converted",
        "user_data": {"lead_id": 525645896321548},
        "custom_data": CRM_DATA,
    },
    "other": {
        "user_data": CUSTOMER,
        "original_event_data": {"event_name": "Purchase", "order_id": "1042"},
    },
}

#: One invalid event per action source, and the reason its failed row gives.
INVALID: dict[str, tuple[dict[str, Any], str]] = {
    "website": ({"user_data": CUSTOMER}, "website event without client_user_agent"),
    "app": (
        {"user_data": {"madid": MADID}, "app_data": {"advertiser_tracking_enabled": True}},
        "app_data without extinfo (Meta requires its 16 device values",
    ),
    "business_messaging": (
        {"user_data": {"page_id": "1234", "page_scoped_user_id": "5678"}},
        "business_messaging event without messaging_channel",
    ),
    "physical_store": (
        {"user_data": CUSTOMER, "event_time": timedelta(days=63)},
        "event_time is more than 62 days old",
    ),
    "phone_call": (
        {"user_data": CUSTOMER, "event_time": timedelta(days=8)},
        "event_time is more than 7 days old",
    ),
    "chat": (
        {"event_name": "Purchase", "user_data": CUSTOMER, "custom_data": {"value": 5}},
        "Purchase needs custom_data currency",
    ),
    "email": (
        {"user_data": {"ln": "Smith", "ge": "f"}},
        "user_data cannot be matched to a person",
    ),
    "system_generated": (
        {"user_data": {"lead_id": 1}, "original_event_data": {"event_time": "yesterday"}},
        "original_event_data['event_time'] must be a datetime or Unix seconds",
    ),
    "other": (
        {"user_data": CUSTOMER, "messaging_channel": "sms"},
        "messaging_channel must be one of",
    ),
}


def send(action_source: str, event_id: str, spec: Mapping[str, Any]) -> OutboxEvent:
    kwargs = {"event_name": "Lead", **spec}
    age = kwargs.pop("event_time", None)
    row = send_event(
        kwargs.pop("event_name"),
        action_source=action_source,
        event_id=event_id,
        event_time=None if age is None else timezone.now() - age,
        **kwargs,
    )
    assert row is not None
    return row


@pytestmark_db
@pytest.mark.parametrize("action_source", sorted(VALID))
def test_a_valid_event_of_each_source_reaches_meta(capi_graph, action_source):
    row = send(action_source, f"valid-{action_source}", VALID[action_source])
    assert row.status == Status.PENDING, row.last_error
    drain()
    row.refresh_from_db()
    assert row.status == Status.DELIVERED, row.last_error
    (received,) = capi_graph.received_events()
    assert received.data["action_source"] == action_source
    assert received.event_id == f"valid-{action_source}"
    if action_source == "app":
        assert received.data["app_data"]["extinfo"] == ANDROID_LIST
        assert received.data["user_data"]["madid"] == MADID
    if action_source == "business_messaging":
        assert received.data["messaging_channel"] == "instagram"
        assert received.data["user_data"]["ig_sid"] == "5432"
    if action_source == "physical_store":
        assert received.data["custom_data"]["order_id"] == "1042"
    if action_source == "system_generated":
        assert received.data["user_data"] == {"lead_id": 525645896321548}
        assert received.data["custom_data"] == CRM_DATA
    if action_source == "other":
        assert received.data["original_event_data"] == {
            "event_name": "Purchase",
            "order_id": "1042",
        }


@pytestmark_db
@pytest.mark.parametrize("action_source", sorted(INVALID))
def test_an_invalid_event_of_each_source_fails_with_what_to_fix(capi_graph, action_source):
    spec, reason = INVALID[action_source]
    row = send(action_source, f"invalid-{action_source}", spec)
    assert row.status == Status.FAILED
    assert row.failure_reason == OutboxEvent.FailureReason.INVALID
    assert reason in row.last_error
    drain()
    assert capi_graph.requests == []  # nothing Meta rejects leaves the machine


def test_every_action_source_has_a_valid_and_an_invalid_case():
    assert set(VALID) == set(INVALID) == set(rules.ACTION_SOURCES)


# --- the emulator refuses the same mistakes -----------------------------------------------


def app_payload(**app_data: Any) -> dict[str, Any]:
    return {
        "event_name": "Purchase",
        "event_time": int(timezone.now().timestamp()),
        "event_id": "evt-app",
        "action_source": "app",
        "user_data": {"madid": MADID},
        "custom_data": {"value": 1, "currency": "EUR"},
        "app_data": {"advertiser_tracking_enabled": True, "extinfo": ANDROID_LIST, **app_data},
    }


def test_the_emulator_accepts_what_build_event_sends():
    now = timezone.now().timestamp()
    for spec in (draft(), messaging(), offline(original_event_data={"order_id": "1"})):
        rules.validate_event(build_event(spec).payload, now)


@pytest.mark.parametrize(
    ("change", "subcode", "message"),
    [
        (
            lambda e: e["app_data"].pop("advertiser_tracking_enabled"),
            rules.MISSING_PARAMETER,
            "App events require app_data.advertiser_tracking_enabled.",
        ),
        (
            lambda e: e["app_data"].update(advertiser_tracking_enabled="yes"),
            rules.INVALID_PARAMETER,
            "app_data.advertiser_tracking_enabled must be a boolean",
        ),
        (
            lambda e: e["app_data"].update(extinfo=ANDROID_LIST[:15]),
            rules.INVALID_PARAMETER,
            "app_data.extinfo must list all 16 values",
        ),
        (
            lambda e: e["app_data"].update(extinfo=["x2", *ANDROID_LIST[1:]]),
            rules.INVALID_PARAMETER,
            "starting with 'a2' (Android) or 'i2' (iOS)",
        ),
        (
            lambda e: e["app_data"].update(extinfo=[*ANDROID_LIST[:4], "", *ANDROID_LIST[5:]]),
            rules.INVALID_PARAMETER,
            "app_data.extinfo[4] (OS version) is required.",
        ),
        (
            lambda e: e.update(action_source="business_messaging", app_data=None),
            rules.MISSING_PARAMETER,
            "Business messaging events require messaging_channel",
        ),
        (
            lambda e: e.update(messaging_channel="sms"),
            rules.INVALID_PARAMETER,
            "messaging_channel must be whatsapp, messenger or instagram.",
        ),
        (
            lambda e: e.update(messaging_channel={"name": "whatsapp"}),
            rules.INVALID_PARAMETER,
            "messaging_channel must be whatsapp, messenger or instagram.",
        ),
        (
            lambda e: e.update(original_event_data={"event_time": "2026-11-20"}),
            rules.INVALID_PARAMETER,
            "original_event_data.event_time must be Unix seconds",
        ),
    ],
)
def test_the_emulator_refuses_what_meta_documents(change, subcode, message):
    event = app_payload()
    change(event)
    if event.get("app_data") is None:
        event.pop("app_data", None)
    with pytest.raises(rules.Rejection) as caught:
        rules.validate_event(event, timezone.now().timestamp())
    assert caught.value.subcode == subcode
    assert message in caught.value.message


@pytestmark_db
def test_an_app_event_meta_refuses_over_http_fails_with_metas_reason(capi_graph):
    # A row stored by an older release, before local validation knew app_data.
    event = app_payload()
    del event["app_data"]["advertiser_tracking_enabled"]
    row = OutboxEventFactory(event_name="Purchase", action_source="app", payload=event)
    drain()
    row.refresh_from_db()
    assert row.status == Status.FAILED
    assert row.failure_reason == OutboxEvent.FailureReason.REJECTED
    assert "advertiser_tracking_enabled" in row.last_error
    assert capi_graph.received_events() == []


# --- ModelEvent hooks ---------------------------------------------------------------------


@pytestmark_db
def test_model_event_hooks_send_app_and_messaging_events(capi_graph, isolated_registry):
    @register(Order)
    class AppPurchase(ModelEvent[Order]):
        event_name = "AddToCart"
        action_source = "app"

        def user_data(self, instance: Order) -> Mapping[str, object]:
            return {"em": instance.email, "madid": MADID}

        def custom_data(self, instance: Order) -> Mapping[str, object]:
            return {"value": instance.total, "currency": instance.currency}

        def app_data(self, instance: Order) -> Mapping[str, object]:
            return {
                "advertiser_tracking_enabled": False,
                "application_tracking_enabled": True,
                "extinfo": ExtInfo(version="i2", os_version="17.4", device_model="iPhone15,2"),
            }

    @register(Order)
    class WhatsAppLead(ModelEvent[Order]):
        event_name = "LeadSubmitted"
        action_source = "business_messaging"

        def user_data(self, instance: Order) -> Mapping[str, object]:
            return {"whatsapp_business_account_id": "1029", "ctwa_clid": instance.phone}

        def messaging_channel(self, instance: Order) -> str:
            return "whatsapp"

        def original_event_data(self, instance: Order) -> Mapping[str, object]:
            return {"event_name": "Contact", "event_id": f"chat-{instance.pk}"}

    order = Order.objects.create(email="a@b.co", phone="ARAkLkA8rmlF", total=12, currency="EUR")
    rows = {row.event_name: row for row in OutboxEvent.objects.all()}
    assert {name: row.status for name, row in rows.items()} == {
        "AddToCart": Status.PENDING,
        "LeadSubmitted": Status.PENDING,
    }
    drain()
    received = {event.event_name: event.data for event in capi_graph.received_events()}
    assert received["AddToCart"]["app_data"] == {
        "advertiser_tracking_enabled": False,
        "application_tracking_enabled": True,
        "extinfo": ["i2", "", "", "", "17.4", "iPhone15,2", *[""] * 10],
    }
    assert received["AddToCart"]["user_data"]["em"] == sha256_hex("a@b.co")
    assert received["LeadSubmitted"]["messaging_channel"] == "whatsapp"
    assert received["LeadSubmitted"]["original_event_data"] == {
        "event_name": "Contact",
        "event_id": f"chat-{order.pk}",
    }


@pytestmark_db
def test_the_channel_may_be_a_class_attribute(isolated_registry):
    @register(Order)
    class MessengerLead(ModelEvent[Order]):
        event_name = "LeadSubmitted"
        action_source = "business_messaging"
        messaging_channel = "messenger"  # type: ignore[assignment]

        def user_data(self, instance: Order) -> Mapping[str, object]:
            return {"page_id": "1234", "page_scoped_user_id": str(instance.pk)}

    Order.objects.create(email="a@b.co", total=12)
    row = OutboxEvent.objects.get()
    assert row.status == Status.PENDING, row.last_error
    assert row.payload["messaging_channel"] == "messenger"
    assert row.warnings == []


@pytestmark_db
def test_an_app_data_hook_that_raises_fails_the_row_not_the_save(isolated_registry):
    @register(Order)
    class AppPurchase(ModelEvent[Order]):
        event_name = "AddToCart"
        action_source = "app"

        def user_data(self, instance: Order) -> Mapping[str, object]:
            return {"madid": MADID}

        def app_data(self, instance: Order) -> Mapping[str, object]:
            raise KeyError("device")

    Order.objects.create(email="a@b.co", total=12)
    row = OutboxEvent.objects.get()
    assert row.status == Status.FAILED
    assert "AppPurchase.app_data() raised KeyError" in row.last_error
