"""The issue's "done when": a shopper who lands from a Meta ad (``?fbclid=…``) views a
product, adds it to the cart and checks out in a real Chromium, and every Pixel event the
browser fires shares its ``event_id`` with the outbox row that the server recorded, which
carries the browser's ``fbc``, ``fbp``, IP and user agent."""

from __future__ import annotations

import re
from collections import Counter
from decimal import Decimal
from typing import Any

import pytest
import requests

from django_capi import OutboxEvent
from tests.browser.pixel import PageVisit, ShopBrowser
from tests.shop.models import Order, Product

pytestmark = pytest.mark.django_db(transaction=True)

FBCLID = "AbCdEf123XyZ"  # mixed case: Meta needs the click id exactly as it came
FBC = re.compile(r"fb\.1\.\d{13}\." + FBCLID)
FBP = re.compile(r"fb\.1\.\d{13}\.\d+")


@pytest.fixture
def capi(settings: Any) -> Any:
    """Set ``DJANGO_CAPI`` keys for this test (the live server thread sees them too)."""

    def configure(**keys: object) -> None:
        settings.DJANGO_CAPI = {**settings.DJANGO_CAPI, **keys}

    return configure


@pytest.fixture
def tee() -> Product:
    return Product.objects.create(sku="TEE-42", name="Organic T-shirt", price=Decimal("19.90"))


def add_to_cart(shop: ShopBrowser, quantity: int) -> PageVisit:
    shop.page.get_by_label("Quantity").fill(str(quantity))
    return shop.submit(shop.page.get_by_role("button", name="Add to cart"))


def place_order(shop: ShopBrowser, *, payment: str) -> PageVisit:
    checkout = shop.submit(shop.page.get_by_role("link", name="Checkout"))
    assert checkout.tracks == [["track", "PageView", {}, checkout.tracks[0][3]]]
    page = shop.page
    page.get_by_label("Email").fill("Ada.Lovelace@Example.com")
    page.get_by_label("First name").fill("Ada")
    page.get_by_label("Phone").fill("+44 20 7946 0958")
    page.get_by_label(payment).check()
    return shop.submit(page.get_by_role("button", name="Place order"))


def browser_pairs(shop: ShopBrowser, *, page_views: bool = True) -> set[tuple[str, str]]:
    """``(event_name, eventID)`` of every Pixel event the shop's pages sent."""
    pairs = set()
    for call in shop.tracks:
        assert len(call) == 4, call
        method, name, data, options = call
        assert method == "track", call  # the shop's events are all standard ones
        assert isinstance(data, dict), call
        assert set(options) == {"eventID"}, call
        if name != "PageView" or page_views:
            pairs.add((name, options["eventID"]))
    return pairs


def outbox_pairs() -> set[tuple[str, str]]:
    return set(OutboxEvent.objects.values_list("event_name", "event_id"))


def test_every_pixel_event_is_its_server_events_twin_with_fbc_fbp_ip_and_agent(
    shop_browser: ShopBrowser, capi: Any, tee: Product
) -> None:
    capi(SERVER_PAGE_VIEW=True)
    shop = shop_browser

    landing = shop.goto(f"/shop/product/{tee.pk}/?fbclid={FBCLID}")
    fbc = shop.cookie("_fbc")
    assert fbc is not None and FBC.fullmatch(fbc), fbc
    assert any(header.startswith(f"_fbc={fbc};") for header in landing.set_cookies), (
        "the server, not the Pixel, sets _fbc"
    )
    assert "SameSite=Lax" in next(h for h in landing.set_cookies if h.startswith("_fbc="))
    fbp = shop.cookie("_fbp")  # set by the (recorded) Pixel library, as fbevents.js does
    assert fbp is not None and FBP.fullmatch(fbp), fbp
    init = landing.calls[0]
    assert init[:2] == ["init", "1234567890"]
    view_content = landing.track("ViewContent")
    assert view_content[2]["content_ids"] == ["TEE-42"]

    cart = add_to_cart(shop, quantity=2)
    add_to_cart_call = cart.track("AddToCart")
    assert add_to_cart_call[2]["contents"] == [{"id": "TEE-42", "quantity": 2, "item_price": 19.9}]

    thanks = place_order(shop, payment="Card (paid at once)")
    purchase = thanks.track("Purchase")
    again = shop.goto(thanks.url)  # reloading the thank-you page counts nothing twice
    assert again.track("Purchase")[3] == purchase[3]

    # Each Pixel event has exactly one server twin, and each server event a Pixel twin.
    assert browser_pairs(shop) == outbox_pairs()
    assert Counter(OutboxEvent.objects.values_list("event_name", flat=True)) == {
        "PageView": 5,  # product, cart, checkout, thank-you, thank-you again
        "ViewContent": 1,
        "AddToCart": 1,
        "Purchase": 1,
    }
    assert purchase[3] == {"eventID": OutboxEvent.objects.get(event_name="Purchase").event_id}

    # The server events carry what Meta matches the shopper with.
    landing_ids = {options["eventID"] for *_, options in landing.tracks}
    user_agent = shop.user_agent()
    for row in OutboxEvent.objects.all():
        user_data = row.payload["user_data"]
        assert row.status == OutboxEvent.Status.PENDING, row.last_error
        assert user_data["fbc"] == fbc, row.event_name
        assert user_data["client_ip_address"] == "127.0.0.1"
        assert user_data["client_user_agent"] == user_agent
        if row.event_id in landing_ids:
            # The landing page's response came before the Pixel library made _fbp.
            assert "fbp" not in user_data, row.event_name
        else:
            assert user_data["fbp"] == fbp, row.event_name

    row = OutboxEvent.objects.get(event_name="ViewContent")
    assert row.payload["event_source_url"] == f"{shop.base_url}/shop/product/{tee.pk}/"
    assert view_content[2] == row.payload["custom_data"]
    assert (
        add_to_cart_call[2]
        == OutboxEvent.objects.get(event_name="AddToCart").payload["custom_data"]
    )

    # The Purchase the browser saw is the server's, to the last field.
    order = Order.objects.get()
    row = OutboxEvent.objects.get(event_name="Purchase")
    assert purchase[2] == row.payload["custom_data"]
    assert purchase[2]["value"] == 39.8
    assert purchase[2]["currency"] == "EUR"
    assert purchase[2]["order_id"] == str(order.pk)
    assert order.browser["fbc"] == fbc
    assert order.browser["fbp"] == fbp
    shop.log.assert_clean()


