"""Model saves become outbox rows in the same transaction, exactly once, never breaking save()."""

import logging
from decimal import Decimal

import pytest
from django.db import DatabaseError, connection, transaction
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

from django_capi import ModelEvent, OutboxEvent, event_id_for, register
from django_capi.constants import match_key_bits
from django_capi.registry import default_event_id
from tests.factories import LeadFactory, OrderFactory
from tests.shop.models import GiftOrder, Lead, Order

#: Meta's own fbp example [FBC]: a browser id the missing-browser warning does not mind.
FBP = "fb.1.1596403881668.1116446470"

pytestmark = pytest.mark.django_db(transaction=True)


def pay(order: Order) -> Order:
    order.status = "paid"
    order.save()
    return order


def test_a_paid_order_writes_one_pending_purchase():
    with transaction.atomic():
        order = OrderFactory(total=Decimal("42.50"))
        assert not OutboxEvent.objects.exists()  # not paid yet
        pay(order)
    row = OutboxEvent.objects.get()
    assert row.status == OutboxEvent.Status.PENDING
    assert (row.pixel_id, row.event_name, row.action_source) == (
        "1234567890",
        "Purchase",
        "website",
    )
    assert row.event_id == event_id_for(order, "Purchase")
    assert row.source == order
    assert row.payload["custom_data"] == {"value": 42.5, "currency": "EUR"}
    assert row.payload["user_data"]["ph"] == (
        "e323ec626319ca94ee8bff2e4c87cf613be6ea19919ed1364124e16807ab3176"  # 16505551212
    )
    assert row.payload["user_data"]["client_ip_address"] == "203.0.113.7"
    assert row.attempts == 0
    assert row.next_attempt_at is not None
    assert row.created_at is not None


def test_a_row_keeps_which_match_keys_its_payload_has():
    """``match_keys`` (what the health page counts) follows the payload: written with it at
    the capture, and again by a save that changes the payload."""
    pay(OrderFactory())
    row = OutboxEvent.objects.get()
    assert row.match_keys == match_key_bits(row.payload["user_data"])
    assert row.match_keys & 0b1  # em
    del row.payload["user_data"]["em"]
    row.save(update_fields=["payload"])
    row.refresh_from_db()
    assert "em" not in row.payload["user_data"]
    assert row.match_keys == match_key_bits(row.payload["user_data"])
    assert not row.match_keys & 0b1


def test_rollback_leaves_no_row():
    order = OrderFactory()
    with pytest.raises(RuntimeError), transaction.atomic():
        pay(order)
        assert OutboxEvent.objects.count() == 1  # written inside the transaction…
        raise RuntimeError("payment webhook failed")
    assert not OutboxEvent.objects.exists()  # …and gone with it


def test_saving_again_keeps_one_row():
    order = pay(OrderFactory())
    first = OutboxEvent.objects.get()
    order.total = Decimal("1.00")
    order.save()
    pay(order)
    assert OutboxEvent.objects.get() == first
    assert OutboxEvent.objects.get().payload == first.payload


def test_a_created_lead_is_a_lead_and_later_saves_are_not():
    lead = LeadFactory()
    lead.save()
    row = OutboxEvent.objects.get()
    assert (row.event_name, row.action_source, row.status) == (
        "Lead",
        "system_generated",
        "pending",
    )
    assert row.source == lead


def test_loaddata_style_raw_saves_are_not_conversions():
    order = OrderFactory(status="paid")
    OutboxEvent.objects.all().delete()
    Order.save_base(order, raw=True)
    assert not OutboxEvent.objects.exists()


def test_event_ids_are_stable_and_distinct():
    order = OrderFactory()
    assert event_id_for(order, "Purchase") == event_id_for(
        Order.objects.get(pk=order.pk), "Purchase"
    )
    assert event_id_for(order, "Purchase") != event_id_for(order, "Lead")
    assert event_id_for(order, "Purchase") != event_id_for(OrderFactory(), "Purchase")
    lead = Lead.objects.create(pk=order.pk, email="x@y.co")
    assert event_id_for(lead, "Purchase") != event_id_for(order, "Purchase")


@pytest.mark.usefixtures("isolated_registry")
def test_several_events_on_one_model():
    @register(Order)
    class OrderCreated(ModelEvent[Order]):
        event_name = "InitiateCheckout"
        action_source = "system_generated"

        def user_data(self, instance):
            return {"em": instance.email}

    order = OrderFactory()
    pay(order)
    names = sorted(OutboxEvent.objects.values_list("event_name", flat=True))
    assert names == ["InitiateCheckout", "Purchase"]


