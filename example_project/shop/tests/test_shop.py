"""The example shop's pages and the events they record (run by tests/test_example_shop.py
with the example project's settings)."""

import re
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.test import Client

from django_capi import OutboxEvent, event_id_for
from django_capi.delivery import drain
from shop.models import Lead, Order, Product

pytestmark = pytest.mark.django_db

FBCLID = "IwAR2F4-dbP0l7Mn1IawQQGCINEz7PYXQvwjNwB_qa2ofrHyiLjcbCRxTDMgk"
FBP = "fb.1.1596403881668.1116446470"


@pytest.fixture(autouse=True)
def products():
    call_command("seed_shop", verbosity=0)


@pytest.fixture
def shopper():
    client = Client(HTTP_USER_AGENT="Mozilla/5.0 Shopper", REMOTE_ADDR="203.0.113.7")
    client.cookies["_fbp"] = FBP  # the Pixel's own cookie
    return client


def pixel_ids(html, event_name):
    """The eventIDs of ``fbq('track', event_name, …)`` calls in a page."""
    return re.findall(rf'fbq\("track", "{event_name}", .*?\{{"eventID": "([^"]+)"\}}\)', html)


def rows(event_name):
    return list(OutboxEvent.objects.filter(event_name=event_name).order_by("pk"))


def add_to_cart(client, slug, quantity=1):
    product = Product.objects.get(slug=slug)
    return client.post("/cart/add/", {"product": product.pk, "quantity": quantity}, follow=True)


def place_order(client, **fields):
    data = {
        "email": "Ada.Lovelace@Example.com",
        "phone": "+44 20 7946 0958",
        "first_name": "Ada",
        "last_name": "Lovelace",
        "street": "12 St James's Square",
        "city": "London",
        "postal_code": "SW1Y 4JH",
        "country": "GB",
        **fields,
    }
    response = client.post("/checkout/", data)
    assert response.status_code == 302, response.content.decode()
    return Order.objects.get(pk=int(response["Location"].split("/")[2]))


def test_the_catalogue_lists_the_products_and_renders_the_pixel(shopper):
    html = shopper.get("/").content.decode()
    for product in Product.objects.all():
        assert product.get_absolute_url() in html
    assert 'fbq("init", "1234567890123456"' in html
    assert OutboxEvent.objects.count() == 0  # a PageView is browser-only by default


def test_a_product_page_records_view_content_and_renders_its_pixel_twin(shopper):
    html = shopper.get(f"/products/organic-t-shirt/?fbclid={FBCLID}").content.decode()
    [row] = rows("ViewContent")
    assert pixel_ids(html, "ViewContent") == [row.event_id]
    assert row.payload["custom_data"]["content_ids"] == ["TEE-01"]
    assert row.payload["user_data"]["fbc"].endswith(f".{FBCLID}")
    assert row.payload["user_data"]["fbp"] == FBP


def test_an_unknown_product_is_a_404(shopper):
    assert shopper.get("/products/nothing/").status_code == 404


def test_add_to_cart_records_add_to_cart_shown_on_the_cart_page_once(shopper):
    html = add_to_cart(shopper, "enamel-mug", quantity=2).content.decode()
    [row] = rows("AddToCart")
    assert pixel_ids(html, "AddToCart") == [row.event_id]
    assert row.payload["custom_data"]["contents"] == [
        {"id": "MUG-01", "quantity": 2, "item_price": 12.5}
    ]
    assert "25.00 EUR" in html
    # A reload does not count the AddToCart again in the browser.
    assert pixel_ids(shopper.get("/cart/").content.decode(), "AddToCart") == []


def test_bad_cart_input_is_refused_without_an_event(shopper):
    assert shopper.post("/cart/add/", {"product": "x", "quantity": 1}).status_code == 400
    assert shopper.post("/cart/add/", {"product": 1, "quantity": 0}).status_code == 400
    assert OutboxEvent.objects.count() == 0


def test_checkout_with_an_empty_cart_goes_back_to_the_cart(shopper):
    response = shopper.get("/checkout/")
    assert (response.status_code, response["Location"]) == (302, "/cart/")


def test_checkout_records_initiate_checkout_and_redisplays_errors_without_a_second(shopper):
    add_to_cart(shopper, "canvas-tote")
    html = shopper.get("/checkout/").content.decode()
    [row] = rows("InitiateCheckout")
    assert pixel_ids(html, "InitiateCheckout") == [row.event_id]
    assert row.payload["custom_data"]["value"] == 15.0
    response = shopper.post("/checkout/", {"email": "not an email"})
    assert response.status_code == 200
    assert "Enter a valid email address." in response.content.decode()
    assert len(rows("InitiateCheckout")) == 1
    assert Order.objects.count() == 0


