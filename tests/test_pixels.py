"""Several pixels (``PIXELS``) and the app secret proof (``APP_SECRET``), end to end."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from io import StringIO

import pytest
from django.core import mail
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import transaction
from django.test import override_settings
from django.views.debug import SafeExceptionReporterFilter

from django_capi import ModelEvent, register, send_event
from django_capi.checks import check_settings
from django_capi.client import ErrorKind, appsecret_proof, classify
from django_capi.conf import capi_settings
from django_capi.dashboard import health_figures
from django_capi.delivery import drain
from django_capi.exceptions import CapiConfigurationError
from django_capi.models import OutboxEvent, PixelState
from django_capi.registry import pixel_id_for
from tests.factories import PIXEL, LeadFactory, OutboxEventFactory
from tests.shop.models import Lead

Status = OutboxEvent.Status

SHOP_A = "111"
SHOP_B = "222"
TOKEN_A = "token-of-pixel-a"
TOKEN_B = "token-of-pixel-b"
SECRET = "the-apps-secret"


def proof(secret: str, token: str) -> str:
    return hmac.new(secret.encode(), token.encode(), hashlib.sha256).hexdigest()


def with_pixels(settings, pixels: Mapping[str, Mapping[str, str]], **more: object) -> None:
    settings.DJANGO_CAPI = {**settings.DJANGO_CAPI, "PIXELS": pixels, **more}


# --- settings ------------------------------------------------------------------------------


def test_pixels_add_to_the_default_pixel_which_keeps_its_top_level_settings():
    user = {
        "PIXEL_ID": "1",
        "ACCESS_TOKEN": "top-token",
        "TEST_EVENT_CODE": "TOP",
        "API_VERSION": "v24.0",
        "PIXELS": {2: {"ACCESS_TOKEN": "two-token", "APP_SECRET": "two-secret"}},
    }
    with override_settings(DJANGO_CAPI=user):
        conf = capi_settings()
    assert list(conf.pixels) == ["1", "2"]
    one, two = conf.pixels["1"], conf.pixels["2"]
    assert (one.access_token, one.test_event_code, one.api_version) == ("top-token", "TOP", "v24.0")
    # Another pixel takes only the API version: a token or test code belongs to one pixel.
    assert (two.access_token, two.test_event_code, two.api_version) == ("two-token", None, "v24.0")
    assert two.app_secret == "two-secret"
    assert one.app_secret is None
    assert conf.events_url("2") == "https://graph.facebook.com/v24.0/2/events"


def test_an_entry_for_the_default_pixel_overrides_the_top_level_values_key_by_key():
    user = {
        "PIXEL_ID": "1",
        "ACCESS_TOKEN": "top-token",
        "PIXELS": {"1": {"API_VERSION": "v25.0", "APP_SECRET": "s"}},
    }
    with override_settings(DJANGO_CAPI=user):
        conf = capi_settings()
    assert (conf.access_token, conf.api_version, conf.app_secret) == ("top-token", "v25.0", "s")
    assert conf.events_url("1").endswith("/v25.0/1/events")


def test_an_unconfigured_pixel_is_sent_with_the_top_level_credentials():
    # Rows recorded before the settings changed are still Meta's to judge.
    with override_settings(DJANGO_CAPI={"PIXEL_ID": "1", "ACCESS_TOKEN": "t", "APP_SECRET": "s"}):
        conf = capi_settings()
    assert conf.pixel("9") is None
    credentials = conf.credentials("9")
    assert (credentials.pixel_id, credentials.access_token, credentials.app_secret) == (
        "9",
        "t",
        "s",
    )


def test_the_app_secret_may_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("CAPI_APP_SECRET", "from-env")
    with override_settings(DJANGO_CAPI={"PIXEL_ID": "1"}):
        assert capi_settings().app_secret == "from-env"


@pytest.mark.parametrize(
    ("pixels", "says"),
    [
        ({"pixel-2": {"ACCESS_TOKEN": "EAAsecret-token"}}, "keyed by pixel ids"),
        ({"EAAsecret-token": {"ACCESS_TOKEN": "x"}}, "keyed by pixel ids"),
        ({"2": "EAAsecret-token"}, "['PIXELS']['2'] must be a dict"),
        ({"2": {"ACCESS_TOKEN": 987654}}, "['PIXELS']['2']['ACCESS_TOKEN'] must be a string"),
        ({"2": {"ACCESS_TOKEN": "EAAsecret-token", "TOKEN": "x"}}, "unknown key(s) 'TOKEN'"),
        ({"2": {"ACCESS_TOKEN": "EAAsecret-token", "API_VERSION": "25"}}, "'API_VERSION'] must"),
        (["2"], "['PIXELS'] must be a dict"),
    ],
)
def test_bad_pixels_are_named_without_showing_a_token(pixels, says):
    with (
        override_settings(DJANGO_CAPI={"PIXEL_ID": "1", "PIXELS": pixels}),
        pytest.raises(CapiConfigurationError) as raised,
    ):
        capi_settings()
    assert says in str(raised.value)
    assert "EAAsecret" not in str(raised.value)
    assert "987654" not in str(raised.value)


@pytest.mark.parametrize(
    ("user", "says"),
    [
        # Python's \d matches every script's digits: none of them names a pixel or a version.
        ({"PIXELS": {"\uff11\uff12\uff13": {"ACCESS_TOKEN": "t"}}}, "keyed by pixel ids"),
        ({"PIXEL_ID": "\u0661\u0662\u0663"}, "['PIXEL_ID'] must be"),
        ({"API_VERSION": "v\uff12\uff15.0"}, "['API_VERSION'] must be"),
        # A version number no Graph API will reach: the system checks could not even read it.
        ({"PIXELS": {"2": {"API_VERSION": "v" + "9" * 5000 + ".0"}}}, "'API_VERSION'] must be"),
        # 2 and "2" are one pixel: which entry won would depend on the dict's order.
        ({"PIXELS": {2: {"ACCESS_TOKEN": "a"}, "2": {"ACCESS_TOKEN": "b"}}}, "twice"),
    ],
)
def test_pixel_ids_and_api_versions_are_ascii_digits_and_each_pixel_is_named_once(user, says):
    with (
        override_settings(DJANGO_CAPI={"PIXEL_ID": "1", **user}),
        pytest.raises(CapiConfigurationError) as raised,
    ):
        capi_settings()
    assert says in str(raised.value)


@pytest.mark.parametrize(
    "user",
    [
        {"EAAsecret-token-pasted-as-a-key": "x"},
        {"PIXELS": {"2": {"ACCESS_TOKEN": "t", "EAAsecret-token-pasted-as-a-key": None}}},
    ],
)
def test_an_unknown_key_that_may_be_a_secret_is_not_shown(user):
    with (
        override_settings(DJANGO_CAPI={"PIXEL_ID": "1", **user}),
        pytest.raises(CapiConfigurationError, match="unknown key") as raised,
    ):
        capi_settings()
    assert "EAAsecret" not in str(raised.value)


def test_tokens_and_app_secrets_stay_out_of_reprs_and_debug_pages():
    user = {
        "PIXEL_ID": "1",
        "ACCESS_TOKEN": "top-token-value",
        "APP_SECRET": "top-secret-value",
        "PIXELS": {"2": {"ACCESS_TOKEN": "two-token-value", "APP_SECRET": "two-secret-value"}},
    }
    with override_settings(DJANGO_CAPI=user):
        shown = repr(capi_settings()) + str(SafeExceptionReporterFilter().get_safe_settings())
    assert "'2'" in shown  # the pixels are there ...
    for secret in ("top-token-value", "top-secret-value", "two-token-value", "two-secret-value"):
        assert secret not in shown  # ... their credentials are not


def test_a_pixel_without_a_token_is_an_error_naming_it():
    user = {"PIXEL_ID": "1", "ACCESS_TOKEN": "t", "PIXELS": {"2": {"TEST_EVENT_CODE": "T2"}}}
    with override_settings(DJANGO_CAPI=user, DEBUG=True):
        (message,) = check_settings()
    assert message.id == "django_capi.E002"
    assert "Pixel 2 has no ACCESS_TOKEN" in message.msg
    assert '["PIXELS"]["2"]["ACCESS_TOKEN"]' in message.hint


def test_a_test_code_of_any_pixel_in_production_is_a_warning_naming_it():
    user = {"PIXEL_ID": "1", "ACCESS_TOKEN": "t", "PIXELS": {"2": {"ACCESS_TOKEN": "u"}}}
    user["PIXELS"]["2"]["TEST_EVENT_CODE"] = "T2"
    with override_settings(DJANGO_CAPI=user, DEBUG=False):
        (message,) = check_settings()
    assert message.id == "django_capi.W003"
    assert "(pixels 2)" in message.msg


def test_an_old_api_version_of_one_pixel_is_a_warning_naming_it():
    user = {"PIXEL_ID": "1", "ACCESS_TOKEN": "t"}
    user["PIXELS"] = {"2": {"ACCESS_TOKEN": "u", "API_VERSION": "v19.0"}}
    with override_settings(DJANGO_CAPI=user):
        (message,) = check_settings()
    assert message.id == "django_capi.W006"
    assert "API_VERSION v19.0 (pixels 2)" in message.msg


# --- choosing the pixel of an event ----------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_send_event_records_the_event_for_the_pixel_given(settings):
    with_pixels(settings, {SHOP_A: {"ACCESS_TOKEN": TOKEN_A}})
    with transaction.atomic():
        row = send_event(
            "Lead", user_data={"em": "a@example.com"}, action_source="chat", pixel_id=111
        )
    assert row is not None
    assert (row.pixel_id, row.status) == (SHOP_A, Status.PENDING)
    with transaction.atomic():
        default = send_event("Lead", user_data={"em": "a@example.com"}, action_source="chat")
    assert default is not None
    assert default.pixel_id == PIXEL


@pytest.mark.django_db(transaction=True)
def test_an_unconfigured_pixel_fails_the_row_with_the_fix_and_heals_once_configured(settings):
    def record() -> OutboxEvent:
        with transaction.atomic():
            row = send_event(
                "Lead",
                event_id="lead-7",
                user_data={"em": "a@example.com"},
                action_source="chat",
                pixel_id=SHOP_B,
            )
        assert row is not None
        return row

    row = record()
    assert (row.pixel_id, row.status, row.failure_reason) == (SHOP_B, Status.FAILED, "invalid")
    assert "pixel 222 is not configured (configured: 1234567890)" in row.last_error
    assert "DJANGO_CAPI['PIXELS']" in row.last_error
    with_pixels(settings, {SHOP_B: {"ACCESS_TOKEN": TOKEN_B}})
    healed = record()
    assert (healed.pk, healed.status, healed.last_error) == (row.pk, Status.PENDING, "")
    assert healed.payload["user_data"]["em"]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("pixel_id", "fault"),
    [
        ("pixel-a", "holds characters other than digits"),
        (1.5, "is a float"),
        ("", "is empty"),
        (" 222 ", "has spaces around its digits"),
    ],
)
def test_a_pixel_id_that_is_no_id_fails_the_row_saying_so(settings, pixel_id, fault):
    with_pixels(settings, {SHOP_B: {"ACCESS_TOKEN": TOKEN_B}})
    with transaction.atomic():
        row = send_event(
            "Lead", user_data={"em": "a@b.co"}, action_source="chat", pixel_id=pixel_id
        )
    assert row is not None
    # Under the default pixel, where the Pixel tag fires it; never under "".
    assert (row.pixel_id, row.status) == (PIXEL, Status.FAILED)
    assert row.last_error == (
        f"pixel_id {fault}: a pixel id is its digits only, as a str or an int "
        f"(configured pixels: {PIXEL}, {SHOP_B})"
    )


@pytest.mark.django_db(transaction=True)
def test_a_model_event_chooses_its_pixel_per_instance(settings, isolated_registry):
    with_pixels(settings, {SHOP_A: {"ACCESS_TOKEN": TOKEN_A}})

    @register(Lead)
    class BrandLead(ModelEvent[Lead]):
        event_name = "Contact"
        action_source = "system_generated"

        def user_data(self, instance: Lead) -> Mapping[str, object]:
            return {"em": instance.email}

        def pixel_id(self, instance: Lead) -> str | None:
            return SHOP_A if instance.email.endswith("@brand-a.example") else None

    with transaction.atomic():
        LeadFactory(email="x@brand-a.example")
        LeadFactory(email="y@other.example")
    rows = OutboxEvent.objects.filter(event_name="Contact").order_by("pk")
    assert [(row.pixel_id, row.status) for row in rows] == [
        (SHOP_A, Status.PENDING),
        (PIXEL, Status.PENDING),
    ]


@pytest.mark.django_db(transaction=True)
def test_the_pixel_may_be_a_class_attribute_as_the_action_source_is(settings, isolated_registry):
    with_pixels(settings, {SHOP_A: {"ACCESS_TOKEN": TOKEN_A}})

    @register(Lead)
    class BrandLead(ModelEvent[Lead]):
        event_name = "Contact"
        action_source = "system_generated"
        pixel_id = SHOP_A  # type: ignore[assignment]  # one brand's model: one pixel

        def user_data(self, instance: Lead) -> Mapping[str, object]:
            return {"em": instance.email}

    with transaction.atomic():
        lead = LeadFactory()
    row = OutboxEvent.objects.get(event_name="Contact")
    assert (row.pixel_id, row.status, row.last_error) == (SHOP_A, Status.PENDING, "")
    assert pixel_id_for(lead, "Contact") == SHOP_A  # the Pixel fires it there too


@pytest.mark.django_db(transaction=True)
def test_a_failing_hook_keeps_the_row_on_the_declared_pixel_where_it_heals(
    settings, isolated_registry
):
    with_pixels(settings, {SHOP_A: {"ACCESS_TOKEN": TOKEN_A}})

    @register(Lead)
    class BrandLead(ModelEvent[Lead]):
        event_name = "Contact"
        action_source = "system_generated"
        pixel_id = SHOP_A  # type: ignore[assignment]
        broken = True

        def should_send(self, instance: Lead, created: bool) -> bool:
            if self.broken:
                raise LookupError("no brand")
            return True

        def user_data(self, instance: Lead) -> Mapping[str, object]:
            return {"em": instance.email}

    with transaction.atomic():
        lead = LeadFactory()
    row = OutboxEvent.objects.get(event_name="Contact")
    assert (row.pixel_id, row.status) == (SHOP_A, Status.FAILED)
    BrandLead.broken = False
    with transaction.atomic():
        lead.save()
    row = OutboxEvent.objects.get(event_name="Contact")  # still one row: the failed one healed
    assert (row.pixel_id, row.status, row.last_error) == (SHOP_A, Status.PENDING, "")


@pytest.mark.django_db(transaction=True)
def test_a_failing_pixel_hook_fails_the_row_and_never_the_save(settings, isolated_registry):
    @register(Lead)
    class BrokenLead(ModelEvent[Lead]):
        event_name = "Contact"
        action_source = "system_generated"

        def user_data(self, instance: Lead) -> Mapping[str, object]:
            return {"em": instance.email}

        def pixel_id(self, instance: Lead) -> str | None:
            raise LookupError("no brand")

    with transaction.atomic():
        lead = LeadFactory()
    assert Lead.objects.filter(pk=lead.pk).exists()
    row = OutboxEvent.objects.get(event_name="Contact")
    assert row.status == Status.FAILED
    assert "BrokenLead.pixel_id()" in row.last_error


# --- delivery: each pixel its own credentials, circuit and alert ------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_broken_token_on_one_pixel_never_delays_another(capi_graph, settings):
    # The broken pixel sorts first in the lease: the healthy one must not wait behind it.
    with_pixels(
        settings,
        {
            SHOP_A: {"ACCESS_TOKEN": "a-revoked-token"},
            SHOP_B: {"ACCESS_TOKEN": TOKEN_B, "TEST_EVENT_CODE": "TEST_B", "API_VERSION": "v25.0"},
        },
    )
    capi_graph.access_tokens = (settings.DJANGO_CAPI["ACCESS_TOKEN"], TOKEN_B)
    broken = OutboxEventFactory.create_batch(3, pixel_id=SHOP_A)
    healthy = OutboxEventFactory.create_batch(4, pixel_id=SHOP_B)
    default = OutboxEventFactory.create_batch(2)

    report = drain()

    assert (report.delivered, report.postponed, report.failed) == (6, 3, 0)
    assert sorted(capi_graph.event_ids(SHOP_B)) == sorted(row.event_id for row in healthy)
    assert sorted(capi_graph.event_ids(PIXEL)) == sorted(row.event_id for row in default)
    assert capi_graph.received_events(SHOP_A) == []
    requests = {request.pixel_id: request for request in capi_graph.requests}
    assert len(capi_graph.requests) == 3  # one each: the broken pixel's batch is not bisected
    assert requests[SHOP_A].error is not None and requests[SHOP_A].error["code"] == 190
    assert (requests[SHOP_B].api_version, requests[SHOP_B].params["test_event_code"]) == (
        "v25.0",
        "TEST_B",
    )
    assert requests[PIXEL].api_version == "v26.0"
    assert "test_event_code" not in requests[PIXEL].params
    states = {state.pixel_id: state for state in PixelState.objects.all()}
    assert states[SHOP_A].circuit_opened_at is not None
    assert SHOP_B not in states or states[SHOP_B].circuit_opened_at is None
    assert {row.status for row in OutboxEvent.objects.filter(pixel_id=SHOP_A)} == {Status.PENDING}
    health = {pixel.pixel_id: pixel.state for pixel in health_figures().pixels}
    assert health == {SHOP_A: "circuit_open", SHOP_B: "healthy", PIXEL: "healthy"}
    assert [message.subject for message in mail.outbox] == [
        f"[Django] Meta Conversions API: sending stopped for pixel {SHOP_A}"
    ]
    # New rows of the healthy pixels go at once while the broken one's circuit stays open.
    more = OutboxEventFactory.create_batch(2, pixel_id=SHOP_B)
    assert drain().delivered == 2
    assert {row.event_id for row in more} <= set(capi_graph.event_ids(SHOP_B))
    assert len(capi_graph.requests) == 4

    # The broken pixel's token is replaced: its next drain probes at once and delivers.
    capi_graph.access_tokens = (settings.DJANGO_CAPI["ACCESS_TOKEN"], TOKEN_B, TOKEN_A)
    with_pixels(settings, {**settings.DJANGO_CAPI["PIXELS"], SHOP_A: {"ACCESS_TOKEN": TOKEN_A}})
    assert drain().delivered == 3
    assert sorted(capi_graph.event_ids(SHOP_A)) == sorted(row.event_id for row in broken)
    assert PixelState.objects.get(pixel_id=SHOP_A).circuit_opened_at is None


# --- the app secret proof ----------------------------------------------------------------------


def test_the_proof_is_metas_hmac_of_the_token():
    assert appsecret_proof(SECRET, TOKEN_A) == proof(SECRET, TOKEN_A)
    assert len(appsecret_proof(SECRET, TOKEN_A)) == 64


@pytest.mark.parametrize(
    "message",
    [
        "Invalid appsecret_proof provided in the API argument",
        "API calls from the server require an appsecret_proof argument",
    ],
)
def test_a_refused_proof_is_a_setup_error_not_the_events_fault(message):
    body = {"message": message, "type": "GraphMethodException", "code": 100}
    assert classify(400, body).kind is ErrorKind.SETUP
    # An invalid event carries a subcode: still the events' fault.
    event_error = {**body, "message": "Invalid parameter", "error_subcode": 2804003}
    assert classify(400, event_error).kind is ErrorKind.INVALID


@pytest.mark.django_db(transaction=True)
def test_with_an_app_secret_every_request_carries_the_right_proof(capi_graph, settings, caplog):
    caplog.set_level("DEBUG")
    token = settings.DJANGO_CAPI["ACCESS_TOKEN"]
    capi_graph.access_tokens = (token, TOKEN_B)
    capi_graph.app_secret = SECRET
    with_pixels(
        settings, {SHOP_B: {"ACCESS_TOKEN": TOKEN_B, "APP_SECRET": SECRET}}, APP_SECRET=SECRET
    )
    OutboxEventFactory.create_batch(2)
    OutboxEventFactory.create_batch(2, pixel_id=SHOP_B)
    assert drain().delivered == 4
    requests = {request.pixel_id: request for request in capi_graph.requests}
    assert requests[PIXEL].params["appsecret_proof"] == proof(SECRET, token)
    assert requests[SHOP_B].params["appsecret_proof"] == proof(SECRET, TOKEN_B)
    for request in capi_graph.requests:
        assert "?" not in request.path and "appsecret" not in request.path  # the body only
    stored = str(list(OutboxEvent.objects.values())) + str(list(PixelState.objects.values()))
    for secret in (SECRET, proof(SECRET, token)):
        assert secret not in caplog.text
        assert secret not in stored


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("configured", ["a-wrong-secret", None])
def test_a_wrong_or_missing_proof_opens_the_pixels_circuit_and_fails_no_event(
    capi_graph, settings, configured
):
    capi_graph.app_secret = SECRET
    if configured is not None:
        settings.DJANGO_CAPI = {**settings.DJANGO_CAPI, "APP_SECRET": configured}
    rows = OutboxEventFactory.create_batch(3)
    report = drain()
    assert (report.delivered, report.failed, report.postponed) == (0, 0, 3)
    (request,) = capi_graph.requests  # refused as a whole, never bisected
    assert request.status == 400
    assert request.error is not None
    assert (request.error["code"], "error_subcode" in request.error) == (100, False)
    assert "appsecret_proof" in request.error["message"]
    state = PixelState.objects.get(pixel_id=PIXEL)
    assert state.circuit_opened_at is not None
    assert "appsecret_proof" in state.last_error
    assert {row.status for row in OutboxEvent.objects.all()} == {Status.PENDING}
    # Fixing the secret is a new setup: the next drain probes at once and delivers.
    settings.DJANGO_CAPI = {**settings.DJANGO_CAPI, "APP_SECRET": SECRET}
    assert drain().delivered == 3
    assert sorted(capi_graph.event_ids(PIXEL)) == sorted(row.event_id for row in rows)


# --- the commands, one line per pixel ----------------------------------------------------------


def test_capi_test_event_sends_to_each_pixel_with_its_own_code(capi_graph, settings):
    capi_graph.access_tokens = (settings.DJANGO_CAPI["ACCESS_TOKEN"], TOKEN_A)
    with_pixels(
        settings,
        {
            SHOP_A: {"ACCESS_TOKEN": TOKEN_A, "TEST_EVENT_CODE": "TEST_A"},
            SHOP_B: {"ACCESS_TOKEN": TOKEN_B},  # no code: never a real event by mistake
        },
        TEST_EVENT_CODE="TEST_DEFAULT",
    )
    out = StringIO()
    call_command("capi_test_event", stdout=out)
    sent = {event.pixel_id: event.test_event_code for event in capi_graph.received_events()}
    assert sent == {PIXEL: "TEST_DEFAULT", SHOP_A: "TEST_A"}
    output = out.getvalue()
    assert f"to pixel {PIXEL} with test code TEST_DEFAULT" in output
    assert f"to pixel {SHOP_A} with test code TEST_A" in output
    assert f"Pixel {SHOP_B}: skipped, no test event code" in output
    assert TOKEN_A not in output


def test_capi_test_event_exits_non_zero_naming_the_pixel_meta_refused(capi_graph, settings):
    with_pixels(settings, {SHOP_B: {"ACCESS_TOKEN": "refused", "TEST_EVENT_CODE": "TEST_B"}})
    out = StringIO()
    with pytest.raises(CommandError) as raised:
        call_command("capi_test_event", "--pixel", SHOP_B, stdout=out)
    assert f"Meta refused the test event for pixel {SHOP_B}" in str(raised.value)
    assert capi_graph.received_events() == []


@pytest.mark.django_db(transaction=True)
def test_capi_doctor_lists_and_checks_each_pixel(capi_graph, settings):
    capi_graph.access_tokens = (settings.DJANGO_CAPI["ACCESS_TOKEN"], TOKEN_A)
    with_pixels(
        settings,
        {SHOP_A: {"ACCESS_TOKEN": TOKEN_A, "APP_SECRET": SECRET}, SHOP_B: {"ACCESS_TOKEN": "no"}},
    )
    out = StringIO()
    with pytest.raises(CommandError):
        call_command("capi_doctor", "--check-token", "--database", "default", stdout=out)
    output = out.getvalue()
    assert f"pixel {PIXEL} (default): token set, test code not set, API v26.0" in output
    assert f"pixel {SHOP_A}: token set, test code not set, API v26.0, app secret set" in output
    assert f"✓ Meta accepts the token for pixel {PIXEL}" in output
    assert f"✓ Meta accepts the token for pixel {SHOP_A}" in output
    assert f"✗ Meta refused the token for pixel {SHOP_B}: Meta HTTP 401 code 190" in output
    for secret in (TOKEN_A, SECRET):
        assert secret not in output


# --- the Pixel: each pixel initialised, each conversion to its own pixel ----------------------


def render(source: str, **context: object) -> str:
    from django.contrib.auth.models import AnonymousUser
    from django.template import Context, Template
    from django.test import RequestFactory

    request = RequestFactory().get("/", HTTP_USER_AGENT="Mozilla/5.0 Test/1.0")
    request.user = AnonymousUser()
    return Template("{% load capi %}" + source).render(Context({"request": request, **context}))


def fbq_calls(html: str) -> list[list[object]]:
    import json
    import re

    return [json.loads(f"[{args}]") for args in re.findall(r"fbq\((.*?)\);", html, re.DOTALL)]


@pytest.fixture
def brand_leads(settings, isolated_registry):
    """Two pixels; a Lead of brand A goes to pixel A, any other to the default pixel."""
    with_pixels(settings, {SHOP_A: {"ACCESS_TOKEN": TOKEN_A}, SHOP_B: {"ACCESS_TOKEN": TOKEN_B}})

    @register(Lead)
    class BrandLead(ModelEvent[Lead]):
        event_name = "Contact"
        action_source = "system_generated"

        def user_data(self, instance: Lead) -> Mapping[str, object]:
            return {"em": instance.email}

        def pixel_id(self, instance: Lead) -> str | None:
            return SHOP_A if instance.email.endswith("@brand-a.example") else None


@pytest.mark.django_db(transaction=True)
def test_capi_pixel_initialises_the_pixels_of_the_page_and_a_page_view_for_each(brand_leads):
    lead = LeadFactory(email="x@brand-a.example")
    html = render("{% capi_pixel lead '222' %}", lead=lead)
    calls = fbq_calls(html)
    assert [call[:2] for call in calls if call[0] == "init"] == [
        ["init", PIXEL],
        ["init", SHOP_A],
        ["init", SHOP_B],
    ]
    page_views = [call for call in calls if call[0] != "init"]
    assert [call[:3] for call in page_views] == [
        ["trackSingle", PIXEL, "PageView"],
        ["trackSingle", SHOP_A, "PageView"],
        ["trackSingle", SHOP_B, "PageView"],
    ]
    assert len({call[4]["eventID"] for call in page_views}) == 1  # each pixel deduplicates its own
    for pixel_id in (PIXEL, SHOP_A, SHOP_B):
        assert f"tr?id={pixel_id}&amp;ev=PageView" in html


@pytest.mark.django_db(transaction=True)
def test_each_conversion_goes_to_its_own_pixel_with_its_own_event_id(brand_leads):
    with transaction.atomic():
        brand = LeadFactory(email="x@brand-a.example")
        other = LeadFactory(email="y@other.example")
    rows = {row.pixel_id: row for row in OutboxEvent.objects.filter(event_name="Contact")}
    html = render(
        "{% capi_pixel brand %}{% capi_event brand 'Contact' %}{% capi_event other 'Contact' %}",
        brand=brand,
        other=other,
    )
    tracked = [call for call in fbq_calls(html) if call[2] == "Contact"]
    assert tracked == [
        ["trackSingle", SHOP_A, "Contact", {}, {"eventID": rows[SHOP_A].event_id}],
        ["trackSingle", PIXEL, "Contact", {}, {"eventID": rows[PIXEL].event_id}],
    ]
    assert rows[SHOP_A].event_id != rows[PIXEL].event_id
    # An outbox row is fired at its own pixel too.
    assert fbq_calls(render("{% capi_event row %}", row=rows[SHOP_A])) == [
        ["init", SHOP_A, {}],  # this page's capi_pixel did not initialise it
        ["trackSingle", SHOP_A, "Contact", {}, {"eventID": rows[SHOP_A].event_id}],
    ]


@pytest.mark.django_db(transaction=True)
def test_a_pixel_capi_pixel_left_out_is_initialised_by_its_event(brand_leads):
    with transaction.atomic():
        brand = LeadFactory(email="x@brand-a.example")
    calls = fbq_calls(render("{% capi_pixel %}{% capi_event brand 'Contact' %}", brand=brand))
    assert [call[:2] for call in calls] == [
        ["init", PIXEL],
        ["trackSingle", PIXEL],
        ["init", SHOP_A],
        ["trackSingle", SHOP_A],
    ]


@pytest.mark.django_db(transaction=True)
def test_an_unconfigured_pixel_is_never_initialised(settings, caplog):
    html = render("{% capi_pixel '999' %}")
    assert [call[:2] for call in fbq_calls(html)] == [["init", PIXEL], ["track", "PageView"]]
    assert "pixel 999 is not configured" in caplog.text


@pytest.mark.django_db(transaction=True)
def test_server_page_views_go_to_each_pixel_with_the_pixels_event_id(settings):
    with_pixels(settings, {SHOP_A: {"ACCESS_TOKEN": TOKEN_A}}, SERVER_PAGE_VIEW=True)
    html = render("{% capi_pixel '111' %}")
    event_id = fbq_calls(html)[-1][4]["eventID"]
    rows = OutboxEvent.objects.filter(event_name="PageView")
    assert sorted((row.pixel_id, row.event_id, row.status) for row in rows) == [
        (SHOP_A, event_id, Status.PENDING),
        (PIXEL, event_id, Status.PENDING),
    ]


def test_pixels_without_a_default_pixel_are_one_error_without_a_false_token_alarm():
    user = {"PIXELS": {"2": {"ACCESS_TOKEN": "u"}}}
    with override_settings(DJANGO_CAPI=user):
        (message,) = check_settings()
    assert message.id == "django_capi.E001"


def test_a_debug_page_of_a_failed_post_shows_no_app_secret_nor_proof(rf):
    from django.views.debug import ExceptionReporter

    from django_capi.client import GraphClient

    class Broken(GraphClient):
        def create_session(self):
            session = super().create_session()
            session.post = self.explode
            return session

        def explode(self, *args, **kwargs):
            raise RuntimeError("the adapter broke")

    conf = {"PIXEL_ID": "1", "GRAPH_API_URL": "http://x"}
    conf["PIXELS"] = {"1": {"ACCESS_TOKEN": "secret-token", "APP_SECRET": "secret-of-the-app"}}
    with override_settings(DJANGO_CAPI=conf):
        client = Broken(capi_settings())
    with pytest.raises(RuntimeError) as raised:
        client.post_events("1", [{"event_name": "Lead"}])
    reporter = ExceptionReporter(rf.get("/"), raised.type, raised.value, raised.tb)
    frames = [f for f in reporter.get_traceback_frames() if f["filename"] != __file__]
    shown = str([(name, value) for frame in frames for name, value in frame["vars"]])
    assert "pixel" in shown  # the client's locals are there ...
    for secret in ("secret-token", "secret-of-the-app", proof("secret-of-the-app", "secret-token")):
        assert secret not in shown  # ... their secrets are not


@pytest.fixture
def hooked_pixel(settings, isolated_registry):
    """A Lead's pixel is whatever its ``pixel`` attribute holds, as the hook returns it."""
    with_pixels(settings, {SHOP_B: {"ACCESS_TOKEN": TOKEN_B}})

    @register(Lead)
    class HookedPixel(ModelEvent[Lead]):
        event_name = "Contact"
        action_source = "system_generated"

        def user_data(self, instance: Lead) -> Mapping[str, object]:
            return {"em": instance.email}

        def pixel_id(self, instance: Lead) -> str | None:
            return instance.pixel  # type: ignore[attr-defined, no-any-return]