@pytest.mark.usefixtures("isolated_registry")
def test_a_custom_event_id_hook_is_used_by_rows_and_the_pixel():
    @register(Lead)
    class Signup(ModelEvent[Lead]):
        event_name = "CompleteRegistration"
        action_source = "system_generated"

        def event_id(self, instance):
            return f"signup-{instance.pk}"

        def user_data(self, instance):
            return {"em": instance.email}

    lead = LeadFactory()
    assert (
        OutboxEvent.objects.get(event_name="CompleteRegistration").event_id == f"signup-{lead.pk}"
    )
    assert event_id_for(lead, "CompleteRegistration") == f"signup-{lead.pk}"


@pytest.mark.usefixtures("isolated_registry")
@pytest.mark.parametrize("hook", ["should_send", "event_id", "user_data", "custom_data"])
def test_a_raising_hook_never_breaks_the_save(hook, caplog):
    def boom(self, *args):
        raise KeyError("shipping_address")

    @register(Lead)
    class Broken(ModelEvent[Lead]):
        event_name = "Contact"
        action_source = "system_generated"

        def user_data(self, instance):
            return {"em": instance.email}

    setattr(Broken, hook, boom)
    with caplog.at_level(logging.WARNING, logger="django_capi"), transaction.atomic():
        lead = Lead.objects.create(email="broken@example.com")
    assert Lead.objects.filter(pk=lead.pk).exists()
    row = OutboxEvent.objects.get(event_name="Contact")
    assert row.status == OutboxEvent.Status.FAILED
    assert row.failure_reason == OutboxEvent.FailureReason.INVALID
    assert row.last_error == f"Broken.{hook}() raised KeyError; the traceback is in the log"
    assert row.event_id == default_event_id(lead, "Contact")
    assert row.source == lead
    assert any(
        "Contact" in record.getMessage() and str(lead.pk) in record.getMessage()
        for record in caplog.records
    )
    assert OutboxEvent.objects.get(event_name="Lead").status == OutboxEvent.Status.PENDING


def test_an_invalid_event_becomes_a_failed_row_that_says_why():
    order = OrderFactory(user_agent="", currency="EUX")
    pay(order)
    row = OutboxEvent.objects.get()
    assert row.status == OutboxEvent.Status.FAILED
    assert "website event without client_user_agent" in row.last_error
    assert "ISO 4217" in row.last_error
    assert row.payload == {}


def test_fixing_the_data_heals_a_failed_row_on_the_next_save():
    order = pay(OrderFactory(currency="EUX"))
    failed = OutboxEvent.objects.get()
    assert failed.status == OutboxEvent.Status.FAILED
    order.currency = "EUR"
    order.save()
    healed = OutboxEvent.objects.get()
    assert healed.pk == failed.pk
    assert healed.status == OutboxEvent.Status.PENDING
    assert healed.last_error == ""
    assert healed.payload["custom_data"]["currency"] == "EUR"


def test_a_delivered_row_is_never_rebuilt():
    order = pay(OrderFactory())
    OutboxEvent.objects.update(status=OutboxEvent.Status.DELIVERED)
    order.total = Decimal("999.00")
    order.save()
    row = OutboxEvent.objects.get()
    assert row.status == OutboxEvent.Status.DELIVERED
    assert row.payload["custom_data"]["value"] != 999


def test_dropped_values_are_kept_as_warnings_on_the_row():
    pay(OrderFactory(phone="12", browser={"client_user_agent": "UA/1", "fbp": FBP}))
    row = OutboxEvent.objects.get()
    assert row.status == OutboxEvent.Status.PENDING
    assert "ph" not in row.payload["user_data"]
    assert [w.split(":")[0] for w in row.warnings] == ["ph"]


def test_a_missing_pixel_id_is_a_visible_failure_not_an_exception():
    with override_settings(DJANGO_CAPI={}):
        order = pay(OrderFactory())
    row = OutboxEvent.objects.get()
    assert row.status == OutboxEvent.Status.FAILED
    assert "PIXEL_ID" in row.last_error
    assert Order.objects.get(pk=order.pk).status == "paid"


