"""The Graph API emulator, over real HTTP: Meta's rules, deduplication, faults, fixture, command."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import requests

from django_capi.conf import capi_settings
from django_capi.testing import (
    REDACTED_TOKEN,
    ConnectionReset,
    Delay,
    GraphEmulator,
    GraphError,
    HttpStatus,
    ManualClock,
    WithHeaders,
    business_use_case_usage,
    rules,
)
from django_capi.testing.pytest_plugin import FIXTURE_ACCESS_TOKEN

NOW = 1_700_000_000
TOKEN = "EMULATOR-test-token-123"
PIXEL = "1234567890"
DAY = 86400
ROOT = Path(__file__).resolve().parent.parent


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def make_event(**overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_name": "Purchase",
        "event_time": NOW - 60,
        "action_source": "website",
        "event_source_url": "https://shop.example/checkout/",
        "event_id": "order-1",
        "user_data": {
            "em": [sha("jane@example.com")],
            "ph": sha("16505551212"),
            "external_id": [sha("42")],
            "client_ip_address": "2001:db8::1",
            "client_user_agent": "Mozilla/5.0 (X11; Linux x86_64)",
            "fbc": "fb.1.1554763741205.IwAR2F4-dbP0l7Mn1IawQQGCINEz7PYXQvwjNwB",
            "fbp": "fb.1.1596403881668.1116446470",
        },
        "custom_data": {"value": 49.9, "currency": "EUR"},
    }
    event.update(overrides)
    return event


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(NOW)


@pytest.fixture
def graph(clock: ManualClock) -> Iterator[GraphEmulator]:
    with GraphEmulator(access_tokens=(TOKEN,), now=clock) as emulator:
        yield emulator


def post(
    graph: GraphEmulator,
    data: Any,
    *,
    token: str | None = TOKEN,
    encoding: str = "json",
    pixel: str = PIXEL,
    timeout: float = 5,
    **params: Any,
) -> requests.Response:
    body: dict[str, Any] = {"data": data, **params}
    if token is not None:
        body["access_token"] = token
    if encoding == "form":
        body["data"] = json.dumps(data)
        return requests.post(graph.events_url(pixel), data=body, timeout=timeout)
    return requests.post(graph.events_url(pixel), json=body, timeout=timeout)


def graph_error(response: requests.Response) -> dict[str, Any]:
    error = response.json()["error"]
    assert isinstance(error, dict)
    assert error["fbtrace_id"]
    return error


# --- success ---------------------------------------------------------------------------


def test_form_encoded_request_is_received(graph: GraphEmulator) -> None:
    events = [make_event(), make_event(event_id="order-2", event_name="AddToCart")]

    response = post(graph, events, encoding="form", test_event_code="TEST123", partner_agent="dj")

    assert response.status_code == 200
    body = response.json()
    assert body["events_received"] == 2
    assert body["messages"] == []
    assert body["fbtrace_id"]
    assert response.headers["Content-Type"].startswith("application/json")
    received = graph.received_events(PIXEL)
    assert [event.data for event in received] == events
    assert {(e.test_event_code, e.partner_agent, e.api_version) for e in received} == {
        ("TEST123", "dj", "v25.0")
    }
    assert graph.event_ids() == ["order-1", "order-2"]


def test_json_body_with_json_string_elements_like_the_sdk(graph: GraphEmulator) -> None:
    data = [json.dumps(make_event()), make_event(event_id="order-2")]

    response = post(graph, data)

    assert response.status_code == 200, response.text
    assert response.json()["events_received"] == 2
    assert graph.event_ids() == ["order-1", "order-2"]


def test_form_body_with_a_list_of_json_strings(graph: GraphEmulator) -> None:
    data = json.dumps([json.dumps(make_event())])

    response = requests.post(
        graph.events_url(PIXEL), data={"data": data, "access_token": TOKEN}, timeout=5
    )

    assert response.status_code == 200, response.text
    assert graph.received_events()[0].data == make_event()


def test_answers_are_not_held_back_by_nagles_algorithm(
    graph: GraphEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An answer is two writes (headers, body): with Nagle's algorithm the body waits for
    the client's delayed ACK of the headers, up to 40 ms per request on a kept-alive
    connection, which would slow every test and demo that sends through the emulator."""
    from django_capi.testing import server

    accepted: list[socket.socket] = []
    original = server.Server.process_request

    def record(self: server.Server, request: Any, address: Any) -> None:
        accepted.append(request)
        original(self, request, address)

    monkeypatch.setattr(server.Server, "process_request", record)
    with requests.Session() as kept_alive:
        body = {"data": [make_event()], "access_token": TOKEN}
        assert kept_alive.post(graph.events_url(PIXEL), json=body, timeout=5).status_code == 200
        (connection,) = accepted
        assert connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def test_chunked_request_body(graph: GraphEmulator) -> None:
    form = urlencode({"data": json.dumps([make_event()]), "access_token": TOKEN}).encode()

    response = requests.post(
        graph.events_url(PIXEL),
        data=iter([form[:100], form[100:]]),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        timeout=5,
    )

    assert response.status_code == 200, response.text
    assert graph.requests[0].headers["Transfer-Encoding"] == "chunked"
    assert graph.event_ids() == ["order-1"]