def test_a_card_payment_records_the_purchase_the_thank_you_page_shares(shopper):
    shopper.get(f"/products/organic-t-shirt/?fbclid={FBCLID}")
    add_to_cart(shopper, "organic-t-shirt", quantity=2)
    add_to_cart(shopper, "wool-beanie")
    shopper.get("/checkout/")
    order = place_order(shopper)
    assert order.status == "new" and order.total == Decimal("63.80")
    assert order.browser["fbc"].endswith(f".{FBCLID}")
    assert rows("Purchase") == []
    response = shopper.post(f"/orders/{order.pk}/pay/", {"method": "card"}, follow=True)
    html = response.content.decode()
    [row] = rows("Purchase")
    assert row.event_id == event_id_for(order, "Purchase")
    assert pixel_ids(html, "Purchase") == [row.event_id]
    assert row.status == "pending", row.last_error
    assert row.warnings == []
    custom = row.payload["custom_data"]
    assert custom["value"] == 63.8 and custom["order_id"] == str(order.pk)
    assert {item["id"]: item["quantity"] for item in custom["contents"]} == {
        "TEE-01": 2,
        "CAP-01": 1,
    }
    user_data = row.payload["user_data"]
    for key in ("em", "ph", "fn", "ln", "ct", "zp", "country", "fbc", "fbp"):
        assert user_data.get(key), key
    assert "Ada" not in str(row.payload) and "London" not in str(row.payload)
    # The cart is empty again; reloading the thank-you page records nothing new.
    assert shopper.get("/cart/").context["lines"] == []
    assert pixel_ids(shopper.get(order.get_absolute_url()).content.decode(), "Purchase") == [
        row.event_id
    ]
    assert len(rows("Purchase")) == 1


def test_a_transfer_paid_by_the_webhook_sends_the_checkout_browsers_context(shopper):
    shopper.get(f"/products/enamel-mug/?fbclid={FBCLID}")
    add_to_cart(shopper, "enamel-mug")
    order = place_order(shopper)
    html = shopper.post(f"/orders/{order.pk}/pay/", {"method": "transfer"}, follow=True)
    assert pixel_ids(html.content.decode(), "Purchase") == []  # not paid: no Purchase yet
    assert rows("Purchase") == []

    provider = Client(HTTP_USER_AGENT="PaymentProvider/1.0", REMOTE_ADDR="198.51.100.1")
    assert provider.post(f"/payments/{order.pk}/paid/").status_code == 204
    assert provider.post(f"/payments/{order.pk}/paid/").status_code == 204  # a retried call
    [row] = rows("Purchase")
    user_data = row.payload["user_data"]
    assert user_data["fbc"].endswith(f".{FBCLID}")
    assert user_data["fbp"] == FBP
    assert user_data["client_ip_address"] == "203.0.113.7"
    assert user_data["client_user_agent"] == "Mozilla/5.0 Shopper"
    assert row.warnings == []
    html = shopper.get(order.get_absolute_url()).content.decode()
    assert pixel_ids(html, "Purchase") == [row.event_id]


def test_the_webhook_for_an_unknown_order_is_a_404():
    assert Client().post("/payments/999/paid/").status_code == 404


def test_another_browser_cannot_see_or_pay_an_order(shopper):
    add_to_cart(shopper, "enamel-mug")
    order = place_order(shopper)
    stranger = Client()
    assert stranger.get(order.get_absolute_url()).status_code == 404
    assert stranger.post(f"/orders/{order.pk}/pay/", {"method": "card"}).status_code == 404
    assert Order.objects.get().status == "new"


def test_the_contact_form_records_a_lead_with_its_pixel_twin(shopper):
    shopper.get(f"/?fbclid={FBCLID}")
    response = shopper.post(
        "/contact/",
        {"first_name": "Grace", "email": "grace@example.com", "message": "Bulk order?"},
        follow=True,
    )
    [row] = rows("Lead")
    assert pixel_ids(response.content.decode(), "Lead") == [row.event_id]
    assert row.payload["action_source"] == "website"
    assert (row.status, row.warnings) == ("pending", [])
    assert row.payload["user_data"]["fbc"].endswith(f".{FBCLID}")
    assert {"em", "fn"} <= set(row.payload["user_data"])
    assert Lead.objects.get().first_name == "Grace"
    assert Client().get(response.redirect_chain[-1][0]).status_code == 404


def test_an_invalid_contact_form_is_shown_again_and_records_nothing(shopper):
    response = shopper.post("/contact/", {"email": "nope"})
    assert response.status_code == 200
    assert OutboxEvent.objects.count() == Lead.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_the_shops_events_reach_the_emulator(shopper, capi_graph):
    add_to_cart(shopper, "organic-t-shirt")
    order = place_order(shopper)
    shopper.post(f"/orders/{order.pk}/pay/", {"method": "card"})
    drain()
    assert set(capi_graph.event_ids()) == set(
        OutboxEvent.objects.values_list("event_id", flat=True)
    )
    assert OutboxEvent.objects.exclude(status="delivered").count() == 0


def test_seed_shop_makes_a_demo_admin_who_can_open_the_outbox_and_health_page():
    call_command("seed_shop", "--admin", "admin", "demo-password", verbosity=0)
    admin = Client()
    assert admin.login(username="admin", password="demo-password")
    assert admin.get("/admin/django_capi/outboxevent/").status_code == 200
    assert admin.get("/admin/django_capi/outboxevent/health/").status_code == 200
    assert admin.get("/admin/shop/order/").status_code == 200
    call_command("seed_shop", verbosity=0)
    assert Product.objects.count() == 4