def test_broken_settings_never_break_the_save():
    with override_settings(DJANGO_CAPI={"PIXEL_ID": "1", "NOPE": 1}):
        order = pay(OrderFactory())
    assert Order.objects.get(pk=order.pk).status == "paid"
    assert "unknown key(s) 'NOPE'" in OutboxEvent.objects.get().last_error


def test_hook_errors_are_stored_without_personal_data(isolated_registry):
    @register(Lead)
    class Leaky(ModelEvent[Lead]):
        event_name = "Contact"
        action_source = "system_generated"

        def user_data(self, instance):
            raise ValueError(f"bad customer {instance.email} tel +1 650 555 1212")

    LeadFactory(email="leaky.person@example.com")
    error = OutboxEvent.objects.get(event_name="Contact").last_error
    assert "leaky.person" not in error
    assert "555" not in error
    assert error == "Leaky.user_data() raised ValueError; the traceback is in the log"


def failing_query(*args, **kwargs):
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM table_that_does_not_exist")


def test_an_unmigrated_outbox_is_logged_and_the_save_commits(monkeypatch, caplog):
    # The first row of a database in a process is inserted in a savepoint, which is what
    # keeps the transaction usable on PostgreSQL when the table is missing.
    monkeypatch.setattr("django_capi.events._proven_outboxes", set())
    table = connection.ops.quote_name(OutboxEvent._meta.db_table)
    with caplog.at_level(logging.ERROR, logger="django_capi"), transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(f"ALTER TABLE {table} RENAME TO capi_outbox_elsewhere")
        order = pay(OrderFactory())
        Lead.objects.create(email="after@example.com")  # the transaction is still usable
        with connection.cursor() as cursor:
            cursor.execute(f"ALTER TABLE capi_outbox_elsewhere RENAME TO {table}")
    assert Order.objects.get(pk=order.pk).status == "paid"
    assert "could not record Purchase for shop.Order pk=" in caplog.text
    assert not OutboxEvent.objects.exists()


def test_a_paid_order_adds_one_statement_to_its_save_the_outbox_insert():
    pay(OrderFactory())  # once per process: the first row's savepoint, the ContentType cache
    order = OrderFactory()
    with transaction.atomic(), CaptureQueriesContext(connection) as captured:
        pay(order)
    statements = [query["sql"] for query in captured]
    assert [sql.split(None, 1)[0] for sql in statements] == ["UPDATE", "INSERT"], statements
    assert OutboxEvent._meta.db_table in statements[1]
    assert OutboxEvent.objects.filter(event_id=event_id_for(order, "Purchase")).exists()


@pytest.mark.usefixtures("isolated_registry")
def test_a_hook_writing_inside_djangos_own_transactions_keeps_its_writes():
    # bulk_create() opens atomic(savepoint=False); its first statement opens the savepoint
    # around the hook, which must stay out of Django's stack of savepoints.
    @register(Lead)
    class Auditing(ModelEvent[Lead]):
        event_name = "Contact"
        action_source = "system_generated"

        def user_data(self, instance):
            Order.objects.bulk_create([Order(email="audit@example.com")])
            return {"em": instance.email}

    with transaction.atomic():
        lead = Lead.objects.create(email="a@example.com")
        with transaction.atomic():
            Order.objects.create(email="inner@example.com")
    assert Lead.objects.filter(pk=lead.pk).exists()
    assert set(Order.objects.values_list("email", flat=True)) == {
        "audit@example.com",
        "inner@example.com",
    }
    assert OutboxEvent.objects.get(event_name="Contact").status == OutboxEvent.Status.PENDING


@pytest.mark.usefixtures("isolated_registry")
@pytest.mark.parametrize("hook", ["should_send", "user_data"])
def test_a_hook_whose_query_fails_does_not_abort_the_shops_transaction(hook):
    @register(Lead)
    class Querying(ModelEvent[Lead]):
        event_name = "Contact"
        action_source = "system_generated"

        def user_data(self, instance):
            return {"em": instance.email}

    setattr(Querying, hook, failing_query)
    with transaction.atomic():
        lead = Lead.objects.create(email="q@example.com")
        Order.objects.create(email="still-usable@example.com")  # would raise on PostgreSQL
    assert Lead.objects.filter(pk=lead.pk).exists()
    row = OutboxEvent.objects.get(event_name="Contact")
    assert row.status == OutboxEvent.Status.FAILED
    assert row.last_error.startswith(f"Querying.{hook}() raised ")


