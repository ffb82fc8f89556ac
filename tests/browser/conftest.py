"""Real-browser fixtures: Debian's Chromium driven by playwright against pytest-django's
live server.

The machine has no internet: Chromium starts with background networking off, and each page
routes Meta's hosts to local stand-ins (``fbevents_recorder.js`` for the Pixel library, an
empty 204 for the ``<noscript>`` image) and aborts every other request that does not go to
the live server, recording it in ``BrowserLog.blocked``.

Chromium comes from ``make browser-deps`` (``apt-get install chromium``); never run
``playwright install``, whose browser download cannot work here.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.conf import settings
from django.test import override_settings

from example_project.chromium import CHROMIUM_ARGS
from tests.browser.pixel import BrowserLog, ShopBrowser

CAPI_MIDDLEWARE = "django_capi.middleware.CapiMiddleware"
RECORDER = Path(__file__).with_name("fbevents_recorder.js")
#: Generous for a loaded 2-core CI machine; tests wait on conditions, never on sleeps.
TIMEOUT_MS = 20_000


@pytest.hookimpl(tryfirst=True)  # before `-m` selects on the markers
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.path).parents:
            item.add_marker(pytest.mark.browser)
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """Debian's Chromium, one per test module.

    Playwright's sync API keeps an asyncio event loop running in this thread for as long as
    it is started. Django's ORM then refuses to run (it believes it is called from async
    code) and ``asyncio.run`` fails, so the browser lives only as long as one module of these
    tests, and the ORM's check is lifted for that time only: the tests' ORM calls are plain
    synchronous ones, made while playwright waits for nothing.
    """
    executable = shutil.which("chromium")
    if executable is None:
        pytest.fail("chromium is not installed: run `make browser-deps` (Debian's chromium)")
    from playwright.sync_api import sync_playwright

    with pytest.MonkeyPatch.context() as patch, sync_playwright() as playwright:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        browser = playwright.chromium.launch(
            executable_path=executable, headless=True, args=list(CHROMIUM_ARGS), timeout=60_000
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="session")
def shop_server(request: pytest.FixtureRequest) -> Any:
    """pytest-django's live server, with ``CapiMiddleware`` after the auth middleware.

    The server's handler reads its settings once, when it starts: if the test settings do not
    list ``CapiMiddleware`` (or set no ``STATIC_URL``, which the live server's static files
    handler needs), they are given to the server alone.
    """
    middleware = list(settings.MIDDLEWARE)
    if CAPI_MIDDLEWARE not in middleware:
        auth = middleware.index("django.contrib.auth.middleware.AuthenticationMiddleware")
        middleware.insert(auth + 1, CAPI_MIDDLEWARE)
    with override_settings(MIDDLEWARE=middleware, STATIC_URL=settings.STATIC_URL or "/static/"):
        return request.getfixturevalue("live_server")


@pytest.fixture
def open_shop(chromium: Any, shop_server: Any) -> Iterator[Callable[..., ShopBrowser]]:
    """Open the live shop in a fresh browser context (no cookies): ``open_shop()``, or with
    Playwright's context options, e.g. ``open_shop(java_script_enabled=False)``."""
    # 127.0.0.1, not localhost: Chromium would try ::1 first, and the IP the server records
    # must be known.
    base_url = shop_server.url.replace("://localhost:", "://127.0.0.1:")
    recorder = RECORDER.read_text()
    contexts: list[Any] = []

    def open_(**options: Any) -> ShopBrowser:
        log = BrowserLog()
        context = chromium.new_context(base_url=base_url, locale="en-US", **options)
        contexts.append(context)
        context.set_default_timeout(TIMEOUT_MS)
        context.set_default_navigation_timeout(TIMEOUT_MS)
        context.route(
            "**/*", partial(_route, server=urlsplit(base_url).netloc, recorder=recorder, log=log)
        )
        page = context.new_page()

        def on_dialog(dialog: Any) -> None:
            log.dialogs.append(f"{dialog.type}: {dialog.message}")
            dialog.dismiss()

        page.on("dialog", on_dialog)
        page.on("pageerror", lambda error: log.page_errors.append(str(error)))
        return ShopBrowser(page=page, base_url=base_url, log=log)

    try:
        yield open_
    finally:
        for context in contexts:
            context.close()


def _route(route: Any, *, server: str, recorder: str, log: BrowserLog) -> None:
    """The closed network: the live server, and stand-ins for Meta's two hosts."""
    url = urlsplit(route.request.url)
    if url.netloc == server:
        route.continue_()
    elif url.hostname == "connect.facebook.net":
        route.fulfill(status=200, content_type="application/javascript", body=recorder)
    elif url.hostname == "www.facebook.com":
        log.pixel_images.append(route.request.url)
        route.fulfill(status=204, body="")
    else:
        log.blocked.append(route.request.url)
        route.abort("blockedbyclient")


@pytest.fixture
def shop_browser(open_shop: Callable[..., ShopBrowser]) -> ShopBrowser:
    """The live shop in a fresh browser context, with the Pixel recorder."""
    return open_shop()


@pytest.fixture
def page(shop_browser: ShopBrowser) -> Any:
    """The Playwright page of ``shop_browser``."""
    return shop_browser.page
