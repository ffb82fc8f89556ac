"""Building one event: Meta's rules are checked before anything is stored."""

import hashlib
import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from django_capi import validation
from django_capi.events import NO_BROWSER_WARNING, EventDraft, build_event
from django_capi.exceptions import EventValidationError
from django_capi.testing import rules

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
        # What browser_context() records, so the missing-browser warning stays out of the way.
        "browser": {"event_source_url": URL},
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
                "website event without client_user_agent (Meta requires it for website "
                "events): provide request_context or another action_source"
            ),
        ),
        ({"event_source_url": None, "browser": {}}, "website event without event_source_url"),
        ({"event_source_url": "/checkout/"}, "event_source_url must be an absolute http(s) URL"),
        ({"custom_data": {"currency": "EUR"}}, "Purchase needs custom_data value"),
        ({"custom_data": {"value": 10}}, "Purchase needs custom_data currency"),
        ({"custom_data": {"value": "ten", "currency": "EUR"}}, "value must be a number"),
        ({"custom_data": {"value": "NaN", "currency": "EUR"}}, "value must be a number"),
        ({"custom_data": {"value": True, "currency": "EUR"}}, "value must be a number"),
        ({"custom_data": {"value": float("nan"), "currency": "EUR"}}, "is not a finite number"),
        ({"custom_data": {"value": Decimal("Infinity"), "currency": "EUR"}}, "not a finite"),
        ({"custom_data": {"value": 1, "currency": "EUX"}}, "currency must be an ISO 4217 code"),
        ({"custom_data": {"value": 1, "currency": 978}}, "currency must be an ISO 4217 code"),
        (
            {"custom_data": {"value": 1, "currency": "EUR", "at": {1, 2}}},
            "custom_data['at'] is a set, which JSON cannot carry",
        ),
        ({"custom_data": {"value": None, "currency": "EUR"}}, "Purchase needs custom_data value"),
        ({"action_source": "app"}, "app event without app_data (Meta requires app_data"),
        ({"custom_data": ["value", 1]}, "custom_data must be a dict"),
        ({"event_time": 1_700_000_000_000}, "event_time looks like milliseconds"),
        ({"event_time": "yesterday"}, "event_time must be a datetime or Unix seconds"),
        ({"event_time": timezone.now() - timedelta(days=30)}, "more than 7 days old"),
        ({"user_data": {"emial": "a@b.co"}}, "unknown user_data key 'emial'"),
        ({"user_data": ["em"]}, "user_data and request_context must be dicts"),
    ],
)
def test_each_rule_names_what_to_fix(overrides, expected):
    assert expected in problems_of(**overrides)


def test_every_problem_is_reported_at_once():
    message = problems_of(event_name="", custom_data={"value": "cheap", "currency": "XXY"})
    assert "event_name" in message
    assert "value must be a number" in message
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


# --- Meta decides: only what it documents that it rejects fails (meta-capi.md §10) --------


def test_a_negative_value_is_sent_with_a_warning():
    # Meta documents no sign rule for value [STD]; a refund may be negative.
    built = build_event(draft(custom_data={"value": -5, "currency": "EUR"}))
    assert built.payload["custom_data"]["value"] == -5
    assert built.warnings == ["custom_data value is negative; sent as it is"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [("142.52", 142.52), (" 10 ", 10), ("1e3", 1000), (Decimal("19.99"), 19.99), (7, 7)],
)
def test_numeric_strings_and_decimals_become_numbers(value, expected):
    # Meta's own fbc example sends "value": "142.52" [FBC].
    built = build_event(draft(custom_data={"value": value, "currency": "EUR"}))
    assert built.payload["custom_data"]["value"] == expected
    assert type(built.payload["custom_data"]["value"]) is type(expected)
    assert built.warnings == []


def test_none_values_are_left_out_with_a_warning_except_what_a_purchase_requires():
    built = build_event(
        draft(event_name="AddToCart", custom_data={"value": None, "content_name": "x"})
    )
    assert built.payload["custom_data"] == {"content_name": "x"}
    assert built.warnings == ["custom_data['value'] is None; dropped"]
    # Meta: value and currency are "Required for purchase events" [STD], [PXREF].
    assert "Purchase needs custom_data value" in problems_of(
        custom_data={"value": None, "currency": "EUR"}
    )


def test_dates_uuids_decimals_and_lazy_strings_convert_as_djangos_json_encoder_does():
    from django.core.serializers.json import DjangoJSONEncoder
    from django.utils.translation import gettext_lazy

    moment = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
    values = {
        "at": moment,
        "on": moment.date(),
        "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
        "label": gettext_lazy("Purchase"),
    }
    built = build_event(draft(custom_data={"value": 1, "currency": "EUR", **values}))
    expected = json.loads(json.dumps(values, cls=DjangoJSONEncoder))
    assert {key: built.payload["custom_data"][key] for key in values} == expected
    json.dumps(built.payload)


