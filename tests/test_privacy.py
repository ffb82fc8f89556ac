"""Raw customer data never reaches the database: only its hashes do."""

import pytest
from django.db import connection

from django_capi import OutboxEvent, send_event
from tests.database_dump import dump_database
from tests.factories import OrderFactory

pytestmark = pytest.mark.django_db(transaction=True)

RAW_EMAIL = "Private.Person@Mailbox-Secret.org"
RAW_PHONE = "+1 (425) 123-4567"


def test_the_raw_email_of_an_order_appears_nowhere_in_the_database():
    order = OrderFactory(email=RAW_EMAIL, phone=RAW_PHONE, first_name="Privatename")
    # The shop's own table holds the email, of course; the check is about everything else.
    order_table = order._meta.db_table
    order.status = "paid"
    order.save()
    send_event("Lead", user_data={"em": RAW_EMAIL, "ph": RAW_PHONE}, action_source="chat")
    send_event("Lead", user_data={"em": "not-an-email-" + RAW_EMAIL + "@"}, action_source="chat")
    send_event("Lead", user_data={"em": RAW_EMAIL, "nope": 1}, action_source="chat")

    assert OutboxEvent.objects.count() == 4
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {connection.ops.quote_name(order_table)}")  # noqa: S608
    dump = dump_database().lower()
    for secret in ("private.person", "mailbox-secret", "4251234567", "425) 123", "privatename"):
        assert secret not in dump
    assert "14251234567" not in dump
