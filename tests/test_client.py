"""What Meta's answers mean for the events in a request."""

from __future__ import annotations

import json

import pytest
import requests
from django.test import override_settings
from django.views.debug import ExceptionReporter

from django_capi.client import (
    ErrorKind,
    GraphClient,
    GraphFailure,
    classify,
    graph_failure_fix,
    parse_response,
)
from django_capi.conf import capi_settings
from django_capi.testing import GraphEmulator


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
    assert response.request.url == f"{url}/v26.0/1/events"
    assert response.request.headers["Content-Type"] == "application/json"
    body = json.loads(response.request.body)
    assert body == {"data": [event], "access_token": "secret-token"}
    assert "secret-token" not in repr(response.request.body)


def test_stored_json_text_is_sent_as_the_event_itself():
    stored = '{"event_name": "Lead", "event_time": 1, "user_data": {"em": "\u00e9"}}'
    with GraphEmulator() as emulator:
        conf = {
            "PIXEL_ID": "1",
            "ACCESS_TOKEN": "test-token-not-real",
            "GRAPH_API_URL": emulator.url,
            "TEST_EVENT_CODE": "TEST1",
        }
        with override_settings(DJANGO_CAPI=conf):
            client = RecordingClient(capi_settings())
        client.post_events("1", [stored, {"event_name": "Purchase"}])
        client.close()
    body = json.loads(client.sent[0].request.body)
    assert body["data"] == [json.loads(stored), {"event_name": "Purchase"}]
    assert body["test_event_code"] == "TEST1"


def test_a_debug_page_of_a_failed_post_shows_no_token(rf):
    class Broken(GraphClient):
        def create_session(self):
            session = super().create_session()
            session.post = self.explode
            return session

        def explode(self, *args, **kwargs):
            raise RuntimeError("the adapter broke")

    conf = {"PIXEL_ID": "1", "ACCESS_TOKEN": "secret-token", "GRAPH_API_URL": "http://x"}
    with override_settings(DJANGO_CAPI=conf):
        client = Broken(capi_settings())
    with pytest.raises(RuntimeError) as raised:
        client.post_events("1", [{"event_name": "Lead"}])
    reporter = ExceptionReporter(rf.get("/"), raised.type, raised.value, raised.tb)
    # The frames past this test's own (whose source holds the token): the client's, the hook's.
    frames = [f for f in reporter.get_traceback_frames() if f["filename"] != __file__]
    assert [f["function"] for f in frames][:2] == ["sensitive_variables_wrapper", "post_events"]
    shown = str([(name, value) for frame in frames for name, value in frame["vars"]])
    assert "body" in shown
    assert "secret-token" not in shown


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


def test_the_fix_for_a_deprecated_api_version_names_the_setting():
    failure = GraphFailure(ErrorKind.SETUP, "deprecated", code=2635)
    assert "API_VERSION'] to v26.0" in graph_failure_fix(failure, 400, "1")
