"""Standing faults of the Graph emulator (``capi_fakegraph`` options, ``/_faults``), seen from
the sender: each one drives delivery down the path it stands for, over real HTTP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import requests
from django.core.management import CommandError, call_command
from django.utils import timezone

from django_capi import operations
from django_capi.delivery import drain
from django_capi.models import OutboxEvent, PixelState
from django_capi.testing.emulator import FAULTS_PATH
from django_capi.testing.faults import Conditions
from tests.factories import PIXEL, OutboxEventFactory

ROOT = Path(__file__).resolve().parent.parent

Status = OutboxEvent.Status


def make_due() -> None:
    # A second ago, not now: SQLite's clock (Now()) has milliseconds, Python's microseconds,
    # so "now" written from Python still lies ahead of a drain in the same millisecond.
    a_second_ago = timezone.now() - timedelta(seconds=1)
    OutboxEvent.objects.filter(status="pending").update(next_attempt_at=a_second_ago)
    PixelState.objects.update(paused_until=None, next_probe_at=a_second_ago)


def faults_url(emulator) -> str:
    return f"{emulator.url}{FAULTS_PATH}"


# --- the faults, as a sender meets them ---------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_fail_rate_answers_500_and_the_event_is_retried_once_lifted(capi_graph):
    capi_graph.conditions = Conditions(fail_rate=1)
    OutboxEventFactory()
    drain()
    row = OutboxEvent.objects.get()
    assert (row.status, row.attempts, row.last_http_status) == (Status.PENDING, 1, 500)
    assert capi_graph.received_events() == []

    capi_graph.conditions = Conditions()
    make_due()
    assert drain().delivered == 1
    assert len(capi_graph.event_ids(include_duplicates=False)) == 1


@pytest.mark.django_db(transaction=True)
def test_timeout_rate_leaves_the_sender_without_an_answer_and_nothing_received(
    capi_graph, settings
):
    settings.DJANGO_CAPI = {**settings.DJANGO_CAPI, "READ_TIMEOUT": 0.5, "CONNECT_TIMEOUT": 0.5}
    capi_graph.conditions = Conditions(timeout_rate=1, timeout_seconds=5)
    OutboxEventFactory()
    drain()
    row = OutboxEvent.objects.get()
    assert (row.status, row.attempts, row.last_http_status) == (Status.PENDING, 1, None)
    assert "no answer from the Graph API in time" in row.last_error
    assert capi_graph.received_events() == []


@pytest.mark.django_db(transaction=True)
def test_latency_past_the_read_timeout_loses_the_answer_and_the_retry_is_a_duplicate(
    capi_graph, settings
):
    settings.DJANGO_CAPI = {**settings.DJANGO_CAPI, "READ_TIMEOUT": 0.5, "CONNECT_TIMEOUT": 0.5}
    capi_graph.conditions = Conditions(latency_ms=3000)
    OutboxEventFactory()
    drain()
    assert OutboxEvent.objects.get().status == Status.PENDING
    # Meta had it although the sender saw a timeout, as latency on the real API does.
    assert len(capi_graph.received_events()) == 1

    capi_graph.conditions = Conditions()
    make_due()
    assert drain().delivered == 1
    assert len(capi_graph.duplicates) == 1
    assert len(capi_graph.event_ids(include_duplicates=False)) == 1


@pytest.mark.django_db(transaction=True)
def test_rate_limit_rate_pauses_the_pixel_for_the_wait_graph_announces(capi_graph):
    capi_graph.conditions = Conditions(rate_limit_rate=1)
    OutboxEventFactory.create_batch(3)
    drain()
    state = PixelState.objects.get(pixel_id=PIXEL)
    assert state.paused_until is not None
    assert state.paused_until > timezone.now() + timedelta(seconds=50)  # 1 minute announced
    assert capi_graph.requests[0].error["code"] == 613
    assert {row.attempts for row in OutboxEvent.objects.all()} == {0}
    assert drain().requests == 0  # paused: nothing sent


@pytest.mark.django_db(transaction=True)
def test_a_token_window_opens_the_circuit_and_lifting_it_delivers_everything(capi_graph):
    answer = requests.post(
        faults_url(capi_graph), json={"token_invalid": True, "for_seconds": 600}, timeout=5
    )
    assert answer.status_code == 200
    assert answer.json()["window"] is True
    OutboxEventFactory.create_batch(4)
    drain()
    assert PixelState.objects.get().circuit_opened_at is not None
    assert capi_graph.requests[-1].error["code"] == 190
    assert {(row.status, row.attempts) for row in OutboxEvent.objects.all()} == {("pending", 0)}

    assert requests.delete(faults_url(capi_graph), timeout=5).json()["window"] is False
    make_due()
    assert drain().delivered == 4
    assert PixelState.objects.get().circuit_opened_at is None


@pytest.mark.django_db(transaction=True)
def test_rejected_event_names_fail_alone_with_the_message_and_replay_once_lifted(capi_graph):
    capi_graph.conditions = Conditions(
        reject_event_names=frozenset({"CompleteRegistration"}), reject_rate=1
    )
    OutboxEventFactory.create_batch(3, event_name="Lead")
    rejected = OutboxEventFactory(event_name="CompleteRegistration")
    drain()
    rejected.refresh_from_db()
    assert rejected.status == Status.FAILED
    assert rejected.failure_reason == OutboxEvent.FailureReason.REJECTED
    assert "rejects this CompleteRegistration event on purpose" in rejected.last_error
    assert OutboxEvent.objects.filter(status=Status.DELIVERED).count() == 3
    assert {event.event_name for event in capi_graph.received_events()} == {"Lead"}

    capi_graph.conditions = Conditions()
    assert operations.replay(OutboxEvent.objects.filter(pk=rejected.pk)).replayed == 1
    assert drain().delivered == 1
    assert rejected.event_id in capi_graph.event_ids()


def test_a_reject_rate_picks_the_same_events_every_time():
    conditions = Conditions(reject_rate=0.5)
    events = [{"event_name": "Lead", "event_id": f"id-{n}"} for n in range(200)]
    first = [conditions.rejects(event) for event in events]
    assert first == [conditions.rejects(event) for event in events]
    assert 50 < sum(first) < 150
    assert not Conditions(reject_event_names=frozenset({"Purchase"}), reject_rate=1).rejects(
        events[0]
    )


def test_rates_beyond_one_are_refused():
    with pytest.raises(ValueError, match="must not exceed 1"):
        Conditions(fail_rate=0.6, timeout_rate=0.6)
    with pytest.raises(ValueError, match="between 0 and 1"):
        Conditions(reject_rate=2)


# --- the control endpoint -------------------------------------------------------------------


def test_the_control_endpoint_shows_opens_and_lifts_a_window_on_top_of_the_base():
    from django_capi.testing import GraphEmulator

    changes: list[str] = []
    base = Conditions(latency_ms=5)
    with GraphEmulator(conditions=base, on_faults=changes.append) as emulator:
        url = faults_url(emulator)
        state = requests.get(url, timeout=5).json()
        assert state["active"]["latency_ms"] == 5
        assert state["window"] is False

        body = {"fail_rate": 0.5, "reject_event_names": ["Purchase"]}
        state = requests.post(url, json=body, timeout=5).json()
        assert state["active"]["fail_rate"] == 0.5
        assert state["active"]["latency_ms"] == 5  # kept from the base
        assert state["active"]["reject_event_names"] == ["Purchase"]
        assert state["active"]["reject_rate"] == 1  # a name alone rejects all of them
        assert state["window"] is True
        assert state["window_seconds_left"] is None
        assert emulator.conditions.fail_rate == 0.5

        state = requests.delete(url, timeout=5).json()
        assert state["active"] == base.as_json()
        assert changes == [
            "latency 5 ms; 50% HTTP 500; 100% of Purchase events rejected",
            "latency 5 ms",
        ]
        # Not Graph requests: nothing recorded.
        assert emulator.requests == []


def test_clear_faults_and_reset_end_the_conditions_too():
    from django_capi.testing import GraphEmulator

    emulator = GraphEmulator(conditions=Conditions(fail_rate=1))
    emulator.open_window(Conditions(token_invalid=True))
    emulator.clear_faults()
    assert emulator.conditions == Conditions()
    emulator.conditions = Conditions(latency_ms=1)
    emulator.reset()
    assert emulator.conditions == Conditions()


def test_a_window_with_for_seconds_ends_by_itself():
    from django_capi.testing import GraphEmulator

    with GraphEmulator() as emulator:
        url = faults_url(emulator)
        state = requests.post(url, json={"fail_rate": 1, "for_seconds": 0.3}, timeout=5).json()
        assert state["active"]["fail_rate"] == 1
        deadline = time.monotonic() + 10
        while requests.get(url, timeout=5).json()["window"]:
            assert time.monotonic() < deadline, "the window never ended"
            time.sleep(0.05)
        assert emulator.conditions == Conditions()


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"{", "Expecting"),
        (b"[1]", "send a JSON object"),
        (b'{"fail_rate": 2}', "between 0 and 1"),
        (b'{"fail_rate": "all"}', "fail_rate must be a number"),
        (b'{"oops": 1}', "unknown field(s): oops"),
        (b'{"fail_rate": 1, "for_seconds": -1}', "for_seconds must be a positive number"),
        (b'{"token_invalid": 1}', "true or false"),
        # Python's json reads NaN, Infinity and 1e400 (Infinity too): no wait can be that long.
        (b'{"latency_ms": NaN}', "latency_ms must be a finite number"),
        (b'{"latency_ms": 1e300}', "latency_ms must be a finite number"),
        (b'{"timeout_rate": 1, "timeout_seconds": Infinity}', "timeout_seconds must be"),
        (b'{"fail_rate": 1, "for_seconds": Infinity}', "for_seconds must be a positive number"),
        (b"[" * 100_000, "nested too deeply"),
    ],
)
def test_the_control_endpoint_refuses_bad_windows_and_keeps_the_faults(body, error):
    from django_capi.testing import GraphEmulator

    with GraphEmulator() as emulator:
        answer = requests.post(faults_url(emulator), data=body, timeout=5)
        assert answer.status_code == 400
        assert error in answer.json()["error"]
        assert emulator.conditions == Conditions()


# --- the command ------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_capi_fakegraph_applies_its_options_and_logs_window_changes_and_token_checks():
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "django",
            "capi_fakegraph",
            "--settings=tests.settings",
            "--port",
            str(port),
            "--token",
            "fake-token",
            "--reject-event-name",
            "Lead",
            "--token-invalid-for",
            "600",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)},
    )
    events = f"{url}/v25.0/{PIXEL}/events"
    lead = {
        "event_name": "Lead",
        "event_time": int(time.time()),
        "event_id": "lead-1",
        "action_source": "system_generated",
        "user_data": {"external_id": "customer-1"},
    }
    try:
        deadline = time.monotonic() + 60  # a deadline, not a wait: slow on a loaded machine
        while True:
            try:
                state = requests.get(f"{url}{FAULTS_PATH}", timeout=1).json()
                break
            except requests.exceptions.ConnectionError:
                assert process.poll() is None, process.communicate()
                assert time.monotonic() < deadline, "capi_fakegraph did not start"
                time.sleep(0.05)
        assert state["active"]["token_invalid"] is True
        assert state["window_seconds_left"] > 500
        answer = requests.post(events, data={"access_token": "fake-token", "data": "[]"}, timeout=5)
        assert answer.json()["error"]["code"] == 190  # the token window

        requests.delete(f"{url}{FAULTS_PATH}", timeout=5)
        answer = requests.post(
            events, json={"access_token": "fake-token", "data": [lead]}, timeout=5
        )
        assert answer.status_code == 400
        assert "rejects this Lead event on purpose" in answer.json()["error"]["error_user_msg"]
        # capi_doctor --check-token's probe: no events.
        requests.post(events, data={"access_token": "fake-token", "data": "[]"}, timeout=5)
        requests.post(f"{url}{FAULTS_PATH}", json={"reject_event_names": []}, timeout=5)
        answer = requests.post(
            events, json={"access_token": "fake-token", "data": [lead]}, timeout=5
        )
        assert answer.json()["events_received"] == 1
    finally:
        process.terminate()
        stdout, stderr = process.communicate(timeout=10)
    assert process.returncode == 0, stderr
    assert "Faults: 100% of Lead events rejected." in stdout
    assert "The token is refused for the first 600 s." in stdout
    assert "faults now: 100% of Lead events rejected" in stdout  # the DELETE
    assert "faults now: no faults" in stdout  # the POST
    assert f"token check POST /v25.0/{PIXEL}/events pixel={PIXEL}: token and pixel accepted" in (
        stdout
    )
    assert "error 100/2804011: The emulator rejects this Lead event on purpose" in stdout
    assert "fake-token" not in stdout + stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--fail-rate", "2"], "a share from 0 to 1"),
        (["--latency-ms", "-5"], "cannot be negative"),
        (["--fail-rate", "0.6", "--timeout-rate", "0.6"], "must not exceed 1"),
        (["--latency-ms", "nan"], "not a finite number"),
        (["--timeout-seconds", "inf"], "not a finite number"),
        (["--token-invalid-for", "1e999"], "not a finite number"),
    ],
)
def test_capi_fakegraph_refuses_impossible_options(args, message):
    with pytest.raises(CommandError, match=message):
        call_command("capi_fakegraph", *args)


def test_capi_fakegraph_help_documents_its_control_and_listing_endpoints():
    from django_capi.management.commands.capi_fakegraph import Command

    text = Command().create_parser("manage.py", "capi_fakegraph").format_help()
    assert "DELETE /_faults  lift the window" in text
    assert "GET    /_received  the events, duplicates flagged" in text
