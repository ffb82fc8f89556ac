"""With a ``CONSENT`` callable, a shopper who has not accepted tracking leaves no trace: no
Pixel event, no server event, no Meta cookie. Accepting the banner turns both sides on."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from django_capi import OutboxEvent
from tests.browser.pixel import PageVisit, ShopBrowser
from tests.shop.models import Product

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def consent_banner(settings: Any) -> None:
    settings.DJANGO_CAPI = {**settings.DJANGO_CAPI, "CONSENT": "tests.shop.views.tracking_allowed"}


@pytest.fixture
def tee() -> Product:
    return Product.objects.create(sku="TEE-7", name="Linen shirt", price=Decimal("49.00"))


def assert_pixel_silent(visit: PageVisit) -> None:
    """No Pixel at all: not even an init carrying advanced matching."""
    assert visit.calls == [], visit.calls


def test_nothing_is_tracked_until_the_shopper_accepts(
    shop_browser: ShopBrowser, tee: Product
) -> None:
    shop = shop_browser
    landing = shop.goto(f"/shop/product/{tee.pk}/?fbclid=AbC123")
    assert_pixel_silent(landing)
    assert not OutboxEvent.objects.exists()
    assert shop.cookie("_fbc") is None
    assert shop.cookie("_fbp") is None

    # The banner sends the shopper back to the page, click id included.
    accepted = shop.submit(shop.page.get_by_role("button", name="Accept tracking"))
    assert shop.cookie("shop_consent") == "granted"
    assert shop.cookie("_fbc", required=True).endswith(".AbC123")
    view_content = accepted.track("ViewContent")
    row = OutboxEvent.objects.get()
    assert (row.event_name, row.event_id) == ("ViewContent", view_content[3]["eventID"])
    assert row.payload["user_data"]["fbc"] == shop.cookie("_fbc")
    shop.log.assert_clean()


def test_a_refusal_is_honoured_on_every_page(shop_browser: ShopBrowser, tee: Product) -> None:
    shop = shop_browser
    shop.goto(f"/shop/product/{tee.pk}/?fbclid=AbC123")
    refused = shop.submit(shop.page.get_by_role("button", name="Refuse tracking"))
    assert shop.cookie("shop_consent") == "denied"
    assert_pixel_silent(refused)
    cart = shop.submit(shop.page.get_by_role("button", name="Add to cart"))
    assert_pixel_silent(cart)
    assert shop.page.locator("tbody td a").text_content() == "Linen shirt"
    assert not OutboxEvent.objects.exists()
    assert shop.cookie("_fbc") is None
    shop.log.assert_clean()
