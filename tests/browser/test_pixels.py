"""Several pixels on one page, in a real Chromium: each pixel is initialised, and each
conversion reaches its own pixel only, with the event id of its own outbox row."""

from __future__ import annotations

from typing import Any

import pytest

from django_capi import OutboxEvent
from tests.browser.pixel import ShopBrowser
from tests.shop.views import BRAND_PIXEL

pytestmark = pytest.mark.django_db(transaction=True)


def test_two_pixels_on_a_page_each_get_their_own_conversion(
    shop_browser: ShopBrowser, settings: Any
) -> None:
    default = settings.DJANGO_CAPI["PIXEL_ID"]
    settings.DJANGO_CAPI = {
        **settings.DJANGO_CAPI,
        "PIXELS": {BRAND_PIXEL: {"ACCESS_TOKEN": "the-brands-own-token"}},
    }
    visit = shop_browser.goto("/shop/brands/")
    shop_browser.log.assert_clean()

    rows = {row.pixel_id: row for row in OutboxEvent.objects.filter(event_name="Subscribe")}
    assert set(rows) == {default, BRAND_PIXEL}
    assert rows[default].event_id != rows[BRAND_PIXEL].event_id
    assert [call[1] for call in visit.calls if call[0] == "init"] == [default, BRAND_PIXEL]
    subscriptions = [hit for hit in visit.hits if hit[1] == "Subscribe"]
    # What the Pixel sends each pixel is exactly its own row: nothing crosses over.
    assert sorted(subscriptions) == sorted(
        [pixel_id, "Subscribe", row.event_id] for pixel_id, row in rows.items()
    )
    page_views = [hit for hit in visit.hits if hit[1] == "PageView"]
    assert sorted(hit[0] for hit in page_views) == sorted([default, BRAND_PIXEL])
    assert not any(call[0] in ("track", "trackCustom") for call in visit.calls)