@pytest.mark.usefixtures("isolated_registry")
@pytest.mark.parametrize("bad_id", [None, "", "x" * 101, 3.5])
def test_an_unusable_event_id_is_a_failure_under_the_default_id(bad_id):
    @register(Lead)
    class BadId(ModelEvent[Lead]):
        event_name = "Contact"
        action_source = "system_generated"

        def event_id(self, instance):
            return bad_id

        def user_data(self, instance):
            return {"em": instance.email}

    leads = [LeadFactory(), LeadFactory(), LeadFactory()]
    rows = OutboxEvent.objects.filter(event_name="Contact").order_by("pk")
    # One row per lead: a constant bad id must not collapse three events into one.
    assert [row.event_id for row in rows] == [default_event_id(lead, "Contact") for lead in leads]
    assert all(row.status == OutboxEvent.Status.FAILED for row in rows)
    assert "BadId.event_id() must return a non-empty string" in rows[0].last_error


@pytest.mark.usefixtures("isolated_registry")
def test_an_integer_event_id_such_as_an_order_number_is_accepted():
    @register(Lead)
    class Numbered(ModelEvent[Lead]):
        event_name = "Contact"
        action_source = "system_generated"

        def event_id(self, instance):
            return 1000 + instance.pk

        def user_data(self, instance):
            return {"em": instance.email}

    lead = LeadFactory()
    row = OutboxEvent.objects.get(event_name="Contact")
    assert (row.event_id, row.status) == (str(1000 + lead.pk), OutboxEvent.Status.PENDING)
    assert event_id_for(lead, "Contact") == row.event_id


def test_a_multi_table_child_shares_its_parents_event_ids():
    gift = GiftOrder.objects.create(
        email="gift@example.com", status="paid", total=5, user_agent="UA/1", ip="203.0.113.3"
    )
    row = OutboxEvent.objects.get()
    parent = Order.objects.get(pk=gift.pk)
    assert row.event_id == event_id_for(parent, "Purchase") == event_id_for(gift, "Purchase")


def test_a_failing_query_for_a_duplicate_does_not_poison_the_callers_transaction(
    monkeypatch, caplog
):
    order = pay(OrderFactory())
    monkeypatch.setattr("django_capi.events._find", failing_query)
    with caplog.at_level(logging.ERROR, logger="django_capi"), transaction.atomic():
        order.save()  # the event again: its key is taken, the existing row is looked up
        Lead.objects.create(email="after@example.com")  # the transaction is still usable
    assert Lead.objects.filter(email="after@example.com").exists()
    assert "could not record Purchase" in caplog.text
    assert OutboxEvent.objects.get(event_name="Purchase").status == OutboxEvent.Status.PENDING


def test_recording_outside_a_transaction_warns_once(monkeypatch, caplog):
    monkeypatch.setattr("django_capi.events._warned_autocommit", set())
    with caplog.at_level(logging.WARNING, logger="django_capi"):
        pay(OrderFactory())
        pay(OrderFactory())
    assert caplog.text.count("outside a transaction") == 1
    assert OutboxEvent.objects.count() == 2


@pytest.mark.usefixtures("isolated_registry")
def test_a_nul_in_custom_data_is_stored_as_a_replacement_character_not_lost():
    # On PostgreSQL the insert failed after the save: no row, the event lost with a log line.
    @register(Lead)
    class Named(ModelEvent[Lead]):
        event_name = "Contact"
        action_source = "system_generated"

        def user_data(self, instance):
            return {"em": instance.email}

        def custom_data(self, instance):
            return {"content_name": "x\x00"}

    with transaction.atomic():
        LeadFactory()
    row = OutboxEvent.objects.get(event_name="Contact")
    assert row.status == OutboxEvent.Status.PENDING
    assert row.payload["custom_data"] == {"content_name": "x\ufffd"}
    assert row.warnings == [
        (
            "custom_data['content_name']: NUL or lone surrogates, which no database stores, "
            "became U+FFFD"
        )
    ]


