"""What Meta's answers mean for the events in a request."""

from __future__ import annotations

import contextlib
import http.server
import json
import sys
import threading

import pytest
import requests
from django.test import override_settings
from django.views.debug import technical_500_response
from hypothesis import given, settings
from hypothesis import strategies as st

from django_capi.client import ErrorKind, GraphClient, classify, parse_response
from django_capi.conf import capi_settings
from django_capi.testing import GraphEmulator, HttpStatus
from django_capi.text import is_storable


@pytest.mark.parametrize(
    ("status", "error", "kind"),
    [
        (500, {"code": 1}, ErrorKind.TRANSIENT),
        (500, {"code": 2}, ErrorKind.TRANSIENT),
        (400, {"code": 368}, ErrorKind.RATE_LIMIT),
        (400, {"code": 100, "is_transient": True}, ErrorKind.TRANSIENT),
        (503, {"code": 100}, ErrorKind.TRANSIENT),
        (400, {"code": 4}, ErrorKind.RATE_LIMIT),
        (400, {"code": 17, "error_subcode": 2446079}, ErrorKind.RATE_LIMIT),
        (400, {"code": 32}, ErrorKind.RATE_LIMIT),
        (400, {"code": 341}, ErrorKind.RATE_LIMIT),
        (400, {"code": 613, "error_subcode": 1487742}, ErrorKind.RATE_LIMIT),
        (400, {"code": 80004}, ErrorKind.RATE_LIMIT),
        (429, {"code": 100}, ErrorKind.RATE_LIMIT),
        (401, {"code": 190, "error_subcode": 463}, ErrorKind.SETUP),
        (400, {"code": 102}, ErrorKind.SETUP),
        (403, {"code": 10}, ErrorKind.SETUP),
        (403, {"code": 200}, ErrorKind.SETUP),
        (403, {"code": 299}, ErrorKind.SETUP),
        (400, {"code": 100, "error_subcode": 33}, ErrorKind.SETUP),
        (400, {"code": 100, "error_subcode": 2804003}, ErrorKind.INVALID),
        (400, {"code": 100}, ErrorKind.INVALID),
        (400, {"code": 12}, ErrorKind.SETUP),  # a retired API version: not the events' fault
        (400, {"code": 2635}, ErrorKind.SETUP),
        (400, None, ErrorKind.TRANSIENT),  # a proxy said no: the events are not at fault
        (408, None, ErrorKind.TRANSIENT),
        (502, None, ErrorKind.TRANSIENT),
        (429, None, ErrorKind.RATE_LIMIT),
        (401, None, ErrorKind.SETUP),
        (404, None, ErrorKind.SETUP),  # a wrong GRAPH_API_URL or pixel: stop, do not bisect
    ],
)
def test_classification(status, error, kind):
    assert classify(status, error).kind is kind


def test_metas_wait_is_read_from_the_usage_header_in_minutes():
    usage = {"12": [{"estimated_time_to_regain_access": 3}, {"estimated_time_to_regain_access": 5}]}
    headers = {"X-Business-Use-Case-Usage": json.dumps(usage)}
    assert classify(400, {"code": 17}, headers).retry_after == 300
    assert classify(429, None, {"Retry-After": "42"}).retry_after == 42
    assert (
        classify(400, {"code": 17}, {"X-Business-Use-Case-Usage": "not json"}).retry_after is None
    )


def test_describe_names_status_code_title_and_message():
    error = classify(
        400,
        {
            "code": 100,
            "error_subcode": 2804003,
            "error_user_title": "Event Timestamp Too Old",
            "error_user_msg": "The timestamp for this event is too far in the past.",
        },
    )
    assert error.describe(400) == (
        "Meta HTTP 400 code 100/2804003 Event Timestamp Too Old: "
        "The timestamp for this event is too far in the past."
    )


