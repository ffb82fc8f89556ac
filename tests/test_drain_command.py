"""``manage.py capi_drain``: what a cron run (or a service) delivers and reports."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

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
