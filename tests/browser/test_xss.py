"""Whatever a product name, a custom_data value or an event name holds, the Pixel's scripts
carry it as data: no script of it runs, no markup of it renders, and the recorded ``fbq``
call holds the exact original string."""

from __future__ import annotations

import hashlib
from decimal import Decimal
from urllib.parse import urlencode

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client

from django_capi import OutboxEvent
from tests.browser.pixel import ShopBrowser
from tests.shop.models import Order, Product

pytestmark = pytest.mark.django_db(transaction=True)

#: Each one at most 50 characters: it is also used as a custom event's name.
CORPUS = [
    "</script><script>window.__pwned=1</script>",
    "</SCRIPT ><script>window.__pwned=1</SCRIPT >",
    "</script/><img src=x onerror=window.__pwned=1>",
    "<!--<script>",
    "<!--<script>window.__pwned=1//-->",
    "<img src=x onerror=window.__pwned=1>",
    '"><svg onload=alert(document.domain)>',
    "<script>alert(1)</script>",
    "line\u2028separator\u2029paragraph",
    'it\'s "quoted" \\ back\\\\slash \\\' \\" \\u003c',
    "');window.__pwned=1;('\"});window.__pwned=1;//",
    "${window.__pwned=1}`+alert(1)+`",
    "&lt;/script&gt; &amp;amp; &#x3C;!-- \\x3c/script",
    "]]><![CDATA[ */ /* <? ?> \u0085 \ufeff 😀",
]
IDS = [f"corpus{index}" for index in range(len(CORPUS))]


def assert_nothing_ran(shop: ShopBrowser) -> None:
    assert shop.page.evaluate("typeof window.__pwned") == "undefined"
    shop.log.assert_clean()


def event_id(name: str) -> str:
    return OutboxEvent.objects.get(event_name=name).event_id


def test_the_corpus_fits_in_an_event_name() -> None:
    assert all(len(text) <= 50 for text in CORPUS)


@pytest.mark.parametrize("text", CORPUS, ids=IDS)
def test_a_product_name_and_a_custom_event_stay_data(shop_browser: ShopBrowser, text: str) -> None:
    shop = shop_browser
    product = Product.objects.create(sku="NASTY-1", name=text, price=Decimal("5.00"))

    visit = shop.goto(f"/shop/product/{product.pk}/")
    assert shop.page.locator("h1").text_content() == text  # the page itself is escaped too
    _, _, data, options = visit.track("ViewContent")
    assert data["content_name"] == text
    assert data == OutboxEvent.objects.get(event_name="ViewContent").payload["custom_data"]
    assert options == {"eventID": event_id("ViewContent")}

    visit = shop.goto("/shop/track/?" + urlencode({"event": text, "label": text}))
    assert shop.page.locator("h1").text_content() == text
    method, name, data, options = visit.track(text)
    assert (method, name, data) == ("trackCustom", text, {"label": text})
    assert options == {"eventID": event_id(text)}
    assert_nothing_ran(shop)


def test_a_cart_and_a_purchase_of_every_nasty_product_stay_data(
    shop_browser: ShopBrowser,
) -> None:
    shop = shop_browser
    user = get_user_model().objects.create_user("ada", email="Ada@Example.com")
    client = Client()
    client.force_login(user)
    shop.page.context.add_cookies(
        [
            {
                "name": settings.SESSION_COOKIE_NAME,
                "value": client.cookies[settings.SESSION_COOKIE_NAME].value,
                "url": shop.base_url,
            }
        ]
    )
    products = [
        Product.objects.create(sku=f"NASTY-{index}", name=text, price=Decimal("1.50"))
        for index, text in enumerate(CORPUS)
    ]
    for product in products:  # the form's POST, from the browser with its cookies
        response = shop.page.request.post(
            "/shop/cart/add/", form={"product": str(product.pk), "quantity": "1"}, max_redirects=0
        )
        assert response.status == 302, response.text()

    cart = shop.goto("/shop/cart/")  # every AddToCart on one page
    for cell, text in zip(shop.page.locator("tbody td a").all(), CORPUS, strict=True):
        assert cell.text_content() == text
    added = [call for call in cart.tracks if call[1] == "AddToCart"]
    assert [data["content_name"] for _, _, data, _ in added] == CORPUS
    rows = OutboxEvent.objects.filter(event_name="AddToCart").order_by("pk")
    assert [options["eventID"] for *_, options in added] == [row.event_id for row in rows]

    shop.submit(shop.page.get_by_role("link", name="Checkout"))
    shop.page.get_by_label("Email").fill("ada@example.com")
    shop.page.get_by_label("First name").fill(CORPUS[0][:100])
    thanks = shop.submit(shop.page.get_by_role("button", name="Place order"))
    _, _, data, options = thanks.track("Purchase")
    row = OutboxEvent.objects.get(event_name="Purchase", source_id=str(Order.objects.get().pk))
    assert options == {"eventID": row.event_id}
    assert data == row.payload["custom_data"]
    assert data["content_name"] == ", ".join(CORPUS)

    # Advanced matching of the signed-in user: hashed as the server hashes it.
    init = thanks.calls[0]
    assert init[:2] == ["init", "1234567890"]
    assert init[2]["em"] == hashlib.sha256(b"ada@example.com").hexdigest()
    assert_nothing_ran(shop)