@pytest.mark.usefixtures("isolated_registry")
def test_event_ids_that_clean_to_the_same_text_keep_their_own_events():
    # "\x00" and "\ud800" both become U+FFFD: the second save found the first one's row and
    # its event was lost.
    ids = {}

    @register(Lead)
    class Named(ModelEvent[Lead]):
        event_name = "Contact"
        action_source = "system_generated"

        def user_data(self, instance):
            return {"em": instance.email}

        def event_id(self, instance):
            return ids[instance.email]

    ids = {"a@example.com": "lead-\x00", "b@example.com": "lead-\ud800"}
    with transaction.atomic():
        first = LeadFactory(email="a@example.com")
        second = LeadFactory(email="b@example.com")
        first.save()  # the same raw id still finds its own row
    rows = OutboxEvent.objects.filter(event_name="Contact").order_by("pk")
    assert [row.source_id for row in rows] == [str(first.pk), str(second.pk)]
    assert [row.status for row in rows] == [OutboxEvent.Status.PENDING] * 2
    for row in rows:
        assert row.event_id.startswith("lead-\ufffd-")
        assert row.payload["event_id"] == row.event_id  # what Meta deduplicates on
        assert "the event_id got a suffix derived from the original" in row.warnings[0]
    assert rows[0].event_id != rows[1].event_id


def swallowing_query(*args, **kwargs):
    """A hook that runs a query, which fails, and catches the error itself."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT * FROM table_that_does_not_exist")
    except DatabaseError:
        pass


@pytest.mark.usefixtures("isolated_registry")
@pytest.mark.parametrize("hook", ["should_send", "event_id", "request_context", "custom_data"])
def test_a_hook_that_swallows_its_own_database_error_still_records_the_event(hook):
    # On PostgreSQL the savepoint around the hook could not be released any more, and the
    # event was lost with a log line.
    @register(Lead)
    class Swallowing(ModelEvent[Lead]):
        event_name = "Contact"
        action_source = "system_generated"

        def user_data(self, instance):
            return {"em": instance.email}

    def hook_body(self, instance, *args):
        swallowing_query()
        return {
            "should_send": True,
            "event_id": f"contact-{instance.pk}",
            "request_context": {},
            "custom_data": {"content_name": "x"},
        }[hook]

    setattr(Swallowing, hook, hook_body)
    with transaction.atomic():
        lead = Lead.objects.create(email="s@example.com")
        Order.objects.create(email="still-usable@example.com")  # would raise on PostgreSQL
    assert Lead.objects.filter(pk=lead.pk).exists()
    row = OutboxEvent.objects.get(event_name="Contact")
    assert row.status == OutboxEvent.Status.PENDING, row.last_error


@pytest.mark.usefixtures("isolated_registry")
def test_a_should_send_whose_truth_raises_is_a_failed_row():
    class Ambiguous:
        def __bool__(self):
            raise ValueError("the truth value of an array is ambiguous")

    @register(Lead)
    class Arrayish(ModelEvent[Lead]):
        event_name = "Contact"
        action_source = "system_generated"

        def should_send(self, instance, created):
            return Ambiguous()

    lead = LeadFactory()
    row = OutboxEvent.objects.get(event_name="Contact")
    assert row.status == OutboxEvent.Status.FAILED
    assert row.last_error == "Arrayish.should_send() raised ValueError; the traceback is in the log"
    assert row.source == lead


@pytest.mark.usefixtures("isolated_registry")
@pytest.mark.parametrize(
    ("hook", "value", "reason"),
    [
        ("event_time", 10**5000, "event_time is not a Unix time"),
        ("custom_data", {"value": 10**5000}, "custom_data['value'] is a number too large"),
        ("user_data", {"em": "a@b.co", "external_id": 10**5000}, None),
        ("limited_data_use", {"country": "1", "state": 1000}, "limited_data_use must be"),
    ],
    ids=["event_time", "custom_data", "user_data", "limited_data_use"],
)
def test_hostile_hook_values_give_a_reason_never_an_unexpected_error(hook, value, reason):
    @register(Lead)
    class Hostile(ModelEvent[Lead]):
        event_name = "Contact"
        action_source = "system_generated"

        def user_data(self, instance):
            return {"em": instance.email}

    setattr(Hostile, hook, lambda self, instance: value)
    LeadFactory()
    row = OutboxEvent.objects.get(event_name="Contact")
    if reason is None:
        assert row.status == OutboxEvent.Status.PENDING
        assert row.warnings == [
            "external_id: value is an integer of more than 4,300 digits; dropped"
        ]
    else:
        assert row.status == OutboxEvent.Status.FAILED
        assert reason in row.last_error
        assert "unexpected" not in row.last_error
