"""``CapiMiddleware``: the browser context of each request, for every event it creates.

It collects the request's browser context (``browser.py``: IP, user agent, ``_fbp``/``_fbc``,
page, consent), makes it the context of every ``send_event`` and model save during the
request, and sets on the response the first-party cookies collecting it made (an ``_fbc``
from a Meta click id, a new ``_fbp``), or takes them back when the visitor refused.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.http import HttpRequest, HttpResponseBase
from django.utils.cache import patch_vary_headers

from . import browser, context
from .conf import capi_settings

#: Meta recommends keeping ``_fbc`` (and ``_fbp``) for 90 days.
COOKIE_MAX_AGE = 90 * 24 * 3600


class CapiMiddleware:
    """Place it after ``SessionMiddleware`` and ``AuthenticationMiddleware``."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if iscoroutinefunction(self):
            return self.__acall__(request)
        values = browser.collect(request)
        with context.use_browser_context(values):
            response = self.get_response(request)
        self._after(request, response)
        return response

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        # The session and the CONSENT callable may touch the database: not in the loop.
        values = await sync_to_async(browser.collect)(request)
        with context.use_browser_context(values):
            result: Awaitable[HttpResponseBase] = self.get_response(request)
            response = await result
        self._after(request, response)
        return response

    def _after(self, request: HttpRequest, response: HttpResponseBase) -> None:
        conf = capi_settings()
        if conf.consent is not None:
            patch_vary_headers(response, ("Cookie",))  # caches must not share the Pixel
        if not browser.has_consent(request):
            # A refusal takes back what was set before it.
            for name in ("_fbc", "_fbp"):
                if name in request.COOKIES:
                    response.delete_cookie(name, domain=conf.cookie_domain, samesite="Lax")
            return
        for name, value in browser.new_cookies(request).items():
            response.set_cookie(
                name,
                value,
                max_age=COOKIE_MAX_AGE,
                domain=conf.cookie_domain,  # the Pixel's own cookies live on the site domain
                samesite="Lax",
                secure=request.is_secure(),
                httponly=False,  # the Pixel reads them too
            )