def test_multipart_form_data_like_metas_curl_example(graph: GraphEmulator) -> None:
    response = requests.post(
        graph.events_url(PIXEL),
        files={"data": (None, json.dumps([make_event()])), "access_token": (None, TOKEN)},
        timeout=5,
    )

    assert response.status_code == 200, response.text
    assert graph.event_ids() == ["order-1"]


@pytest.mark.parametrize(
    ("overrides", "user_data"),
    [
        pytest.param({"action_source": "physical_store", "event_time": NOW - 60 * DAY}, None),
        pytest.param({"event_time": NOW - 7 * DAY + 5}, None, id="just-inside-7-days"),
        pytest.param({"event_time": NOW + 120}, None, id="small-clock-skew"),
        # Meta documents no limit for a future event_time (meta-capi.md §2).
        pytest.param({"event_time": NOW + 30 * DAY}, None, id="a-month-ahead"),
        pytest.param({"action_source": "email"}, {"fn": sha("jane"), "ln": sha("doe")}),
        pytest.param({"action_source": "system_generated"}, {"em": sha("jane@example.com")}),
        pytest.param({"action_source": "chat"}, {"fn": sha("j"), "ln": sha("d"), "ge": sha("f")}),
        pytest.param({"custom_data": {"value": 0, "currency": "jpy"}}, None, id="lowercase-cur"),
        # Meta documents no sign rule and sends "142.52" as a string in its own fbc example
        # [FBC], [STD] (meta-capi.md §10).
        pytest.param({"custom_data": {"value": -5, "currency": "EUR"}}, None, id="negative"),
        pytest.param(
            {"custom_data": {"value": "142.52", "currency": "USD"}}, None, id="string-value"
        ),
        # Meta asks for "a valid ISO 4217 three-letter code" [STD]: XXX is one ("no currency").
        pytest.param({"custom_data": {"value": 1, "currency": "XXX"}}, None, id="iso-XXX"),
        # Past a float's range: the check raised OverflowError instead of answering.
        pytest.param({"custom_data": {"value": 10**400, "currency": "EUR"}}, None, id="huge-int"),
        # Meta only recommends hashing external_id [CIP].
        pytest.param(
            {"action_source": "email"}, {"external_id": ["customer-42"]}, id="plain-ext-id"
        ),
        # Only website events need an http(s) page [SEP].
        pytest.param(
            {"action_source": "chat", "event_source_url": "whatsapp-chat"}, None, id="chat-url"
        ),
        # Business-messaging keys of Meta's examples [BMSG].
        pytest.param(
            {"action_source": "business_messaging", "messaging_channel": "whatsapp"},
            {
                "whatsapp_business_account_id": "1029384756",
                "ctwa_clid": "ARAkLkA8rmlFeiCktEJQ",
                "page_id": "1234",
                "instagram_business_account_id": "5678",
            },
            id="business-messaging",
        ),
    ],
)
def test_valid_variations_are_accepted(
    graph: GraphEmulator, overrides: dict[str, Any], user_data: dict[str, Any] | None
) -> None:
    event = make_event(**overrides)
    if user_data is not None:
        event["user_data"] = user_data

    response = post(graph, [event])

    assert response.status_code == 200, response.text


def test_a_thousand_events_are_accepted(graph: GraphEmulator) -> None:
    response = post(graph, [make_event(event_id=f"e{i}") for i in range(1000)], encoding="form")

    assert response.status_code == 200, response.text
    assert response.json()["events_received"] == 1000


# --- tokens and paths --------------------------------------------------------------------


def test_missing_token_is_refused(graph: GraphEmulator) -> None:
    response = post(graph, [make_event()], token=None)

    assert response.status_code == 401
    error = graph_error(response)
    assert error["code"] == 190
    assert error["type"] == "OAuthException"
    assert error["message"] == "Invalid OAuth access token - Cannot parse access token"
    assert "error_subcode" not in error
    assert graph.received_events() == []


def test_unparseable_token_has_no_subcode(graph: GraphEmulator) -> None:
    error = graph_error(post(graph, [make_event()], token="not a token"))

    assert (error["code"], error.get("error_subcode")) == (190, None)


def test_wrong_token_is_refused_with_subcode_467(graph: GraphEmulator) -> None:
    response = post(graph, [make_event()], token="EAAwrongtoken")

    assert response.status_code == 401
    error = graph_error(response)
    assert (error["code"], error["error_subcode"], error["type"]) == (190, 467, "OAuthException")
    assert graph.received_events() == []


def test_token_rotation(graph: GraphEmulator) -> None:
    graph.access_tokens = {"rotated-token"}

    old = post(graph, [make_event()])
    new = post(graph, [make_event()], token="rotated-token")

    assert old.status_code == 401
    assert graph_error(old)["error_subcode"] == 467
    assert new.status_code == 200
    assert graph.access_tokens == frozenset({"rotated-token"})


def test_token_in_query_string_or_authorization_header(graph: GraphEmulator) -> None:
    url = graph.events_url(PIXEL)
    body = {"data": [make_event()]}

    in_query = requests.post(f"{url}?access_token={TOKEN}", json=body, timeout=5)
    in_header = requests.post(
        url, json=body, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5
    )

    assert (in_query.status_code, in_header.status_code) == (200, 200)