def test_an_order_paid_later_by_a_webhook_still_carries_the_shoppers_browser(
    shop_browser: ShopBrowser, capi: Any, tee: Product
) -> None:
    capi(SET_FBP_COOKIE=True)
    shop = shop_browser

    landing = shop.goto(f"/shop/product/{tee.pk}/?fbclid={FBCLID}")
    fbc, fbp = shop.cookie("_fbc"), shop.cookie("_fbp")
    assert fbc is not None and FBC.fullmatch(fbc), fbc
    assert fbp is not None and FBP.fullmatch(fbp), fbp
    # The server made _fbp, and the Pixel library kept it.
    assert any(header.startswith(f"_fbp={fbp};") for header in landing.set_cookies)
    add_to_cart(shop, quantity=1)
    thanks = place_order(shop, payment="Bank transfer (paid later)")
    assert shop.page.locator(".status").text_content() == "new"
    assert [call[1] for call in thanks.tracks] == ["PageView"]
    assert not OutboxEvent.objects.filter(event_name="Purchase").exists()

    # The payment provider calls the webhook: another client, no cookies.
    order = Order.objects.get()
    response = requests.post(
        f"{shop.base_url}/shop/webhooks/payment/",
        data={"order": order.pk},
        headers={"User-Agent": "PaymentProvider-Webhook/1.0"},
        timeout=20,
    )
    assert response.status_code == 200, response.text

    paid = shop.goto(thanks.url)
    purchase = paid.track("Purchase")
    row = OutboxEvent.objects.get(event_name="Purchase")
    assert purchase[3] == {"eventID": row.event_id}
    assert purchase[2] == row.payload["custom_data"]
    user_data = row.payload["user_data"]
    assert user_data["fbc"] == fbc
    assert user_data["fbp"] == fbp
    assert user_data["client_user_agent"] == shop.user_agent()
    assert user_data["client_ip_address"] == "127.0.0.1"

    # Without SERVER_PAGE_VIEW, PageView stays a browser event; every other one has its twin.
    assert not OutboxEvent.objects.filter(event_name="PageView").exists()
    assert browser_pairs(shop, page_views=False) == outbox_pairs()
    for row in OutboxEvent.objects.all():
        assert row.payload["user_data"]["fbp"] == fbp, row.event_name  # from the first page on
        assert row.payload["user_data"]["fbc"] == fbc, row.event_name
    shop.log.assert_clean()


def test_without_javascript_the_noscript_image_reports_the_page_view(
    open_shop: Any, tee: Product
) -> None:
    shop = open_shop(java_script_enabled=False)
    visit = shop.goto(f"/shop/product/{tee.pk}/")
    assert visit.calls == []
    (image,) = shop.log.pixel_images
    assert re.fullmatch(
        r"https://www\.facebook\.com/tr\?id=1234567890&ev=PageView&eid=[0-9a-f-]{36}&noscript=1",
        image,
    )
    shop.log.assert_clean()