class RecordingClient(GraphClient):
    """Uses the documented ``create_session`` hook to see what goes on the wire."""

    def create_session(self):
        session = super().create_session()
        self.sent = []
        session.hooks["response"].append(lambda response, **kwargs: self.sent.append(response))
        return session


def test_the_token_travels_in_the_body_never_the_url():
    with GraphEmulator(access_tokens=("secret-token",)) as emulator:
        conf = {"PIXEL_ID": "1", "ACCESS_TOKEN": "secret-token", "GRAPH_API_URL": emulator.url}
        with override_settings(DJANGO_CAPI=conf):
            client = RecordingClient(capi_settings())
        event = {
            "event_name": "Lead",
            "event_time": 1,
            "action_source": "chat",
            "user_data": {"external_id": "0" * 64},
        }
        result = client.post_events("1", [event])
        client.close()
        url = emulator.url
    assert result.http_status == 400  # event_time 1 is far too old
    assert result.error is not None and result.error.subcode == 2804003
    (response,) = client.sent
    assert response.request.url == f"{url}/v25.0/1/events"
    assert b"access_token=secret-token" in response.request.body
    assert response.request.headers["Content-Type"] == "application/x-www-form-urlencoded"


def test_a_2xx_that_is_not_the_graph_api_is_not_a_delivery():
    response = requests.models.Response()
    response.status_code = 200
    response._content = b"<html>Welcome to the hotel wifi</html>"
    result = parse_response(response, 3)
    assert result.error is not None
    assert result.error.kind is ErrorKind.TRANSIENT
    assert result.error.message == "without events_received: not the Graph API"
    response._content = b'{"events_received": 2, "fbtrace_id": "x"}'
    assert parse_response(response, 3).ok


# --- hostile answers, redirects and debug pages (issue 8) --------------------------------


class _Recorder(http.server.BaseHTTPRequestHandler):
    """Answers every POST with the server's ``reply`` and records what it received."""

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        self.server.received.append((self.path, self.rfile.read(length)))
        status, headers = self.server.reply
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def local_server(status, headers=None):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    server.received, server.reply = [], (status, headers or {})
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_is_never_followed_and_the_token_stays_here(status):
    with local_server(200) as elsewhere:
        target = f"http://127.0.0.1:{elsewhere.server_port}/collect?secret=query"
        with local_server(status, {"Location": target}) as graph:
            conf = {
                "PIXEL_ID": "1",
                "ACCESS_TOKEN": "secret-token",
                "GRAPH_API_URL": f"http://127.0.0.1:{graph.server_port}",
            }
            with override_settings(DJANGO_CAPI=conf):
                client = GraphClient(capi_settings())
            result = client.post_events("1", [{"event_name": "Lead"}])
            client.close()
        assert len(graph.received) == 1
        assert elsewhere.received == []  # nothing, and no token, went to the Location
    assert result.error is not None
    assert result.error.kind is ErrorKind.SETUP
    description = result.error.describe(result.http_status)
    assert f"HTTP {status}" in description
    assert "redirect" in description
    assert "secret" not in description
    assert str(elsewhere.server_port) not in description


class _Exploding(requests.adapters.HTTPAdapter):
    def send(self, request, **kwargs):
        raise RuntimeError("a bug deep in the transport")


#: Made at import time so that the page's source excerpts cannot contain it either.
DEBUG_TOKEN = "tok-" + "9f3a" * 8


def _exploding_client():
    conf = {"PIXEL_ID": "1", "ACCESS_TOKEN": DEBUG_TOKEN, "GRAPH_API_URL": "http://x.test"}
    with override_settings(DJANGO_CAPI=conf):
        client = GraphClient(capi_settings())
    client.session.mount("http://", _Exploding())
    return client


