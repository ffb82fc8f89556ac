"""`make bench`'s harness (bench/) runs end to end and writes every row of its report, and its
Graph API stand-in reads each body encoding Meta documents. Tiny sizes; timings are never
asserted (docs/benchmarks.md reports them)."""

import json
import os
import socket
from urllib.parse import urlsplit

import pytest
import requests

from bench import run
from bench import standin as standin_module
from bench.standin import StandIn

EVENTS = [{"event_name": "Purchase", "event_id": f"e{n}"} for n in range(3)]


@pytest.fixture
def standin():
    with StandIn() as server:
        yield server


def post(standin, **kwargs):
    return requests.post(f"{standin.url}/v25.0/1234567890/events", timeout=5, **kwargs)


def test_the_standin_counts_a_urlencoded_form(standin):
    answer = post(standin, data={"data": json.dumps(EVENTS), "access_token": "t"})
    assert answer.status_code == 200
    assert answer.json()["events_received"] == 3
    assert standin.stats()["encodings"] == {"form": 1}


def test_the_standin_answers_without_nagles_delay(standin, monkeypatch):
    """Headers and body are two writes: with Nagle's algorithm on its socket, the body would
    wait up to 40 ms for a kept-alive client's delayed ACK of the headers, on every request
    of the bench's drains (it did until 2026-12-05)."""
    accepted = []
    original = standin_module._Server.process_request

    def record(server, request, address):
        accepted.append(request)
        original(server, request, address)

    monkeypatch.setattr(standin_module._Server, "process_request", record)
    with requests.Session() as kept_alive:
        body = {"data": EVENTS, "access_token": "t"}
        answer = kept_alive.post(f"{standin.url}/v25.0/1/events", json=body, timeout=5)
        assert answer.status_code == 200
        (connection,) = accepted
        assert connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def test_the_standin_counts_a_multipart_form(standin):
    fields = {"data": (None, json.dumps(EVENTS)), "access_token": (None, "t")}
    answer = post(standin, files=fields)
    assert answer.json()["events_received"] == 3
    assert standin.stats()["encodings"] == {"multipart": 1}


def test_the_standin_counts_a_json_body_with_the_token_in_the_query(standin):
    answer = post(standin, json={"data": EVENTS}, params={"access_token": "t"})
    assert answer.json()["events_received"] == 3
    assert standin.stats() == {"events": 3, "requests": 1, "encodings": {"json": 1}}


def test_the_standin_counts_json_encoded_events_as_the_sdk_sends_them(standin):
    encoded = json.dumps([json.dumps(event) for event in EVENTS])
    answer = post(standin, data={"data": encoded}, params={"access_token": "t"})
    assert answer.json()["events_received"] == 3


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"data": EVENTS}, 190),  # no token
        ({"data": [], "access_token": "t"}, 100),
        ({"data": EVENTS * 334, "access_token": "t"}, 100),  # 1,002 events: over Meta's limit
    ],
)
def test_the_standin_refuses_what_graph_refuses_and_counts_nothing(standin, body, code):
    answer = post(standin, json=body)
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == code
    assert standin.stats()["events"] == 0


@pytest.mark.slow
def test_make_bench_writes_every_section_and_row(tmp_path):
    # The PostgreSQL pass of `make test` measures both databases; the SQLite pass SQLite only.
    url = os.environ.get("DATABASE_URL", "")
    on_postgres = url.startswith(("postgres://", "postgresql://"))
    databases = "sqlite,postgres" if on_postgres else "sqlite"
    server = urlsplit(url)._replace(path="/").geturl() if on_postgres else run.POSTGRES_SERVER
    output = tmp_path / "benchmarks.md"
    run.main(
        [
            *("--events", "30", "--orders", "10", "--saves", "3", "--naive-saves", "1"),
            *("--latency", "0.01", "--workers", "2", "--normalize-seconds", "0.05"),
            *("--backlog", "40", "--profile-events", "20", "--profile-saves", "3"),
            *("--databases", databases, "--postgres", server, "--output", str(output)),
        ]
    )
    text = output.read_text()
    for heading in (
        "## Machine",
        "## 1. Drain throughput",
        "## 2. Checkout cost",
        "## 3. Normalization",
        "## 4. Memory",
        "## Where the time goes",
        "## Method",
        "## Reproduce",
    ):
        assert heading in text
    cells = 2 if on_postgres else 1
    for label in (
        "django-capi `drain()` (events/s)",
        "SDK `EventRequest(...).execute()` (events/s)",
        "ratio django-capi / SDK",
        "unregistered model",
        "registered paid order",
        "**added by django-capi**",
        "SQL statements added (CaptureQueriesContext)",
        "naive: the SDK posting inside the checkout",
        "one statement's round trip (`SELECT 1`)",
    ):
        row = next(line for line in text.splitlines() if line.startswith(f"| {label}"))
        assert row.count("|") == cells + 2, row
    for label in ("`django_capi.normalize_user_data(...)`", "SDK `UserData(...).normalize()`"):
        row = next(line for line in text.splitlines() if line.startswith(f"| {label} |"))
        assert row.count("|") == 4, row  # one customer repeated, and distinct customers
    assert "| | one customer, repeated | distinct customers |" in text
    assert "| 4 | 4 |" in text  # the smaller memory backlog: 4 rows, all drained
    assert "| 40 | 40 |" in text
    assert ("django-capi, 2 workers (processes)" in text) is on_postgres
    assert ("SDK `BatchProcessor`" in text) is on_postgres
    # Two profiles (three with the drain on PostgreSQL), two sort orders each.
    assert text.count("filename:lineno(function)") == (6 if on_postgres else 4)
    assert ("### Drain on PostgreSQL" in text) is on_postgres
    assert ("(`pg_stat_user_tables`)" in text) is on_postgres
    assert "django_capi/delivery.py" in text
