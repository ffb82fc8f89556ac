"""Hypothesis fuzzing of the three places that take arbitrary input: normalization of
customer data, the building of a payload from a draft, and the parsing of Graph's answers.

Bounded (``max_examples``) so that it stays a few seconds per property in ``make test``.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from requests.structures import CaseInsensitiveDict

from django_capi.client import GraphResult, parse_response
from django_capi.events import BuiltEvent, EventDraft, build_event
from django_capi.exceptions import CapiError, EventValidationError, UnknownUserDataKey
from django_capi.normalize import HASHED_KEYS, PLAIN_KEYS, normalize_user_data
from django_capi.text import is_storable

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
HEX64 = re.compile(r"[0-9a-f]{64}")
KNOWN_KEYS = sorted(HASHED_KEYS | PLAIN_KEYS)

# Text as browsers and integrators send it: control characters, NUL, lone surrogates,
# RTL and zero-width marks, every script.
any_char = st.characters(blacklist_categories=())
hostile_text = st.one_of(
    st.text(any_char, max_size=40),
    st.sampled_from(
        [
            "\x00",
            "\ud800",
            "\u202e\u200b",
            "a@b.co",
            "+1 425 123 4567",
            "fb.1.1700000000000.abc",
            "' OR 1=1 --",
            "<script>",
            "²",
            "",
        ]
    ),
)
#: The kinds shops send in custom_data (custom_data's fast copy takes these), then the
#: kinds only the converter handles.
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.decimals(allow_nan=True, allow_infinity=True),
    hostile_text,
)
scalars = st.one_of(json_scalars, st.datetimes(timezones=st.sampled_from([UTC, None])), st.dates())


def nested(leaves: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.recursive(
        leaves,
        lambda children: st.one_of(
            st.lists(children, max_size=4), st.dictionaries(hostile_text, children, max_size=4)
        ),
        max_leaves=12,
    )


values = nested(scalars)
user_data = st.dictionaries(
    st.one_of(st.sampled_from(KNOWN_KEYS), hostile_text), values, max_size=6
)
known_user_data = st.dictionaries(st.sampled_from(KNOWN_KEYS), values, max_size=6)


def strings_in(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in strings_in(k) + strings_in(v)]
    if isinstance(value, list | tuple):
        return [s for item in value for s in strings_in(item)]
    return []


@FUZZ
@given(data=user_data, region=st.sampled_from([None, "US", "GB", "DE", "zz", ""]))
def test_normalize_user_data_raises_only_what_it_documents(data, region):
    try:
        result = normalize_user_data(data, phone_region=region, default_phone_region=None)
    except UnknownUserDataKey:
        assert set(data) - set(KNOWN_KEYS)
        return
    except ValueError:
        assert region not in (None, "US", "GB", "DE")  # only a bad region argument
        return
    for key, value in result.items():
        if key in HASHED_KEYS:
            hashes = value if isinstance(value, list) else [value]
            assert hashes, key
            assert all(isinstance(h, str) and HEX64.fullmatch(h) for h in hashes), (key, value)
    for raw in strings_in(list(data.values())):
        if len(raw) >= 12:  # shorter ones may be words of the message itself
            assert all(raw not in problem for problem in result.problems), raw


event_times = st.one_of(
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.datetimes(timezones=st.sampled_from([UTC, None])),
    st.just(datetime.now(tz=UTC)),
    hostile_text,
)
drafts = st.builds(
    EventDraft,
    event_name=st.one_of(st.sampled_from(["Purchase", "Lead", "ViewContent"]), hostile_text),
    event_id=st.one_of(st.uuids().map(str), hostile_text),
    event_time=event_times,
    action_source=st.one_of(
        st.sampled_from(
            ["website", "email", "app", "system_generated", "physical_store", "business_messaging"]
        ),
        hostile_text,
    ),
    user_data=st.one_of(known_user_data, user_data, values),
    custom_data=st.one_of(
        st.none(),
        st.dictionaries(
            st.one_of(
                st.sampled_from(["value", "currency", "contents", "content_ids", "num_items"]),
                hostile_text,
            ),
            values,
            max_size=5,
        ),
        values,
    ),
    event_source_url=st.one_of(st.none(), st.just("https://shop.example.com/p/"), hostile_text),
    browser=st.one_of(
        st.fixed_dictionaries(
            {"client_user_agent": st.just("Mozilla/5.0"), "client_ip_address": st.just("1.2.3.4")},
            optional={
                "fbc": hostile_text,
                "fbp": hostile_text,
                "referrer_url": hostile_text,
                "event_source_url": hostile_text,
            },
        ),
        st.dictionaries(hostile_text, values, max_size=3),
    ),
    phone_region=st.sampled_from([None, "US", "GB"]),
    app_data=st.one_of(
        st.none(),
        st.dictionaries(
            st.one_of(
                st.sampled_from(
                    ["advertiser_tracking_enabled", "extinfo", "url_schemes", "campaign_ids"]
                ),
                hostile_text,
            ),
            st.one_of(
                values,
                st.lists(st.one_of(hostile_text, st.integers(), st.floats()), max_size=17),
            ),
            max_size=4,
        ),
        values,
    ),
    messaging_channel=st.one_of(
        st.none(), st.sampled_from(["whatsapp", "messenger", "instagram"]), hostile_text, values
    ),
    original_event_data=st.one_of(
        st.none(),
        st.dictionaries(
            st.one_of(st.sampled_from(["event_name", "event_time", "order_id"]), hostile_text),
            st.one_of(values, event_times),
            max_size=4,
        ),
        values,
    ),
    limited_data_use=st.one_of(
        st.none(),
        st.just({"country": 1, "state": 1000}),
        st.dictionaries(hostile_text, values, max_size=2),
    ),
)


@FUZZ
@given(draft=drafts)
def test_build_event_returns_a_storable_payload_or_says_why_not(draft):
    try:
        built = build_event(draft, default_phone_region=None)
    except (EventValidationError, CapiError) as exc:
        assert str(exc).strip()
        return
    assert isinstance(built, BuiltEvent)
    text = json.dumps(built.payload, allow_nan=False)  # what the Graph API receives
    assert all(is_storable(s) for s in strings_in(built.payload)), text[:300]
    assert all(isinstance(w, str) and is_storable(w) for w in built.warnings)


headers = st.dictionaries(
    st.sampled_from(["Retry-After", "X-Business-Use-Case-Usage", "X-App-Usage", "Content-Type"]),
    st.one_of(
        st.text(st.characters(min_codepoint=32, max_codepoint=0x10FFFF), max_size=30),
        st.sampled_from(["²", "٣", "-1", "1e9", "NaN", "{}", '{"1":[{}]}', "[]"]),
        values.map(lambda v: json.dumps(v, default=str)),
    ),
    max_size=3,
)
graph_error = st.fixed_dictionaries(
    {},
    optional={
        "code": values,
        "error_subcode": values,
        "message": values,
        "is_transient": values,
        "type": values,
        "error_user_title": values,
        "error_user_msg": values,
        "fbtrace_id": values,
    },
)
bodies = st.one_of(
    st.binary(max_size=200),
    st.builds(
        lambda received, error, trace: {
            **({} if received is None else {"events_received": received}),
            **({} if error is None else {"error": error}),
            "fbtrace_id": trace,
        },
        st.one_of(st.none(), values, st.sampled_from([-1, 2**40, 10**30, 1.5, True])),
        st.one_of(st.none(), graph_error, values),
        values,
    ).map(lambda body: json.dumps(body, default=str).encode()),
    values.map(lambda body: json.dumps(body, default=str).encode()),
)


def response(status: int, body: bytes, header_map: dict[str, str]) -> requests.Response:
    answer = requests.Response()
    answer.status_code = status
    answer._content = body
    answer.headers = CaseInsensitiveDict(header_map)
    answer.encoding = "utf-8"
    return answer


@FUZZ
@given(
    status=st.one_of(
        st.sampled_from([200, 400, 401, 403, 404, 429, 500, 503]), st.integers(100, 599)
    ),
    body=bodies,
    header_map=headers,
)
def test_parse_response_survives_any_answer(status, body, header_map):
    result = parse_response(response(status, body, header_map), 12)
    assert isinstance(result, GraphResult)
    assert result.http_status == status
    if result.events_received is not None:
        assert isinstance(result.events_received, int)
    if result.error is not None:
        assert isinstance(result.error.describe(status), str)
        retry_after = result.error.retry_after
        assert retry_after is None or (math.isfinite(retry_after) and retry_after >= 0)


@pytest.mark.parametrize(
    ("header", "value"),
    [("Retry-After", "²"), ("Retry-After", "٣"), ("X-Business-Use-Case-Usage", '{"1":[1]}')],
)
def test_parse_response_survives_the_known_hostile_headers(header, value):
    assert isinstance(parse_response(response(429, b"", {header: value}), 1), GraphResult)


# Hypothesis cannot print integers over 4,300 digits, so the huge ones are fixed examples.
@pytest.mark.parametrize("huge", [10**5000, -(10**5000)], ids=["plus", "minus"])
def test_integers_over_4300_digits_are_refused_like_any_bad_value(huge):
    result = normalize_user_data({"zp": huge, "external_id": huge}, default_phone_region=None)
    assert all(HEX64.fullmatch(v) for v in result.values())
    draft = EventDraft(
        "Purchase",
        "e1",
        event_time=huge,
        action_source="system_generated",
        user_data={"em": "a@b.co", "ph": huge},
        custom_data={"value": huge, "currency": "EUR", "num_items": huge},
    )
    with pytest.raises(EventValidationError):
        build_event(draft, default_phone_region=None)


def test_a_nan_decimal_is_not_a_price():
    draft = EventDraft(
        "Purchase",
        "e1",
        action_source="system_generated",
        user_data={"em": "a@b.co"},
        custom_data={"value": Decimal("NaN"), "currency": "EUR"},
    )
    with pytest.raises(EventValidationError):
        build_event(draft, default_phone_region=None)


@FUZZ
@given(custom_data=st.dictionaries(hostile_text, nested(json_scalars), max_size=5))
def test_custom_data_fast_copy_agrees_with_the_converter(custom_data):
    """Plain custom_data takes a fast copying walk; anything unusual goes through the
    converter. A date beside the same values forces the converter for the whole dict: the
    result, the warnings and the problems must be the same either way."""
    from datetime import date

    from django_capi.validation import clean_custom_data

    def clean(value: dict[Any, Any]) -> tuple[Any, list[str], list[str]]:
        warnings: list[str] = []
        try:
            return clean_custom_data(value, "Lead", warnings), warnings, []
        except EventValidationError as exc:
            return None, warnings, list(exc.problems)

    forced_key = "\ufdd0forced"
    if forced_key in custom_data:  # drawn by chance: nothing to compare
        return
    fast = clean(custom_data)
    slow_result, slow_warnings, slow_problems = clean({**custom_data, forced_key: date(2020, 1, 2)})
    if slow_result is not None:
        assert slow_result.pop(forced_key) == "2020-01-02"
    assert fast == (slow_result, slow_warnings, slow_problems)
