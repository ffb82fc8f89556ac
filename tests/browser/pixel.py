"""Helpers of the browser tests: a page of the live shop and the Pixel calls it made."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: ``fbq`` methods that send an event to Meta.
TRACK_METHODS = ("track", "trackCustom")

#: True once the page's Pixel is settled: no base code ran (no Pixel rendered), or the
#: recorder standing in for fbevents.js replayed the queue and records every later call.
_PIXEL_SETTLED = "() => !window.fbq || window.__capiFbqReady === true || !!window.__capiFbqError"


@dataclass
class BrowserLog:
    """What pages did that a test must know about; every list stays empty in a clean run."""

    dialogs: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    #: Requests to www.facebook.com (the ``<noscript>`` image), answered with a 204.
    pixel_images: list[str] = field(default_factory=list)

    def assert_clean(self) -> None:
        assert self.dialogs == [], "a page opened a dialog"
        assert self.page_errors == [], "a page raised a JavaScript error"
        assert self.blocked == [], "a page tried to reach the internet"


@dataclass
class PageVisit:
    url: str
    #: Every ``fbq(...)`` call of the page, in order, as JSON values.
    calls: list[list[Any]]
    #: The ``Set-Cookie`` headers of the page's response (of ``goto`` only).
    set_cookies: list[str] = field(default_factory=list)
    #: ``[pixel id, event name, eventID]`` of each event as the Pixel routes it to a pixel.
    hits: list[list[Any]] = field(default_factory=list)

    @property
    def tracks(self) -> list[list[Any]]:
        """The ``fbq('track' | 'trackCustom', name, data, {eventID})`` calls."""
        return [call for call in self.calls if call and call[0] in TRACK_METHODS]

    def track(self, event_name: str) -> list[Any]:
        """The one track call of ``event_name`` on this page."""
        found = [call for call in self.tracks if call[1] == event_name]
        assert len(found) == 1, f"{len(found)} fbq track calls of {event_name!r} on {self.url}"
        return found[0]


@dataclass
class ShopBrowser:
    """A Playwright page of the live shop that keeps the Pixel calls of every page it saw."""

    page: Any
    base_url: str
    log: BrowserLog
    visits: list[PageVisit] = field(default_factory=list)

    def goto(self, path: str) -> PageVisit:
        response = self.page.goto(path)
        assert response is not None and response.ok, f"GET {path}: {response and response.status}"
        visit = self.settle()
        visit.set_cookies = [
            header["value"]
            for header in response.headers_array()
            if header["name"].lower() == "set-cookie"
        ]
        return visit

    def submit(self, button: Any) -> PageVisit:
        """Click ``button`` (a locator of a submit button or link); wait for the next page."""
        with self.page.expect_navigation():
            button.click()
        return self.settle()

    def settle(self) -> PageVisit:
        """Wait until the current page and its Pixel have loaded; record its calls."""
        self.page.wait_for_load_state("load")
        self.page.wait_for_function(_PIXEL_SETTLED)
        error = self.page.evaluate("window.__capiFbqError")
        assert error is None, error
        calls = self.page.evaluate("window.__capiFbqCalls || []")
        hits = self.page.evaluate("window.__capiFbqHits || []")
        visit = PageVisit(url=self.page.url, calls=calls, hits=hits)
        self.visits.append(visit)
        return visit

    @property
    def tracks(self) -> list[list[Any]]:
        return [call for visit in self.visits for call in visit.tracks]

    def cookie(self, name: str, *, required: bool = False) -> str | None:
        for cookie in self.page.context.cookies(self.base_url):
            if cookie["name"] == name:
                return str(cookie["value"])
        assert not required, f"the browser has no {name} cookie"
        return None

    def user_agent(self) -> str:
        return str(self.page.evaluate("navigator.userAgent"))