def hooked_lead(pixel: object) -> tuple[Lead, OutboxEvent]:
    lead = LeadFactory.build()
    lead.pixel = pixel  # type: ignore[attr-defined]
    with transaction.atomic():
        lead.save()
    return lead, OutboxEvent.objects.get(event_name="Contact")


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("pixel", "expected"), [(222, SHOP_B), (None, PIXEL)])
def test_a_pixel_hook_may_return_an_int_or_none(hooked_pixel, pixel, expected):
    lead, row = hooked_lead(pixel)
    assert (row.pixel_id, row.status, row.last_error) == (expected, Status.PENDING, "")
    assert (pixel_id_for(lead, "Contact") or PIXEL) == expected  # the Pixel fires it there too


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("pixel", "fault"),
    [
        (2.5, "is a float"),
        (" 222 ", "has spaces around its digits"),
        # str() of it raises (and would name the test): the save must still succeed.
        pytest.param(10**5000, "is an int of more than 32 digits", id="huge-int"),
    ],
)
def test_a_pixel_hook_returning_no_pixel_id_fails_the_row_on_the_default_pixel(
    hooked_pixel, pixel, fault
):
    lead, row = hooked_lead(pixel)
    assert (row.pixel_id, row.status) == (PIXEL, Status.FAILED)
    assert row.last_error == (
        f"HookedPixel.pixel_id() returned a value that {fault}: return a configured pixel id "
        "(digits, as a str or an int), or None for the default pixel"
    )
    assert pixel_id_for(lead, "Contact") is None  # the Pixel's side: the default pixel
    pixels = {call[1] for call in fbq_calls(render("{% capi_pixel lead %}", lead=lead))}
    assert pixels == {PIXEL}