def test_a_future_decimal_event_time_is_sent_with_a_warning():
    ahead = Decimal(int(timezone.now().timestamp()) + 3600)
    built = build_event(draft(event_time=ahead))
    assert built.payload["event_time"] == int(ahead)
    assert "in the future" in built.warnings[0]


def test_a_little_clock_skew_is_sent_without_a_word():
    soon = timezone.now() + timedelta(seconds=240)
    built = build_event(draft(event_time=soon))
    assert built.payload["event_time"] == int(soon.timestamp())
    assert built.warnings == []


@pytest.mark.parametrize(
    "ahead",
    [timezone.now() + timedelta(days=1), datetime(4000, 1, 1)],
    ids=["a-day", "year-4000"],
)
def test_a_future_event_time_is_sent_as_is_with_a_warning(ahead):
    # Meta documents no limit for the future (meta-capi.md §2): Meta decides, the row says why.
    built = build_event(draft(event_time=ahead))
    expected = int((timezone.make_aware(ahead) if timezone.is_naive(ahead) else ahead).timestamp())
    assert built.payload["event_time"] == expected
    (warning,) = built.warnings
    assert warning.startswith("event_time is ")
    assert "s in the future; Meta documents no limit, sent as is" in warning
    assert "server clock" in warning


def test_unsafe_characters_of_a_url_are_percent_encoded():
    built = build_event(
        draft(
            event_source_url='https://shop.example.com/a b/ü?q="x"',
            browser={"referrer_url": "https://ref.example/x y"},
        )
    )
    assert built.payload["event_source_url"] == "https://shop.example.com/a%20b/%C3%BC?q=%22x%22"
    assert built.payload["referrer_url"] == "https://ref.example/x%20y"


def test_only_website_events_need_an_http_url():
    # [SEP]: the browser's address is required for website events; other events may carry
    # any source they have.
    built = build_event(
        draft(action_source="chat", event_source_url="whatsapp-chat", user_data={"em": "a@b.co"})
    )
    assert built.payload["event_source_url"] == "whatsapp-chat"
    assert "absolute http(s) URL" in problems_of(event_source_url="whatsapp-chat")


def test_business_messaging_keys_of_metas_examples_are_known():
    # [BMSG], meta-capi.md §3 and §10.
    user_data = {
        "whatsapp_business_account_id": "1029384756",
        "instagram_business_account_id": "5647382910",
        "page_id": "1234",
        "page_scoped_user_id": "5678",
        "ctwa_clid": "ARAkLkA8rmlFeiCktEJQ",
        "ig_account_id": "9876",
        "ig_sid": "5432",
        "em": "a@b.co",
    }
    built = build_event(
        draft(
            action_source="business_messaging",
            messaging_channel="whatsapp",
            event_source_url=None,
            user_data=user_data,
        )
    )
    assert set(built.payload["user_data"]) == set(user_data)


def test_a_malformed_fbp_cookie_is_dropped_and_the_event_goes():
    built = build_event(
        draft(browser={"fbp": "fb.1.1700000000.123", "fbc": "fb.1.1554763741205.AbC"})
    )
    assert "fbp" not in built.payload["user_data"]
    assert built.payload["user_data"]["fbc"] == "fb.1.1554763741205.AbC"
    assert [warning.split(":")[0] for warning in built.warnings] == ["fbp"]


class Unprintable:
    def __str__(self):
        raise RuntimeError("no")


def cyclic():
    data: dict = {"value": 1, "currency": "EUR"}
    data["self"] = data
    return data


def deep():
    data: dict = {"value": 1, "currency": "EUR"}
    level = data
    for _ in range(3000):
        level["next"] = {}
        level = level["next"]
    return data


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"event_time": 10**5000}, "event_time is not a Unix time"),
        ({"event_time": -(10**5000)}, "event_time is more than 7 days old"),
        ({"event_time": datetime.max}, "event_time is a datetime after the year 5000"),
        ({"event_time": Decimal("NaN")}, "event_time must be a datetime or Unix seconds"),
        ({"custom_data": {"value": 10**5000, "currency": "EUR"}}, "is a number too large"),
        ({"custom_data": {"value": Decimal("1e99999"), "currency": "EUR"}}, "too large"),
        ({"custom_data": {"value": Decimal("sNaN"), "currency": "EUR"}}, "not a finite number"),
        ({"custom_data": cyclic()}, "custom_data['self'] contains itself"),
        ({"custom_data": deep()}, "is nested more than 20 levels deep"),
        ({"phone_region": "ZZ"}, "phone_region must be a country code such as 'US'"),
        ({"phone_region": 44}, "phone_region must be a country code such as 'US'"),
        ({"event_source_url": "http://["}, "event_source_url must be an absolute http(s) URL"),
        ({"limited_data_use": {"country": 10**5000, "state": 0}}, "limited_data_use must be"),
        ({"custom_data": {"value": 1, "currency": Unprintable()}}, "is a Unprintable"),
    ],
)
def test_hostile_values_fail_with_a_reason_a_person_understands(overrides, expected):
    # Each of these raised an unexpected exception ("unexpected …; see the log") or
    # produced a row no database could store.
    assert expected in problems_of(**overrides)