def test_access_token_never_recorded(graph: GraphEmulator) -> None:
    url = graph.events_url(PIXEL)
    requests.post(url, data={"data": json.dumps([make_event()]), "access_token": TOKEN}, timeout=5)
    requests.post(f"{url}?access_token={TOKEN}", json={"data": [make_event()]}, timeout=5)
    requests.post(url, json={"data": []}, headers={"Authorization": f"OAuth {TOKEN}"}, timeout=5)
    requests.post(url, json={"data": [make_event()], "access_token": "EAAwrong-guess"}, timeout=5)

    recorded = graph.requests
    assert [r.status for r in recorded] == [200, 200, 400, 401]
    assert TOKEN not in repr(recorded)
    assert "EAAwrong-guess" not in repr(recorded)
    assert recorded[0].params["access_token"] == REDACTED_TOKEN
    assert recorded[2].headers["Authorization"] == REDACTED_TOKEN


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/1234567890/events"),
        ("POST", "/25.0/1234567890/events"),
        ("POST", "/v25.0/not-a-pixel/events"),
        ("POST", "/v25.0/1234567890/event"),
        ("GET", "/v25.0/1234567890/events"),
    ],
)
def test_unsupported_requests_get_404_subcode_33(
    graph: GraphEmulator, method: str, path: str
) -> None:
    response = requests.request(
        method, graph.url + path, json={"data": [make_event()], "access_token": TOKEN}, timeout=5
    )

    assert response.status_code == 404
    error = graph_error(response)
    assert (error["code"], error["error_subcode"]) == (100, 33)
    assert error["message"].startswith(f"Unsupported {method.lower()} request")
    assert graph.received_events() == []


def test_pixel_ids_limit_the_pixels_that_exist(clock: ManualClock) -> None:
    with GraphEmulator(access_tokens=(TOKEN,), now=clock, pixel_ids=[PIXEL]) as graph:
        unknown = post(graph, [make_event()], pixel="999")
        known = post(graph, [make_event()])

    assert unknown.status_code == 404
    assert graph_error(unknown)["error_subcode"] == 33
    assert "'999'" in graph_error(unknown)["message"]
    assert known.status_code == 200


