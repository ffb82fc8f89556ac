"""``manage.py capi_drain``: what a cron run (or a service) delivers and reports."""

from __future__ import annotations

import logging
import signal
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from django_capi.delivery import drain
from django_capi.management.commands import capi_drain
from tests.factories import OutboxEventFactory

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.django_db(transaction=True, databases=["default", "other"])
def test_capi_drain_delivers_what_is_due_in_every_database_and_reports(capi_graph):
    OutboxEventFactory.create_batch(3)
    OutboxEventFactory.bulk_create(2, using="other")
    out = StringIO()
    call_command("capi_drain", stdout=out)
    assert "default: claimed 3, delivered 3" in out.getvalue()
    assert "other: claimed 2, delivered 2" in out.getvalue()
    assert len(capi_graph.event_ids()) == 5


def test_capi_drain_refuses_an_unknown_database():
    with pytest.raises(CommandError, match="no outbox in database"):
        call_command("capi_drain", "--database", "nope")


def _lines(out: StringIO) -> list[str]:
    return [line for line in out.getvalue().splitlines() if line]


def test_capi_drain_shows_progress_on_a_backlog_and_each_line_once(capi_graph, settings, caplog):
    settings.DJANGO_CAPI = {**settings.DJANGO_CAPI, "BATCH_SIZE": 2}
    OutboxEventFactory.create_batch(7)
    out = StringIO()
    with caplog.at_level(logging.INFO, logger="django_capi"):
        call_command(
            "capi_drain", "--database", "default", "--progress-every", "0.000001", stdout=out
        )
    lines = _lines(out)
    progress = [line for line in lines if line.startswith("default: … ")]
    # A line per batch here (the interval is tiny), each with the running total and a rate.
    assert [line.split(",")[0] for line in progress] == [
        "default: … claimed 2",
        "default: … claimed 4",
        "default: … claimed 6",
        "default: … claimed 7",
    ]
    assert all("events/s)" in line for line in progress)
    assert lines[-1].startswith("default: claimed 7, delivered 7, failed 0")
    assert lines[-1].endswith("unfinished 0")
    assert len(lines) == len(set(lines))
    # The command prints its report: logging it too would show it twice on a console.
    assert not [record for record in caplog.records if "drain of" in record.getMessage()]


def test_capi_drain_prints_a_summary_only_with_progress_off(capi_graph, settings):
    settings.DJANGO_CAPI = {**settings.DJANGO_CAPI, "BATCH_SIZE": 2}
    OutboxEventFactory.create_batch(5)
    out = StringIO()
    call_command("capi_drain", "--database", "default", "--progress-every", "0", stdout=out)
    summary = "claimed 5, delivered 5, failed 0, retrying 0, postponed 0, requests 3, unfinished 0"
    assert _lines(out) == [f"default: {summary}"]


def test_drain_still_logs_its_summary_for_other_callers(capi_graph, caplog):
    OutboxEventFactory()
    with caplog.at_level(logging.INFO, logger="django_capi"):
        drain()
    assert any("drain of 'default': claimed 1" in r.getMessage() for r in caplog.records)


def test_a_drain_stopped_by_its_batch_limit_is_unfinished_only_if_rows_may_be_left(
    capi_graph, settings
):
    settings.DJANGO_CAPI = {**settings.DJANGO_CAPI, "BATCH_SIZE": 2}
    OutboxEventFactory.create_batch(3)
    assert drain(max_batches=1).unfinished == 1  # a full batch: more may be due
    assert drain(max_batches=1).unfinished == 0  # one row: it took all that was due


def test_capi_drain_loop_reports_caught_up_without_unfinished(capi_graph, settings, monkeypatch):
    settings.DJANGO_CAPI = {**settings.DJANGO_CAPI, "BATCH_SIZE": 2}
    OutboxEventFactory.create_batch(5)
    sigint = signal.getsignal(signal.SIGINT)

    def stop_when_idle(self, seconds):
        self.stopping = True  # the first idle poll ends the test's loop

    monkeypatch.setattr(capi_drain.Command, "_sleep", stop_when_idle)
    out = StringIO()
    call_command(
        "capi_drain", "--loop", "--database", "default", "--progress-every", "0", stdout=out
    )
    lines = _lines(out)
    assert lines[0].startswith("Draining the outbox")
    assert len(lines) == 3
    assert lines[1].startswith("default: caught up: claimed 5, delivered 5, failed 0")
    assert lines[2] == "Stopped."
    assert "unfinished" not in out.getvalue()
    assert len(capi_graph.event_ids()) == 5
    assert signal.getsignal(signal.SIGINT) is sigint  # Ctrl-C works again after it


def test_capi_drain_loop_drains_a_backlog_in_one_drain_and_stops_after_a_batch(
    capi_graph, settings, monkeypatch
):
    settings.DJANGO_CAPI = {**settings.DJANGO_CAPI, "BATCH_SIZE": 2}
    OutboxEventFactory.create_batch(5)
    drains, command = [], capi_drain.Command()

    def counted(**kwargs):
        drains.append(kwargs)
        return drain(**kwargs)

    def stop_when_idle(self, seconds):
        self.stopping = True

    monkeypatch.setattr(capi_drain, "drain", counted)
    monkeypatch.setattr(capi_drain.Command, "_sleep", stop_when_idle)
    call_command(command, "--loop", "--database", "default", stdout=StringIO())
    # The backlog in one drain (so its batches are claimed ahead), then the idle poll.
    assert len(drains) == 2
    assert len(capi_graph.event_ids()) == 5
    # Its drains stop once the command is told to (test_delivery: after the batch in hand).
    assert [kwargs["should_stop"]() for kwargs in drains] == [True, True]