def test_integers_too_long_to_print_in_user_data_are_dropped_with_a_warning():
    built = build_event(
        draft(user_data={"em": "a@b.co", "client_user_agent": UA, "lead_id": 10**5000})
    )
    assert "lead_id" not in built.payload["user_data"]
    assert built.warnings == ["lead_id: value is an integer of more than 4,300 digits; dropped"]


def test_what_was_dropped_travels_with_the_failure():
    with pytest.raises(EventValidationError) as error:
        build_event(draft(user_data={"em": "not an email", "client_user_agent": UA}))
    assert "cannot be matched" in str(error.value)
    assert [warning.split(":")[0] for warning in error.value.warnings] == ["em"]


def test_the_currencies_taken_are_the_ones_the_emulator_takes():
    # A code the emulator refuses stayed pending ("XXX", which ISO 4217 lists: Meta asks for
    # "a valid ISO 4217 three-letter code" [STD]); one it takes must not fail locally.
    payload = build_event(draft()).payload
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    disagreements = []
    for code in (a + b + c for a in letters for b in letters for c in letters):
        custom_data = {"value": 1, "currency": code}
        try:
            rules.validate_event({**payload, "custom_data": custom_data}, time.time())
            emulator = True
        except rules.Rejection:
            emulator = False
        try:
            validation.clean_custom_data(custom_data, "Purchase")
            ours = True
        except EventValidationError:
            ours = False
        if ours != emulator:
            disagreements.append(code)
    assert disagreements == []


def test_a_huge_user_agent_or_page_url_is_cut_with_a_warning():
    from django_capi.text import MAX_BROWSER_VALUE_LENGTH as LIMIT

    agent = "Mozilla/5.0 " + "x" * 100_000
    page = URL + "é" * 50_000  # percent-encoded: 6 characters each
    built = build_event(
        draft(user_data={"em": "a@b.co", "client_user_agent": agent}, event_source_url=page)
    )
    assert built.payload["user_data"]["client_user_agent"] == agent[:LIMIT]
    sent_url = built.payload["event_source_url"]
    assert sent_url.startswith(URL + "%C3%A9") and sent_url.endswith("%C3%A9")
    assert LIMIT - 6 < len(sent_url) <= LIMIT
    assert sum("longer than" in warning for warning in built.warnings) == 2
    # A real browser's values, however long for a user agent, are kept whole.
    long_agent = "Mozilla/5.0 " + "(extension; 1.0) " * 400 + "End/1"  # 6,817 characters
    built = build_event(draft(user_data={"em": "a@b.co", "client_user_agent": long_agent}))
    assert built.payload["user_data"]["client_user_agent"] == long_agent
    assert not [warning for warning in built.warnings if "longer than" in warning]


def test_a_cut_url_never_ends_inside_a_character_after_a_legacy_escape():
    """The cut looks for the last character's first byte: a Latin-1 escape (%E9) before a
    euro sign cut in two must not hide the cut."""
    from urllib.parse import unquote_to_bytes

    limit = validation.MAX_BROWSER_VALUE_LENGTH
    head = "https://x.example/?q="
    url = head + "a" * (limit - len(head) - 9) + "%E9" + "€€"
    warnings: list[str] = []
    cut = validation.clean_event_source_url(url, "website", [], warnings)
    # The first euro sign's %E2%82 ended the first 8,192 characters: both go, %E9 stays.
    assert cut == head + "a" * (limit - len(head) - 9) + "%E9"
    assert len(warnings) == 1
    # A character whole at the cut stays whole.
    ends_whole = head + "a" * (limit - len(head) - 12) + "%E9" + "€€"
    whole = validation.clean_event_source_url(ends_whole, "website", [], [])
    assert whole.endswith("%E9%E2%82%AC")
    assert unquote_to_bytes(whole[-9:]).decode("utf-8") == "€"
