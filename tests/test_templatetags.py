"""{% capi_pixel %} and {% capi_event %}: the Pixel shares the outbox's event ids, safely."""

from __future__ import annotations

import json
import re
from decimal import Decimal

import pytest
from django.contrib.auth.models import AnonymousUser, User
from django.template import Context, Template, TemplateSyntaxError
from django.test import RequestFactory, override_settings

from django_capi import OutboxEvent, send_event
from django_capi.normalize import sha256_hex
from django_capi.templatetags.capi import js
from tests.factories import OrderFactory

pytestmark = pytest.mark.django_db(transaction=True)

UA = "Mozilla/5.0 (X11; Linux x86_64) Test/1.0"
CALL = re.compile(r"fbq\((.*?)\);", re.DOTALL)


def render(source: str, request=None, **context) -> str:
    request = request or RequestFactory().get("/", HTTP_USER_AGENT=UA, REMOTE_ADDR="203.0.113.1")
    request.user = getattr(request, "user", AnonymousUser())
    return Template("{% load capi %}" + source).render(Context({"request": request, **context}))


def calls(html: str) -> list[list]:
    """Every fbq(...) call in ``html``, decoded as JSON arguments."""
    return [json.loads(f"[{args}]") for args in CALL.findall(html)]


def test_the_pixel_base_code_inits_tracks_a_page_view_and_has_noscript():
    html = render("{% capi_pixel %}")
    assert "connect.facebook.net/en_US/fbevents.js" in html
    init, page_view = calls(html)
    assert init == ["init", "1234567890", {}]
    assert page_view[:3] == ["track", "PageView", {}]
    assert re.fullmatch(r"[0-9a-f-]{36}", page_view[3]["eventID"])
    noscript = "https://www.facebook.com/tr?id=1234567890&amp;ev=PageView&amp;eid="
    assert f'src="{noscript}{page_view[3]["eventID"]}&amp;noscript=1"' in html


def test_advanced_matching_sends_the_users_hashes_as_the_server_does():
    user = User.objects.create(username="ada", email=" Ada@Example.com ")
    request = RequestFactory().get("/")
    request.user = user
    init = calls(render("{% capi_pixel %}", request))[0]
    assert init[2] == {"em": sha256_hex("ada@example.com"), "external_id": sha256_hex(str(user.pk))}
    with override_settings(DJANGO_CAPI={"PIXEL_ID": "1", "ADVANCED_MATCHING": False}):
        assert calls(render("{% capi_pixel %}", request))[0][2] == {}


def test_an_email_with_a_lone_surrogate_is_matched_as_the_server_stores_it():
    # Such an address cannot be encoded as UTF-8: hashing it raised in the tag.
    request = RequestFactory().get("/")
    request.user = User(pk=7, username="ada", email="ada\ud800@example.com")
    init = calls(render("{% capi_pixel %}", request))[0]
    assert init[2]["em"] == sha256_hex("ada\ufffd@example.com")


def test_a_csp_nonce_is_honoured():
    request = RequestFactory().get("/")
    request.csp_nonce = "r4nd0m"
    html = render("{% capi_pixel %}", request)
    assert html.count('<script nonce="r4nd0m">') == 1


def test_a_server_page_view_shares_the_pixels_event_id():
    with override_settings(DJANGO_CAPI={"PIXEL_ID": "1234567890", "SERVER_PAGE_VIEW": True}):
        html = render("{% capi_pixel %}")
    event_id = calls(html)[1][3]["eventID"]
    row = OutboxEvent.objects.get(event_name="PageView")
    assert row.event_id == event_id
    assert row.status == "pending"


def test_capi_event_renders_the_rows_event_id_and_custom_data():
    order = OrderFactory(total=Decimal("42.50"))
    order.status = "paid"  # rendered before the save that records the row
    before = calls(render('{% capi_event order "Purchase" %}', order=order))
    order.save()
    row = OutboxEvent.objects.get()
    after = calls(render('{% capi_event order "Purchase" %}', order=order))
    # Known before the row exists, identical after: the Pixel can fire on either side.
    assert (
        before
        == after
        == [["track", "Purchase", {"currency": "EUR", "value": 42.5}, {"eventID": row.event_id}]]
    )
    assert row.payload["custom_data"] == after[0][2]


def test_rendering_a_thank_you_page_twice_creates_no_event():
    order = OrderFactory()
    assert render('{% capi_event order "Purchase" %}', order=order) == ""  # not paid yet
    order.status = "paid"
    order.save()
    first = render('{% capi_event order "Purchase" %}', order=order)
    second = render('{% capi_event order "Purchase" %}', order=order)
    assert first == second != ""
    assert OutboxEvent.objects.count() == 1


def test_an_event_no_model_event_declares_renders_nothing(caplog):
    assert render('{% capi_event order "Lead" %}', order=OrderFactory(status="paid")) == ""
    assert "no 'Lead' event is registered" in caplog.text


def test_capi_event_for_a_send_event_row_and_custom_names():
    request = RequestFactory().get("/", HTTP_USER_AGENT=UA, REMOTE_ADDR="203.0.113.1")
    row = send_event(
        "ShareDiscount",
        user_data={"em": "a@b.co"},
        custom_data={"code": "X"},
        event_source_url="https://shop.example/",
        request=request,
    )
    assert calls(render("{% capi_event row %}", row=row)) == [
        ["trackCustom", "ShareDiscount", {"code": "X"}, {"eventID": row.event_id}]
    ]


def test_capi_event_needs_a_name_for_a_model():
    with pytest.raises(TemplateSyntaxError, match="needs an event name"):
        render("{% capi_event order %}", order=OrderFactory())