# --- validation: one bad event rejects the whole request --------------------------------


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(event: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target = event
        for key in parents:
            target = target[key]
        target[last] = value

    return mutate


def _drop(path: str) -> Callable[[dict[str, Any]], None]:
    def mutate(event: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target = event
        for key in parents:
            target = target[key]
        del target[last]

    return mutate


def _user_data(**user_data: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(event: dict[str, Any]) -> None:
        event["action_source"] = "system_generated"
        event["user_data"] = user_data

    return mutate


REJECTIONS = [
    pytest.param(_set("event_time", NOW - 8 * DAY), rules.TIMESTAMP_TOO_OLD, "7 days", id="stale"),
    pytest.param(
        lambda e: e.update(action_source="physical_store", event_time=NOW - 63 * DAY),
        rules.TIMESTAMP_TOO_OLD,
        "62 days",
        id="stale-physical-store",
    ),
    pytest.param(
        _set("event_time", (NOW - 60) * 1000), rules.TIMESTAMP_IN_FUTURE, "milliseconds", id="ms"
    ),
    pytest.param(_set("event_time", NOW - 60.0), rules.INVALID_TIMESTAMP, "integer", id="float"),
    pytest.param(_set("event_time", str(NOW)), rules.INVALID_TIMESTAMP, "integer", id="string"),
    pytest.param(_drop("event_time"), rules.MISSING_PARAMETER, "event_time", id="no-time"),
    pytest.param(_drop("event_name"), rules.MISSING_PARAMETER, "event_name", id="no-name"),
    pytest.param(_set("event_name", "x" * 51), rules.INVALID_PARAMETER, "50", id="long-name"),
    pytest.param(_drop("action_source"), rules.MISSING_PARAMETER, "action_source", id="no-src"),
    pytest.param(
        _set("action_source", "web"), rules.INVALID_ACTION_SOURCE, "action_source", id="bad-src"
    ),
    pytest.param(_drop("user_data"), rules.MISSING_PARAMETER, "user_data", id="no-user-data"),
    pytest.param(
        _drop("event_source_url"),
        rules.MISSING_WEBSITE_PARAMETERS,
        "event_source_url",
        id="website-no-url",
    ),
    pytest.param(
        _drop("user_data.client_user_agent"),
        rules.MISSING_WEBSITE_PARAMETERS,
        "client_user_agent",
        id="website-no-ua",
    ),
    pytest.param(
        _set("event_source_url", "/checkout/"), rules.INVALID_PARAMETER, "URL", id="relative-url"
    ),
    pytest.param(
        _set("user_data.em", ["jane@example.com"]),
        rules.INVALID_CUSTOMER_INFORMATION,
        "user_data.em must be hashed",
        id="unhashed-em",
    ),
    pytest.param(
        _set("user_data.ph", sha("16505551212").upper()),
        rules.INVALID_CUSTOMER_INFORMATION,
        "user_data.ph",
        id="uppercase-hash",
    ),
    pytest.param(
        _set("user_data.em", [sha("a@b.co"), "a@b.co"]),
        rules.INVALID_CUSTOMER_INFORMATION,
        "user_data.em",
        id="one-bad-in-list",
    ),
    pytest.param(
        _set("user_data.external_id", ["42", 7]),
        rules.INVALID_CUSTOMER_INFORMATION,
        "external_id",
        id="external-id-not-a-string",
    ),
    pytest.param(
        _set("user_data.fn", sha("")),
        rules.INVALID_CUSTOMER_INFORMATION,
        "empty string",
        id="hash-of-nothing",
    ),
    pytest.param(
        _set("user_data.client_ip_address", "10.0.0"),
        rules.INVALID_CUSTOMER_INFORMATION,
        "IPv4 or IPv6",
        id="bad-ip",
    ),
    pytest.param(
        _set("user_data.client_ip_address", sha("10.0.0.1")),
        rules.INVALID_CUSTOMER_INFORMATION,
        "must not be hashed",
        id="hashed-ip",
    ),
    pytest.param(
        _set("user_data.client_user_agent", sha("Mozilla/5.0")),
        rules.INVALID_CUSTOMER_INFORMATION,
        "must not be hashed",
        id="hashed-ua",
    ),
    pytest.param(
        _set("user_data.fbc", "fb.1.1554763741.IwAR2F4"),
        rules.INVALID_CUSTOMER_INFORMATION,
        "user_data.fbc",
        id="fbc-in-seconds",
    ),
    pytest.param(
        _set("user_data.fbp", "1116446470"),
        rules.INVALID_CUSTOMER_INFORMATION,
        "user_data.fbp",
        id="bad-fbp",
    ),
    pytest.param(
        _set("user_data.email", sha("a@b.co")),
        rules.INVALID_CUSTOMER_INFORMATION,
        "email",
        id="unknown-key",
    ),
    pytest.param(
        _set("user_data.fbp", None), rules.INVALID_CUSTOMER_INFORMATION, "empty", id="null"
    ),
    pytest.param(
        _user_data(ct=sha("paris"), country=sha("fr"), st=sha("idf"), zp=sha("75018")),
        rules.INSUFFICIENT_CUSTOMER_INFORMATION,
        "baseline",
        id="baseline-location",
    ),
    pytest.param(
        _user_data(db=sha("19970216"), client_user_agent="Mozilla/5.0"),
        rules.INSUFFICIENT_CUSTOMER_INFORMATION,
        "baseline",
        id="baseline-db-ua",
    ),
    pytest.param(
        _user_data(fn=sha("jane"), ge=sha("f")),
        rules.INSUFFICIENT_CUSTOMER_INFORMATION,
        "baseline",
        id="baseline-fn-ge",
    ),
    pytest.param(
        _user_data(ln=sha("doe")),
        rules.INSUFFICIENT_CUSTOMER_INFORMATION,
        "baseline",
        id="baseline-ln",
    ),
    pytest.param(
        _user_data(), rules.INSUFFICIENT_CUSTOMER_INFORMATION, "baseline", id="no-customer-info"
    ),
    pytest.param(
        _drop("custom_data"), rules.INVALID_CUSTOM_DATA, "Purchase", id="purchase-no-custom-data"
    ),
    pytest.param(
        _drop("custom_data.value"), rules.INVALID_CUSTOM_DATA, "value", id="purchase-no-value"
    ),
    pytest.param(
        _set("custom_data.value", "forty"), rules.INVALID_CUSTOM_DATA, "value", id="word-value"
    ),
    pytest.param(
        _drop("custom_data.currency"), rules.INVALID_CUSTOM_DATA, "currency", id="no-currency"
    ),
    pytest.param(
        _set("custom_data.currency", "EURO"), rules.INVALID_CUSTOM_DATA, "ISO 4217", id="EURO"
    ),
    pytest.param(
        _set("custom_data.currency", "XYZ"), rules.INVALID_CUSTOM_DATA, "ISO 4217", id="XYZ"
    ),
    pytest.param(_set("event_id", ""), rules.INVALID_PARAMETER, "event_id", id="empty-event-id"),
    pytest.param(_set("event_id", 17), rules.INVALID_PARAMETER, "event_id", id="int-event-id"),
    pytest.param(
        _set("event_sorce_url", "x"), rules.INVALID_PARAMETER, "event_sorce_url", id="typo"
    ),
    pytest.param(
        lambda e: e.update(action_source="app"), rules.MISSING_PARAMETER, "app_data", id="app"
    ),
    pytest.param(
        _set("data_processing_options", ["LDU"]),
        rules.INVALID_PARAMETER,
        "data_processing_options_country",
        id="ldu-without-country",
    ),
]


@pytest.mark.parametrize(("mutate", "subcode", "phrase"), REJECTIONS)
@pytest.mark.parametrize("encoding", ["json", "form"])
def test_one_invalid_event_rejects_the_whole_request(
    graph: GraphEmulator,
    mutate: Callable[[dict[str, Any]], None],
    subcode: int,
    phrase: str,
    encoding: str,
) -> None:
    bad = copy.deepcopy(make_event(event_id="bad"))
    mutate(bad)

    response = post(graph, [make_event(event_id="good"), bad], encoding=encoding)

    assert response.status_code == 400
    error = graph_error(response)
    assert error["message"] == "Invalid parameter"
    assert (error["code"], error["error_subcode"]) == (100, subcode)
    assert error["type"] == "OAuthException"
    assert error["is_transient"] is False
    assert error["error_user_title"] == rules.TITLES[subcode]
    assert phrase in error["error_user_msg"]
    assert graph.received_events() == []
    assert graph.requests[-1].status == 400


def test_stale_event_has_metas_wording(graph: GraphEmulator) -> None:
    error = graph_error(post(graph, [make_event(event_time=NOW - 7 * DAY - 60)]))

    assert error["error_subcode"] == 2804003
    assert error["error_user_title"] == "Event Timestamp Too Old"
    assert error["error_user_msg"] == (
        "The timestamp for this event is too far in the past. Events need to be sent from your "
        "server within 7 days of when they occurred. Enter a timestamp that has occurred within "
        "the last 7 days."
    )


def test_customer_data_is_not_echoed_in_errors(graph: GraphEmulator) -> None:
    event = make_event()
    event["user_data"]["em"] = ["jane.secret@example.com"]

    response = post(graph, [event])

    assert response.status_code == 400
    assert "jane.secret" not in response.text


@pytest.mark.parametrize(
    ("body", "subcode"),
    [
        pytest.param({}, rules.MISSING_PARAMETER, id="no-data"),
        pytest.param({"data": []}, rules.INVALID_DATA, id="empty"),
        pytest.param({"data": "[{not json"}, rules.INVALID_DATA, id="not-json"),
        pytest.param({"data": {"event_name": "Purchase"}}, rules.INVALID_DATA, id="not-a-list"),
        pytest.param({"data": [17]}, rules.INVALID_DATA, id="not-an-object"),
        pytest.param({"data": [make_event()] * 1001}, rules.INVALID_DATA, id="1001-events"),
        pytest.param({"data": [make_event()], "test_event_code": 5}, rules.INVALID_PARAMETER),
    ],
)
def test_malformed_data_is_rejected(
    graph: GraphEmulator, body: dict[str, Any], subcode: int
) -> None:
    response = requests.post(
        graph.events_url(PIXEL), json={**body, "access_token": TOKEN}, timeout=5
    )

    assert response.status_code == 400
    error = graph_error(response)
    assert (error["code"], error["error_subcode"]) == (100, subcode)
    assert graph.received_events() == []


def test_nan_value_is_rejected(graph: GraphEmulator) -> None:
    event = json.dumps(make_event()).replace('"value": 49.9', '"value": NaN')

    response = requests.post(
        graph.events_url(PIXEL), data={"data": f"[{event}]", "access_token": TOKEN}, timeout=5
    )

    assert response.status_code == 400
    assert graph_error(response)["error_subcode"] == rules.INVALID_DATA


def test_unreadable_body_is_rejected(graph: GraphEmulator) -> None:
    response = requests.post(
        graph.events_url(PIXEL),
        data=b"data=[]",
        headers={"Content-Type": "text/plain"},
        params={"access_token": TOKEN},
        timeout=5,
    )

    assert response.status_code == 400
    assert "Content-Type" in graph_error(response)["error_user_msg"]


UNKNOWN_CHARSET_PART = (
    b'--x\r\nContent-Disposition: form-data; name="data"\r\n'
    b"Content-Type: text/plain; charset=nope\r\n\r\n[]\r\n--x--\r\n"
)


def raw_request(graph: GraphEmulator, head: bytes, body: bytes = b"") -> bytes:
    """What the emulator answers to bytes no HTTP client would send; b"" when it answers
    nothing (closes the connection)."""
    with socket.create_connection(("127.0.0.1", graph.port), timeout=5) as sock:
        sock.sendall(head + b"\r\nConnection: close\r\n\r\n" + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


@pytest.mark.parametrize(
    ("head", "body", "status"),
    [
        # A body nested deeper than Python's recursion limit is no JSON Graph reads either.
        (b"Content-Type: application/json", b"[" * 100_000, b"400"),
        # A part in a charset Python does not know.
        (b"Content-Type: multipart/form-data; boundary=x", UNKNOWN_CHARSET_PART, b"400"),
        (b"Transfer-Encoding: chunked", b"zz\r\nabc\r\n0\r\n\r\n", b"400"),
        # Announced, never sent: nothing is read (nor allocated) beyond the limit.
        (b"Content-Type: application/json\r\nContent-Length: 100000000000000", b"{}", b"413"),
    ],
)  # fmt: skip
def test_a_malformed_or_huge_request_is_answered_not_dropped(
    graph: GraphEmulator, head: bytes, body: bytes, status: bytes
) -> None:
    target = f"/v25.0/{PIXEL}/events?access_token={TOKEN}".encode()
    if b"Content-Length" not in head and b"chunked" not in head:
        head += b"\r\nContent-Length: " + str(len(body)).encode()
    answer = raw_request(graph, b"POST " + target + b" HTTP/1.1\r\nHost: x\r\n" + head, body)
    assert answer.startswith(b"HTTP/1.1 " + status), answer[:200]
    assert b'"error"' in answer


def test_event_age_follows_the_injected_clock(graph: GraphEmulator, clock: ManualClock) -> None:
    event = make_event(event_time=NOW - 60)
    assert post(graph, [event]).status_code == 200

    clock.advance(7 * DAY)

    response = post(graph, [event])
    assert graph_error(response)["error_subcode"] == rules.TIMESTAMP_TOO_OLD


# --- deduplication -----------------------------------------------------------------------


def test_duplicates_within_48_hours_are_counted_like_meta(
    graph: GraphEmulator, clock: ManualClock
) -> None:
    def send() -> requests.Response:
        return post(graph, [make_event(event_time=int(clock()) - 10)])

    first = send()
    clock.advance(47 * 3600)
    second = send()
    clock.advance(2 * 3600)  # 49 h after the first
    third = send()

    assert [r.json()["events_received"] for r in (first, second, third)] == [1, 1, 1]
    assert [e.duplicate for e in graph.received_events()] == [False, True, False]
    assert [e.received_at for e in graph.duplicates] == [NOW + 47 * 3600]
    assert graph.event_ids() == ["order-1"] * 3
    assert graph.event_ids(include_duplicates=False) == ["order-1", "order-1"]


def test_dedup_key_is_pixel_event_name_and_event_id(graph: GraphEmulator) -> None:
    post(graph, [make_event()])
    post(graph, [make_event(event_name="AddToCart")])
    post(graph, [make_event()], pixel="555")
    post(graph, [make_event(event_id="order-2")])
    no_id = make_event()
    del no_id["event_id"]
    post(graph, [no_id, no_id])
    post(graph, [make_event(), make_event()])

    assert len(graph.received_events()) == 8
    assert [(e.pixel_id, e.event_name, e.event_id) for e in graph.duplicates] == [
        (PIXEL, "Purchase", "order-1"),
        (PIXEL, "Purchase", "order-1"),
    ]
    assert graph.event_ids("555") == ["order-1"]


def test_records_and_reset(graph: GraphEmulator, clock: ManualClock) -> None:
    graph.script(HttpStatus(503))
    post(graph, [make_event()])
    post(graph, [make_event()], encoding="form", test_event_code="TEST1")

    first, second = graph.requests
    assert (first.status, first.fault, first.response) == (503, HttpStatus(503), "")
    assert first.events == [make_event()]
    assert second.method == "POST"
    assert second.path == f"/v25.0/{PIXEL}/events"
    assert (second.pixel_id, second.api_version, second.time) == (PIXEL, "v25.0", NOW)
    assert second.params["test_event_code"] == "TEST1"
    assert second.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert second.response["events_received"] == 1
    assert second.error is None

    graph.script(HttpStatus(500))
    graph.reset()

    assert (graph.requests, graph.received_events(), graph.duplicates) == ([], [], [])
    assert graph.pending_faults == 0
    assert post(graph, [make_event()]).status_code == 200
    assert graph.duplicates == []  # the history went too


def test_received_endpoint_lists_events_and_requests_and_is_never_recorded(
    graph: GraphEmulator,
) -> None:
    from django_capi.testing.emulator import RECEIVED_PATH

    graph.script(HttpStatus(503))
    post(graph, [make_event()])  # refused: nothing received
    post(graph, [make_event(), make_event(event_id="order-2")], test_event_code="TEST1")
    post(graph, [make_event()])  # a duplicate, as Meta counts it
    post(graph, [make_event(event_name="Nope", action_source="nowhere")])  # rejected
    url = f"{graph.url}{RECEIVED_PATH}"

    listing = requests.get(url, timeout=5)

    assert listing.status_code == 200
    assert listing.headers["Content-Type"] == "application/json"
    state = listing.json()
    assert [(e["event_name"], e["event_id"], e["duplicate"]) for e in state["events"]] == [
        ("Purchase", "order-1", False),
        ("Purchase", "order-2", False),
        ("Purchase", "order-1", True),
    ]
    first = state["events"][0]
    assert (first["pixel_id"], first["api_version"], first["test_event_code"]) == (
        PIXEL,
        "v25.0",
        "TEST1",
    )
    assert first["received_at"] == NOW
    assert first["data"] == make_event()
    assert [(r["status"], r["events"]) for r in state["requests"]] == [
        (503, 1),
        (200, 2),
        (200, 1),
        (400, 1),
    ]
    assert state["requests"][0]["error"] is None
    assert state["requests"][3]["error"]["code"] == 100
    assert state["requests"][1]["path"] == f"/v25.0/{PIXEL}/events"
    assert TOKEN not in listing.text  # a request's parameters are never listed
    # Read-only, and not a Graph request: neither the GET nor a refused POST is recorded.
    refused = requests.post(url, json={"events": []}, timeout=5)
    assert refused.status_code == 405
    assert "read-only" in refused.json()["error"]
    assert len(graph.requests) == 4
    assert len(graph.received_events()) == 3
    assert requests.get(url, timeout=5).json() == state


# --- faults ------------------------------------------------------------------------------


def test_scripted_faults_are_used_once_each_in_order(graph: GraphEmulator) -> None:
    graph.script(HttpStatus(502, "<html>Bad Gateway</html>"), HttpStatus(503))

    statuses = [post(graph, [make_event()]) for _ in range(3)]

    assert [r.status_code for r in statuses] == [502, 503, 200]
    assert statuses[0].text == "<html>Bad Gateway</html>"
    assert statuses[0].headers["Content-Type"].startswith("text/html")
    assert graph.pending_faults == 0
    assert len(graph.received_events()) == 1


def test_http_status_with_json_body_and_headers(graph: GraphEmulator) -> None:
    graph.script(HttpStatus(429, {"oops": True}, headers={"Retry-After": "7"}))

    response = post(graph, [make_event()])

    assert (response.status_code, response.json()) == (429, {"oops": True})
    assert response.headers["Retry-After"] == "7"


@pytest.mark.parametrize(
    ("code", "subcode", "status", "transient"),
    [
        (1, None, 500, True),
        (2, None, 500, True),
        (4, None, 400, True),
        (17, 2446079, 400, True),
        (32, None, 400, True),
        (613, 1487742, 400, True),
        (80004, None, 400, True),
        (190, 463, 401, False),
        (190, 467, 401, False),
        (10, None, 400, False),
        (200, None, 400, False),
        (368, None, 400, False),
        (341, None, 400, True),
    ],
)
def test_graph_error_defaults(
    graph: GraphEmulator, code: int, subcode: int | None, status: int, transient: bool
) -> None:
    graph.script(GraphError(code=code, subcode=subcode))

    response = post(graph, [make_event()])

    assert response.status_code == status
    error = graph_error(response)
    assert error["code"] == code
    assert error.get("error_subcode") == subcode
    assert error["type"] == "OAuthException"
    assert error["is_transient"] is transient
    assert error["message"]
    assert graph.received_events() == []
    assert post(graph, [make_event()]).status_code == 200


def test_graph_error_overrides(graph: GraphEmulator) -> None:
    graph.script(
        GraphError(
            code=2,
            status=503,
            is_transient=False,
            message="Service temporarily unavailable",
            error_user_title="Down",
            error_user_msg="Try later",
            error_type="FacebookApiException",
        )
    )

    response = post(graph, [make_event()])

    assert response.status_code == 503
    assert graph_error(response) == {
        "message": "Service temporarily unavailable",
        "type": "FacebookApiException",
        "code": 2,
        "is_transient": False,
        "error_user_title": "Down",
        "error_user_msg": "Try later",
        "fbtrace_id": graph_error(response)["fbtrace_id"],
    }


def test_delay_beyond_the_read_timeout(graph: GraphEmulator) -> None:
    graph.script(Delay(0.3))

    with pytest.raises(requests.exceptions.ReadTimeout):
        post(graph, [make_event()], timeout=0.1)
    assert graph.event_ids() == ["order-1"]  # received on arrival, before the pause
    retry = post(graph, [make_event()])

    # Meta had the first one: the retry is a duplicate.
    assert retry.status_code == 200
    assert graph.event_ids() == ["order-1", "order-1"]
    assert len(graph.duplicates) == 1


def test_delay_then_another_fault(graph: GraphEmulator) -> None:
    graph.script(Delay(0.2, then=HttpStatus(504)))

    started = time.monotonic()
    response = post(graph, [make_event()])

    assert response.status_code == 504
    assert time.monotonic() - started >= 0.2
    assert graph.received_events() == []


def test_connection_reset(graph: GraphEmulator) -> None:
    graph.script(ConnectionReset())

    with pytest.raises(requests.exceptions.ConnectionError):
        post(graph, [make_event()])

    assert graph.received_events() == []
    assert graph.requests[-1].status is None
    assert post(graph, [make_event()]).status_code == 200


def test_connection_reset_after_processing(graph: GraphEmulator) -> None:
    graph.script(ConnectionReset(processed=True))

    with pytest.raises(requests.exceptions.ConnectionError):
        post(graph, [make_event()])

    assert graph.event_ids() == ["order-1"]


def test_rate_limit_headers(graph: GraphEmulator) -> None:
    usage = business_use_case_usage(PIXEL, estimated_time_to_regain_access=19)
    graph.script(WithHeaders(usage), WithHeaders(usage, then=GraphError(17, 2446079)))

    ok = post(graph, [make_event()])
    limited = post(graph, [make_event(event_id="order-2")])

    assert ok.status_code == 200
    assert limited.status_code == 400
    for response in (ok, limited):
        header = json.loads(response.headers["X-Business-Use-Case-Usage"])
        assert header[PIXEL][0]["estimated_time_to_regain_access"] == 19
        assert header[PIXEL][0]["call_count"] == 100
        assert header[PIXEL][0]["type"] == "ads_management"
    assert graph.event_ids() == ["order-1"]


def test_fail_always_until_lifted(graph: GraphEmulator) -> None:
    graph.fail_always(GraphError(2))
    graph.script(HttpStatus(502))

    during = [post(graph, [make_event()]).status_code for _ in range(3)]
    graph.fail_always(None)

    assert during == [502, 500, 500]
    assert post(graph, [make_event()]).status_code == 200


def test_faults_are_consumed_exactly_once_under_concurrency(graph: GraphEmulator) -> None:
    graph.script(*[HttpStatus(503)] * 10)
    statuses: list[int] = []
    lock = threading.Lock()

    def send(i: int) -> None:
        status = post(graph, [make_event(event_id=f"e{i}")]).status_code
        with lock:
            statuses.append(status)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(statuses) == [200] * 6 + [503] * 10
    assert len(graph.received_events()) == 6


def test_script_refuses_non_faults(graph: GraphEmulator) -> None:
    with pytest.raises(TypeError):
        graph.script(503)  # type: ignore[arg-type]


def test_stop_closes_kept_alive_connections(clock: ManualClock) -> None:
    graph = GraphEmulator(access_tokens=(TOKEN,), now=clock).start()
    url = graph.events_url(PIXEL)
    session = requests.Session()
    assert session.post(url, json={"access_token": TOKEN}, timeout=2).status_code == 400

    graph.stop()

    with pytest.raises(requests.exceptions.ConnectionError):
        session.post(url, json={"access_token": TOKEN}, timeout=2)
    with pytest.raises(RuntimeError):
        _ = graph.url


# --- pytest fixture, import cost, management command ------------------------------------


def test_capi_graph_fixture_points_settings_at_the_emulator(capi_graph: GraphEmulator) -> None:
    conf = capi_settings()

    assert conf.graph_api_url == capi_graph.url
    assert conf.access_token == "test-token-not-real"  # tests/settings.py's own
    assert conf.pixel_id == "1234567890"  # other keys kept
    assert conf.access_token in capi_graph.access_tokens
    response = requests.post(
        conf.events_url(PIXEL),
        json={"data": [make_event(event_time=int(time.time()))], "access_token": conf.access_token},
        timeout=5,
    )
    assert response.status_code == 200, response.text
    assert capi_graph.event_ids() == ["order-1"]


def test_capi_graph_fixture_sets_a_token_when_none_is_configured(
    settings: Any, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CAPI_ACCESS_TOKEN", raising=False)
    settings.DJANGO_CAPI = {"PIXEL_ID": "42"}

    emulator = request.getfixturevalue("capi_graph")

    conf = capi_settings()
    assert conf.access_token == FIXTURE_ACCESS_TOKEN
    assert emulator.access_tokens == frozenset({FIXTURE_ACCESS_TOKEN})
    assert (conf.graph_api_url, conf.pixel_id) == (emulator.url, "42")


@pytest.mark.django_db(transaction=True)
def test_capi_graph_fixture_queues_no_task_on_the_developers_broker(
    settings: Any, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    from django_capi import tasks
    from tests.celery_app import app
    from tests.shop.models import Order

    app.set_current()  # a Celery app with a broker, as in a developer's project
    settings.DJANGO_CAPI = {**settings.DJANGO_CAPI, "WAKE": "celery"}
    queued: list[object] = []
    monkeypatch.setattr(tasks.drain_outbox, "delay", lambda **kwargs: queued.append(kwargs))

    request.getfixturevalue("capi_graph")
    Order.objects.create(email="a@example.com", status="paid", total=3, user_agent="UA/1")

    assert capi_settings().wake == "none"
    assert queued == []


def test_importing_the_plugin_and_emulator_needs_no_django() -> None:
    code = (
        "import sys, django_capi.testing.pytest_plugin, django_capi.testing.emulator;"
        "loaded = sorted(m for m in sys.modules if m.startswith(('django.', 'django_capi.')));"
        "print(loaded, 'django' in sys.modules)"
    )
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}

    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, check=True
    )

    assert (
        result.stdout.strip()
        == str(
            [
                "django_capi.testing",
                "django_capi.testing.emulator",
                "django_capi.testing.faults",
                "django_capi.testing.pytest_plugin",
                "django_capi.testing.rules",
                "django_capi.testing.server",
            ]
        )
        + " False"
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_capi_fakegraph_command_serves_logs_and_stops_cleanly() -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("django-admin")),
            "capi_fakegraph",
            "--settings=tests.settings",
            "--pythonpath=.",
            "--port",
            str(port),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline = time.monotonic() + 60  # a deadline, not a wait: slow on a loaded machine
        while True:
            try:
                response = requests.post(
                    f"{url}/v25.0/{PIXEL}/events",
                    json={
                        "data": [make_event(event_time=int(time.time()))],
                        "access_token": "test-token-not-real",
                    },
                    timeout=1,
                )
                break
            except requests.exceptions.ConnectionError:
                assert process.poll() is None, process.communicate()
                assert time.monotonic() < deadline, "capi_fakegraph did not start"
                time.sleep(0.05)
        assert response.status_code == 200, response.text
        rejected = requests.post(f"{url}/v25.0/{PIXEL}/events", json={"data": []}, timeout=1)
        assert rejected.status_code == 401
    finally:
        process.terminate()
        stdout, stderr = process.communicate(timeout=10)

    assert process.returncode == 0, stderr
    assert f"listening on {url}" in stdout
    assert f"export CAPI_GRAPH_API_URL={url}" in stdout
    assert f"200 POST /v25.0/{PIXEL}/events pixel={PIXEL} events_received=1" in stdout
    assert "401 POST" in stdout
    assert "error 190" in stdout
    assert "stopped" in stdout
    assert "test-token-not-real" not in stdout + stderr


# --- the app secret proof ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("proof", "status", "message"),
    [
        ("right", 200, None),
        ("wrong", 400, "Invalid appsecret_proof provided in the API argument"),
        (None, 400, "API calls from the server require an appsecret_proof argument"),
    ],
)
def test_with_an_app_secret_the_emulator_checks_the_proof_as_meta_does(proof, status, message):
    secret, token = "emulated-app-secret", "emulated-token"
    right = hmac.new(secret.encode(), token.encode(), hashlib.sha256).hexdigest()
    body: dict[str, Any] = {
        "data": [make_event(event_time=int(time.time()))],
        "access_token": token,
    }
    if proof is not None:
        body["appsecret_proof"] = right if proof == "right" else right[::-1]
    with GraphEmulator(access_tokens=(token,), app_secret=secret) as emulator:
        response = requests.post(emulator.events_url("123"), json=body, timeout=5)
        assert response.status_code == status
        if message is None:
            assert response.json()["events_received"] == 1
            return
        error = response.json()["error"]
        assert (error["code"], error["type"], error["message"]) == (
            100,
            "GraphMethodException",
            message,
        )
        assert "error_subcode" not in error
        assert emulator.received_events() == []
        emulator.app_secret = None  # an app without "Require App Secret": proofs not checked
        assert requests.post(emulator.events_url("123"), json=body, timeout=5).status_code == 200
