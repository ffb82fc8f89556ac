"""The outbox changelist in a real Chromium: it fits a 1280 px wide window."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import django.contrib.admin
import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client

import django_capi
from tests.browser.pixel import ShopBrowser
from tests.factories import OrderFactory, OutboxEventFactory

pytestmark = pytest.mark.django_db(transaction=True)

STATIC_FOLDERS = [
    (Path(django.contrib.admin.__file__).parent / "static").resolve(),
    (Path(django_capi.__file__).parent / "static").resolve(),
]
#: A common laptop window; the admin must not scroll sideways in it.
WIDTH = 1280


def signed_in(open_shop: Callable[..., ShopBrowser], width: int) -> ShopBrowser:
    user = User.objects.create_superuser("admin", "admin@example.com", "x")
    client = Client()
    client.force_login(user)
    shop = open_shop(viewport={"width": width, "height": 800})
    shop.page.context.add_cookies(
        [
            {
                "name": settings.SESSION_COOKIE_NAME,
                "value": client.cookies[settings.SESSION_COOKIE_NAME].value,
                "url": shop.base_url,
            }
        ]
    )
    # The test server serves no app's static files (no STATIC_ROOT): the admin's CSS and JS
    # come from the apps' folders, as `collectstatic` would gather them.
    shop.page.route(f"{shop.base_url}/static/**", serve_static)
    return shop


def serve_static(route: Any) -> None:
    relative = urlsplit(route.request.url).path.removeprefix("/static/")
    for folder in STATIC_FOLDERS:
        path = (folder / relative).resolve()
        if path.is_file() and folder in path.parents:
            types = {".css": "text/css", ".js": "application/javascript", ".svg": "image/svg+xml"}
            kind = types.get(path.suffix, "application/octet-stream")
            route.fulfill(status=200, body=path.read_bytes(), content_type=kind)
            return
    route.fulfill(status=404, body="")


#: How many pixels the page, or the table inside its scrolling box, is wider than the room it
#: has (0 or less: every column in sight, nothing scrolls sideways).
OVERFLOW = """Math.max(
    document.documentElement.scrollWidth - document.documentElement.clientWidth,
    document.querySelector('#result_list').parentElement.scrollWidth
        - document.querySelector('#result_list').parentElement.clientWidth)"""


def overflow(page: Any) -> int:
    return int(page.evaluate(OVERFLOW))


def test_the_changelist_fits_a_1280_px_window(open_shop, settings):
    settings.STATIC_URL = "/static/"  # what the live server serves the admin's CSS under
    # The widest values each column can hold: a 50-character custom event name, Meta's
    # longest titles, an order link, every status.
    OrderFactory(status="paid")
    OutboxEventFactory(event_name="SubscriptionRenewalWithAVeryLongCustomEventNameX")
    OutboxEventFactory(
        failed=True,
        last_error="Meta HTTP 400 code 100/2804008 Invalid Customer Information Parameter "
        "with a title as long as the column allows: user_data.client_ip_address must be valid",
    )
    OutboxEventFactory(delivered=True, pixel_id="123456789012345")
    OutboxEventFactory(cancelled=True)
    OutboxEventFactory(backing_off=True)
    shop = signed_in(open_shop, WIDTH)
    shop.page.goto("/admin/django_capi/outboxevent/")
    shop.page.wait_for_load_state("load")
    assert shop.page.locator("#result_list tbody tr").count() == 6
    # The admin's own styles are in force (a page without them would prove nothing).
    assert shop.page.evaluate("getComputedStyle(document.body).fontFamily") != "Times New Roman"
    assert shop.page.locator("#changelist-filter").is_visible()
    assert not shop.log.page_errors
    assert overflow(shop.page) <= 0

    assert shop.page.locator("#nav-sidebar").is_visible()  # the admin's default layout
    assert shop.page.locator("th.column-source_link").is_visible()  # the last column

    # The check itself can fail: without django-capi's stylesheet for the list, Django's
    # unwrapped dates and values push the last columns out of sight.
    shop.page.evaluate(
        "document.querySelector('link[href$=\"django_capi/admin/changelist.css\"]').remove()"
    )
    assert overflow(shop.page) > 0