def refuse(request):
    return False


def test_without_consent_nothing_is_rendered():
    with override_settings(
        DJANGO_CAPI={"PIXEL_ID": "1", "CONSENT": "tests.test_templatetags.refuse"}
    ):
        order = OrderFactory()
        assert render('{% capi_pixel %}{% capi_event order "Purchase" %}', order=order) == ""


XSS = [
    "</script><script>window.__pwned=1</script>",
    "</SCRIPT ><script>alert(1)</script>",
    "<!--<script>",
    "line\u2028separator\u2029paragraph",
    "quotes ' \" and \\ backslash",
    "<img src=x onerror=window.__pwned=1>",
    "&lt;entity&gt; & ampersand",
]


@pytest.mark.parametrize("nasty", XSS)
def test_no_value_can_break_out_of_the_script(nasty):
    literal = js({"content_name": nasty, nasty: [nasty]})
    assert "<" not in literal and ">" not in literal and "&" not in literal
    assert "\u2028" not in literal and "\u2029" not in literal
    assert json.loads(literal) == {"content_name": nasty, nasty: [nasty]}


@pytest.mark.parametrize("nasty", XSS)
def test_a_nasty_event_renders_as_one_inert_script(nasty):
    request = RequestFactory().get("/", HTTP_USER_AGENT=UA, REMOTE_ADDR="203.0.113.1")
    row = send_event(
        "ViewContent",
        user_data={"em": "a@b.co"},
        request=request,
        event_source_url="https://shop.example/",
        custom_data={"content_name": nasty},
    )
    html = render("{% capi_event row %}", row=row)
    assert html.count("<script>") == 1 and html.count("</script>") == 1
    assert html.endswith("</script>")
    assert calls(html)[0][2] == {"content_name": nasty}


# --- A tag never breaks a page ------------------------------------------------------------


def test_an_unsaved_instance_renders_nothing_and_says_why(caplog):
    from tests.shop.models import Order

    order = Order(status="paid", total=Decimal("10.00"))  # the view forgot to save it
    assert render('{% capi_event order "Purchase" %}', order=order) == ""
    assert "is not saved; its 'Purchase' is not rendered" in caplog.text
    assert not OutboxEvent.objects.exists()


def product():
    from tests.shop.models import Product

    return Product.objects.create(sku="SKU-1", name="Mug")


@pytest.mark.parametrize(
    ("source", "event_name", "logged"),
    [
        (lambda: None, "Purchase", ""),
        (lambda: "an order", "Purchase", "neither a model instance nor an outbox row"),
        (lambda: 42, None, "neither a model instance nor an outbox row"),
        (lambda: {"pk": 1}, "Purchase", "neither a model instance nor an outbox row"),
        (product, "Purchase", "no 'Purchase' event is registered"),  # not a registered model
        (lambda: OrderFactory(status="paid"), "Purchase'); alert(1); ('", "is registered"),
        (lambda: OrderFactory(status="paid"), "</script><script>alert(1)</script>", "registered"),
        (lambda: OrderFactory(status="paid"), 7, "no 7 event is registered"),
    ],
)
def test_bad_arguments_render_nothing(caplog, source, event_name, logged):
    html = render("{% capi_event obj event_name %}", obj=source(), event_name=event_name)
    assert html == ""
    assert logged in caplog.text


def test_an_event_id_the_outbox_cannot_store_renders_nothing(isolated_registry, caplog):
    from django_capi import ModelEvent, register
    from tests.shop.models import Product

    @register(Product)
    class Viewed(ModelEvent[Product]):
        event_name = "ViewContent"
        action_source = "system_generated"

        def event_id(self, instance):
            return f"view-{instance.pk}\x00"  # PostgreSQL refuses even to look it up

    item = Product.objects.create(sku="SKU-1", name="Mug")
    assert render('{% capi_event item "ViewContent" %}', item=item) == ""
    assert "the event id of" in caplog.text and "is unusable" in caplog.text


def test_a_failing_server_page_view_leaves_the_pixel_on_the_page(monkeypatch, caplog):
    from django_capi.templatetags import capi

    def broken(*args, **kwargs):
        raise RuntimeError("the outbox is unreachable")

    monkeypatch.setattr(capi, "send_event", broken)
    with override_settings(DJANGO_CAPI={"PIXEL_ID": "1234567890", "SERVER_PAGE_VIEW": True}):
        html = render("{% capi_pixel %}")
    assert calls(html)[1][:2] == ["track", "PageView"]
    assert "recording the server PageView raised" in caplog.text


@pytest.mark.parametrize(
    "headers",
    [
        {"HTTP_REFERER": "http://["},
        {"HTTP_REFERER": "https://x]/", "HTTP_USER_AGENT": "UA\x00\udcff"},
        {"HTTP_COOKIE": '_fbp="fb.1.1700000000000.\\000"', "REMOTE_ADDR": "\x00"},
    ],
)
def test_a_hostile_request_gets_the_pixel_and_its_server_page_view(headers):
    order = OrderFactory(status="paid")
    request = RequestFactory().get("/", **{"HTTP_USER_AGENT": UA, **headers})
    with override_settings(DJANGO_CAPI={"PIXEL_ID": "1234567890", "SERVER_PAGE_VIEW": True}):
        html = render('{% capi_pixel %}{% capi_event order "Purchase" %}', request, order=order)
    page_view = OutboxEvent.objects.get(event_name="PageView")
    assert [call[:2] for call in calls(html)] == [
        ["init", "1234567890"],
        ["track", "PageView"],
        ["track", "Purchase"],
    ]
    assert calls(html)[1][3] == {"eventID": page_view.event_id}