def test_a_debug_page_for_an_error_inside_post_events_never_shows_the_token(rf, settings):
    settings.DEBUG = True
    client = _exploding_client()
    try:
        client.post_events("1", [{"event_name": "Lead"}])
    except RuntimeError:
        response = technical_500_response(rf.get("/admin/"), *sys.exc_info())
    else:
        pytest.fail("the transport did not raise")
    page = response.content.decode()
    assert "a bug deep in the transport" in page  # the page does show the frames' locals
    assert "post_events" in page
    assert "9f3a9f3a" not in page


@pytest.mark.parametrize("value", ["²", "٣", "1e999", "-5", "nan", "inf", " ", "Wed, 21 Oct"])
def test_an_odd_retry_after_is_ignored(value):
    assert classify(429, None, {"Retry-After": value}).retry_after is None


def test_a_plain_retry_after_is_used_and_bounded():
    assert classify(429, None, {"Retry-After": "120"}).retry_after == 120
    assert classify(429, None, {"Retry-After": "9" * 10}).retry_after == 7 * 24 * 3600


def _in_column(value):
    return value is None or 0 <= value <= 2**31 - 1


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=20), children, max_size=4)
    ),
    max_leaves=20,
)
error_bodies = st.fixed_dictionaries(
    {},
    optional=dict.fromkeys(
        (
            "code",
            "error_subcode",
            "message",
            "type",
            "error_user_title",
            "error_user_msg",
            "is_transient",
            "fbtrace_id",
        ),
        json_values,
    ),
)
answers = st.fixed_dictionaries(
    {},
    optional={
        "error": error_bodies | json_values,
        "events_received": json_values,
        "messages": json_values,
        "fbtrace_id": json_values,
    },
)
header_text = st.text(
    st.characters(min_codepoint=32, max_codepoint=0x2FFF, exclude_categories=["Cs"]), max_size=40
)
headers = st.fixed_dictionaries(
    {},
    optional={
        "Retry-After": header_text,
        "X-Business-Use-Case-Usage": header_text
        | answers.map(lambda value: json.dumps({"1": [value]})),
    },
)


@settings(max_examples=400, deadline=None)
@given(
    status=st.integers(100, 599),
    body=st.binary(max_size=200) | answers.map(lambda value: json.dumps(value).encode()),
    header_values=headers,
)
def test_any_answer_parses_into_a_storable_result(status, body, header_values):
    response = requests.models.Response()
    response.status_code = status
    response.headers.update(header_values)
    response._content = body
    result = parse_response(response, 3)
    assert result.http_status == status
    assert is_storable(result.fbtrace_id) and len(result.fbtrace_id) <= 64
    assert _in_column(result.events_received)
    assert all(isinstance(text, str) and is_storable(text) for text in result.messages)
    if result.ok:
        assert 200 <= status < 300 and result.events_received is not None
        return
    error = result.error
    assert error is not None
    for text in (error.message, error.type, error.title, error.describe(status)):
        assert isinstance(text, str) and is_storable(text)
    assert len(error.type) <= 100 and len(error.title) <= 200
    for code in (error.code, error.subcode):
        assert code is None or abs(code) <= 2**31 - 1
    if error.retry_after is not None:
        assert 0 <= error.retry_after <= 7 * 24 * 3600


def test_an_answer_longer_than_meta_ever_sends_is_not_read_as_a_delivery():
    huge = b'{"events_received": 1, "pad": "' + b"x" * (2 << 20) + b'"}'
    with GraphEmulator(access_tokens=("secret-token",)) as emulator:
        emulator.script(HttpStatus(200, huge), HttpStatus(200, b'{"events_received": 1}'))
        conf = {"PIXEL_ID": "1", "ACCESS_TOKEN": "secret-token", "GRAPH_API_URL": emulator.url}
        with override_settings(DJANGO_CAPI=conf):
            client = GraphClient(capi_settings())
        first = client.post_events("1", [{"event_name": "Lead"}])
        second = client.post_events("1", [{"event_name": "Lead"}])
        client.close()
    assert first.error is not None and first.error.kind is ErrorKind.TRANSIENT
    assert second.ok and second.events_received == 1
