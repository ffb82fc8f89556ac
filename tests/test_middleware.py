"""CapiMiddleware: the browser's IP, ids and consent, for every event of a request."""

from __future__ import annotations

import asyncio
import re
from ipaddress import ip_address

import pytest
from django.contrib.sessions.middleware import SessionMiddleware
from django.http import HttpResponse
from django.test import RequestFactory, override_settings

from django_capi import OutboxEvent, send_event
from django_capi.browser import browser_context
from django_capi.middleware import COOKIE_MAX_AGE, CapiMiddleware
from tests.factories import OrderFactory

pytestmark = pytest.mark.django_db(transaction=True)

UA = "Mozilla/5.0 (X11; Linux x86_64) Test/1.0"
FBC = re.compile(r"fb\.1\.\d{13}\.(?P<click>.+)")


def capi(**settings):
    return override_settings(DJANGO_CAPI={"PIXEL_ID": "1234567890", **settings})


def run(view, request):
    """The request through SessionMiddleware and CapiMiddleware, as in a project."""
    return SessionMiddleware(CapiMiddleware(view))(request)


def get(path="/p/1/", **extra):
    extra.setdefault("HTTP_USER_AGENT", UA)
    extra.setdefault("REMOTE_ADDR", "203.0.113.5")
    return RequestFactory().get(path, **extra)


def lead_view(request):
    row = send_event("Lead", user_data={"em": "a@b.co"})
    return HttpResponse(str(row.pk) if row else "none")


def test_events_of_the_request_carry_its_context():
    request = get("/p/1/?utm=x", HTTP_REFERER="https://www.facebook.com/")
    request.COOKIES.update({"_fbp": "fb.1.1596403881668.1116446470"})
    run(lead_view, request)
    user_data = OutboxEvent.objects.get().payload["user_data"]
    assert user_data["client_ip_address"] == "203.0.113.5"
    assert user_data["client_user_agent"] == UA
    assert user_data["fbp"] == "fb.1.1596403881668.1116446470"
    payload = OutboxEvent.objects.get().payload
    assert payload["event_source_url"] == "http://testserver/p/1/"
    assert payload["referrer_url"] == "https://www.facebook.com/"


def test_huge_headers_are_cut_and_the_row_says_so():
    """A forged 100 kB user agent or referrer cannot bloat the row, Meta's request or the
    context a shop keeps on its order; a real browser's value is never touched (above)."""
    from django_capi.text import MAX_BROWSER_VALUE_LENGTH as LIMIT

    huge_agent = "Mozilla/5.0 " + "A" * 100_000
    huge_page = "https://www.facebook.com/" + "%E2%82%AC" * 12_000  # no escape cut in half
    request = get(HTTP_USER_AGENT=huge_agent, HTTP_REFERER=huge_page)
    run(lead_view, request)
    row = OutboxEvent.objects.get()
    assert row.status == "pending"
    agent = row.payload["user_data"]["client_user_agent"]
    assert agent == huge_agent[:LIMIT]
    referrer = row.payload["referrer_url"]
    assert huge_page.startswith(referrer) and LIMIT - 9 < len(referrer) <= LIMIT
    assert referrer.endswith("%E2%82%AC")
    assert (
        f"client_user_agent: longer than {LIMIT} characters, which no browser sends; "
        "cut to that length"
    ) in row.warnings
    assert f"referrer_url: longer than {LIMIT} characters; cut to that length" in row.warnings
    kept = browser_context(request)
    assert len(kept["client_user_agent"]) == len(kept["referrer_url"]) == 2 * LIMIT


def test_model_saves_inside_the_request_carry_it_too(isolated_registry):
    from django_capi import ModelEvent, register
    from tests.shop.models import Lead

    @register(Lead)
    class Signup(ModelEvent[Lead]):
        event_name = "CompleteRegistration"

        def user_data(self, instance):
            return {"em": instance.email}

    def view(request):
        Lead.objects.create(email="x@y.co")
        return HttpResponse()

    run(view, get())
    row = OutboxEvent.objects.get(event_name="CompleteRegistration")
    assert row.status == "pending"
    assert row.payload["user_data"]["client_ip_address"] == "203.0.113.5"


@pytest.mark.parametrize(
    ("trusted", "forwarded", "expected"),
    [
        (0, "6.6.6.6", "10.0.0.1"),  # a spoofed header is never trusted by default
        (1, "6.6.6.6, 198.51.100.7", "198.51.100.7"),
        (2, "6.6.6.6, 198.51.100.7, 10.0.0.9", "198.51.100.7"),
        (2, "198.51.100.7", "10.0.0.1"),  # fewer hops than proxies: the header lies
        (1, "not-an-ip", "10.0.0.1"),
        (1, "2001:db8::1", "2001:db8::1"),
        # Proxies that add the client's port (Azure, IIS ARR): the address is still theirs.
        (1, "203.0.113.9:4711", "203.0.113.9"),
        (1, "6.6.6.6, [2001:db8::1]:443", "2001:db8::1"),
        (1, "[2001:DB8::1]", "2001:db8::1"),
        (2, "198.51.100.7:80, 10.0.0.9:8080", "198.51.100.7"),
        (0, "203.0.113.9:4711", "10.0.0.1"),  # still never trusted by default
        (1, "203.0.113.9:port", "10.0.0.1"),
        (1, "203.0.113.9:123456", "10.0.0.1"),
        (1, "[2001:db8::1]x", "10.0.0.1"),
    ],
)
def test_the_ip_comes_from_trusted_proxies_only(trusted, forwarded, expected):
    request = get(REMOTE_ADDR="10.0.0.1", HTTP_X_FORWARDED_FOR=forwarded)
    with capi(TRUSTED_PROXY_COUNT=trusted):
        run(lambda request: HttpResponse(), request)
        assert browser_context(request)["client_ip_address"] == expected


def test_a_click_id_becomes_a_first_party_fbc_cookie_with_its_case_kept():
    request = get("/?fbclid=IwAR2F4-dbP0l7Mn1IawQQ")
    response = run(lead_view, request)
    cookie = response.cookies["_fbc"]
    assert FBC.fullmatch(cookie.value)["click"] == "IwAR2F4-dbP0l7Mn1IawQQ"
    assert cookie["max-age"] == COOKIE_MAX_AGE
    assert cookie["samesite"] == "Lax"
    assert not cookie["secure"]
    assert not cookie["httponly"]
    # This request's own events already carry it.
    assert OutboxEvent.objects.get().payload["user_data"]["fbc"] == cookie.value


def test_the_fbc_cookie_is_secure_on_https():
    response = run(lead_view, get("/?fbclid=AbC", secure=True))
    assert response.cookies["_fbc"]["secure"]


def test_a_click_id_in_the_referrer_counts_when_the_url_has_none():
    response = run(lead_view, get("/", HTTP_REFERER="https://shop.example/?fbclid=FromReferrer"))
    assert response.cookies["_fbc"].value.endswith(".FromReferrer")


@pytest.mark.parametrize(
    ("cookie", "replaced"),
    [
        ("fb.1.1554763741205.SameId", False),
        ("fb.1.1554763741205.SameId.AQIAAQAB", False),  # a Parameter Builder appendix
        ("fb.1.1554763741205.OlderId", True),
        ("fb.1.1554763741205.sameid", True),  # case matters
    ],
)
def test_the_cookie_is_replaced_only_for_another_click(cookie, replaced):
    request = get("/?fbclid=SameId")
    request.COOKIES["_fbc"] = cookie
    response = run(lead_view, request)
    assert ("_fbc" in response.cookies) is replaced
    fbc = OutboxEvent.objects.get().payload["user_data"]["fbc"]
    assert (fbc != cookie) is replaced


def test_fbp_is_set_only_when_asked():
    assert "_fbp" not in run(lead_view, get()).cookies
    with capi(SET_FBP_COOKIE=True):
        response = run(lead_view, get())
    assert re.fullmatch(r"fb\.1\.\d{13}\.\d+", response.cookies["_fbp"].value)
    assert OutboxEvent.objects.last().payload["user_data"]["fbp"] == response.cookies["_fbp"].value


def with_session(request):
    from django.contrib.sessions.backends.db import SessionStore

    store = SessionStore()
    store["cart"] = [1]  # the shop's own session
    store.create()
    request.COOKIES["sessionid"] = store.session_key
    return request


def test_the_session_keeps_the_ids_for_later_requests():
    first = with_session(get("/?fbclid=KeepMe"))
    run(lead_view, first)
    second = get("/checkout/")
    second.COOKIES["sessionid"] = first.COOKIES["sessionid"]  # the _fbc cookie got lost
    run(lambda request: HttpResponse(), second)
    assert browser_context(second)["fbc"].endswith(".KeepMe")
    assert set(second.session["django_capi_browser"]) == {"fbc"}  # no IP, no user agent


def test_no_session_is_created_just_for_the_ids():
    response = run(lead_view, get("/?fbclid=NoSession"))
    assert "sessionid" not in response.cookies
    assert "_fbc" in response.cookies


def test_an_oversized_or_strange_click_id_is_ignored():
    for fbclid in ("A" * 600, 'x;y="1"', "a b"):
        request = RequestFactory().get("/", {"fbclid": fbclid}, HTTP_USER_AGENT=UA)
        assert "_fbc" not in run(lead_view, request).cookies


def test_an_order_paid_later_without_a_browser_carries_the_checkout_context():
    stored = {}

    def checkout(request):
        stored.update(browser_context(request))
        return HttpResponse()

    run(checkout, get("/checkout/?fbclid=PaidLater"))
    # Later, in a payment webhook: no request, the stored context speaks for the shopper.
    order = OrderFactory(user_agent="", ip="")
    order.browser = stored
    order.status = "paid"
    order.save()
    user_data = OutboxEvent.objects.get().payload["user_data"]
    assert user_data["fbc"].endswith(".PaidLater")
    assert user_data["client_ip_address"] == "203.0.113.5"
    assert user_data["client_user_agent"] == UA


def refuse(request):
    return request.COOKIES.get("consent") == "yes"


def test_without_consent_nothing_is_stored_and_no_cookie_is_set():
    with capi(CONSENT="tests.test_middleware.refuse"):
        request = with_session(get("/?fbclid=NoConsent"))
        request.COOKIES["_fbp"] = "fb.1.1596403881668.1116446470"  # set before the refusal
        response = run(lead_view, request)
        assert response.content == b"none"
        assert response.cookies["_fbp"]["max-age"] == 0  # taken back
        assert response.cookies["_fbc"]["max-age"] == 0 if "_fbc" in response.cookies else True
        assert "Cookie" in response["Vary"]
        assert "django_capi_browser" not in request.session

        def pay(request):
            order = OrderFactory()
            order.browser = browser_context(request)
            order.status = "paid"
            order.save()
            return HttpResponse()

        run(pay, get())
        assert not OutboxEvent.objects.exists()
        granted = get()
        granted.COOKIES["consent"] = "yes"
        assert run(lead_view, granted).content != b"none"


def broken_consent(request):
    raise RuntimeError("consent banner bug")


def test_a_broken_consent_check_counts_as_refused(caplog):
    with capi(CONSENT="tests.test_middleware.broken_consent"):
        assert run(lead_view, get()).content == b"none"
    assert "treating it as refused" in caplog.text


def test_the_middleware_works_in_async_views_with_a_session():
    from asgiref.sync import sync_to_async

    async def view(request):
        return HttpResponse()

    middleware = CapiMiddleware(view)
    request = get("/?fbclid=AsyncClick")
    with_session(request)
    from importlib import import_module

    from django.conf import settings

    engine = import_module(settings.SESSION_ENGINE)
    request.session = engine.SessionStore(request.COOKIES["sessionid"])
    response = asyncio.run(middleware(request))
    assert response.cookies["_fbc"].value.endswith(".AsyncClick")
    saved = asyncio.run(sync_to_async(lambda: dict(request.session))())
    assert saved["django_capi_browser"]["fbc"].endswith(".AsyncClick")


def test_a_staff_members_browser_never_lands_on_a_system_event():
    def view(request):
        row = send_event("Lead", user_data={"em": "phone@b.co"}, action_source="phone_call")
        return HttpResponse(str(row.pk))

    run(view, get("/admin/?fbclid=Staff"))
    user_data = OutboxEvent.objects.get().payload["user_data"]
    assert set(user_data) == {"em"}


def test_limited_data_use_from_the_setting_and_per_event():
    with capi(LIMITED_DATA_USE={"country": 1, "state": 1000}):
        run(lead_view, get())
    payload = OutboxEvent.objects.get().payload
    assert payload["data_processing_options"] == ["LDU"]
    assert (
        payload["data_processing_options_country"],
        payload["data_processing_options_state"],
    ) == (
        1,
        1000,
    )
    row = send_event(
        "Lead",
        user_data={"em": "z@b.co"},
        action_source="chat",
        limited_data_use={"country": 0, "state": 0},
    )
    assert row.payload["data_processing_options_country"] == 0
    bad = send_event(
        "Lead", user_data={"em": "z@b.co"}, action_source="chat", limited_data_use={"country": 1}
    )
    assert bad.status == "failed"
    assert "limited_data_use must be None or" in bad.last_error


def test_the_limited_data_use_hook_of_a_model_event(isolated_registry):
    from django_capi import ModelEvent, register
    from tests.shop.models import Lead

    @register(Lead)
    class CaliforniaLead(ModelEvent[Lead]):
        event_name = "Contact"
        action_source = "system_generated"

        def user_data(self, instance):
            return {"em": instance.email}

        def limited_data_use(self, instance):
            return {"country": 1, "state": 1000}

    Lead.objects.create(email="ca@b.co")
    payload = OutboxEvent.objects.get(event_name="Contact").payload
    assert payload["data_processing_options"] == ["LDU"]
    assert payload["data_processing_options_state"] == 1000


@pytest.mark.parametrize(
    ("domain", "index"), [(".example.com", 1), ("shop.example.com", 2), (".example.co.uk", 2)]
)
def test_cookies_can_live_on_the_site_domain_like_the_pixels(domain, index):
    with capi(COOKIE_DOMAIN=domain, SET_FBP_COOKIE=True):
        response = run(lead_view, get("/?fbclid=OnDomain"))
    for name in ("_fbc", "_fbp"):
        assert response.cookies[name]["domain"] == domain
        assert response.cookies[name].value.startswith(f"fb.{index}.")
    assert response.cookies["_fbc"].value.endswith(".OnDomain")


def test_a_host_only_cookie_uses_metas_server_index():
    response = run(lead_view, get("/?fbclid=HostOnly"))
    assert response.cookies["_fbc"]["domain"] == ""
    assert response.cookies["_fbc"].value.startswith("fb.1.")


# --- Whatever a client sends: the page is served, the context is storable ----------------

#: Headers, cookies, paths and queries a client controls. Each once broke a page (a 500 from
#: the middleware, a 400 on pages that never read the query) or made an event unstorable.
HOSTILE = {
    "referrer: unclosed IPv6 bracket": {"HTTP_REFERER": "http://["},
    "referrer: stray bracket": {"HTTP_REFERER": "https://x]/"},
    "referrer: bad IPv6 host and a click id": {"HTTP_REFERER": "http://[::1x]/?fbclid=Click"},
    "referrer: host changed by NFKC": {"HTTP_REFERER": "http://\uff03@x.example/"},
    "referrer: NUL and lone surrogate": {"HTTP_REFERER": "https://x.example/\x00\udcff/"},
    "referrer: 1 MB": {"HTTP_REFERER": "https://x.example/" + "a" * 2**20},
    "referrer: not http": {"HTTP_REFERER": "javascript:alert(1)//?fbclid=Click"},
    "host: stray bracket": {"HTTP_HOST": "x]"},
    "host: unclosed IPv6 bracket": {"HTTP_HOST": "[::1"},
    "host: NUL": {"HTTP_HOST": "shop.example\x00"},
    "host: port not a number": {"HTTP_HOST": "shop.example:http"},
    "forwarded host and port: lists": {
        "HTTP_X_FORWARDED_HOST": "a.example, [",
        "HTTP_X_FORWARDED_PORT": "443, x",
        "HTTP_X_FORWARDED_PROTO": "https, \x00",
    },
    "user agent: NUL and lone surrogate": {"HTTP_USER_AGENT": "Mozilla\x00/5.0 \udcff"},
    "user agent: 1 MB": {"HTTP_USER_AGENT": "M" * 2**20},
    "user agent: not a string": {"HTTP_USER_AGENT": 42},
    "cookie: octal NUL in _fbp": {"HTTP_COOKIE": '_fbp="fb.1.1700000000000.\\000"'},
    "cookie: octal NUL in _fbc": {"HTTP_COOKIE": '_fbc="fb.1.1700000000000.\\000"'},
    "cookie: 64 KB _fbp": {"HTTP_COOKIE": "_fbp=" + "1" * 2**16},
    "cookie: garbage": {"HTTP_COOKIE": '=;;;"\\"; _fbc="\\377\\000"; =x; _fbp'},
    "remote address: a Unix socket": {"REMOTE_ADDR": "unix:/run/gunicorn.sock"},
    "remote address: NUL and lone surrogate": {"REMOTE_ADDR": "\x00\udcff"},
    "remote address: none": {"REMOTE_ADDR": ""},
    "forwarded for: garbage": {"HTTP_X_FORWARDED_FOR": "[, \x00, 999.1.1.1, \udcff"},
    "forwarded for: 10,000 hops": {"HTTP_X_FORWARDED_FOR": ", ".join(["192.0.2.1"] * 10_000)},
    "query: more parameters than Django reads": {
        "path": "/?" + "&".join(f"p{i}=1" for i in range(1100))
    },
    "query: click id with NUL": {"path": "/?fbclid=%00Click"},
    "query: click id not UTF-8": {"path": "/?fbclid=%ff%fe"},
    "query: 1 MB click id": {"path": "/?fbclid=" + "a" * 2**20},
    "path: NUL": {"path": "/p/%00/"},
    "path: not UTF-8": {"path": "/p/%ff%fe/"},
}
#: The same requests behind proxies the settings trust: forwarded headers are read too.
BEHIND_PROXIES = {
    "USE_X_FORWARDED_HOST": True,
    "USE_X_FORWARDED_PORT": True,
    "SECURE_PROXY_SSL_HEADER": ("HTTP_X_FORWARDED_PROTO", "https"),
}


def hostile(name):
    extra = dict(HOSTILE[name])
    return get(extra.pop("path", "/p/1/"), **extra)


def assert_storable(values):
    from django_capi.text import is_storable

    for key, value in values.items():
        assert not isinstance(value, str) or is_storable(value), key
    if "client_ip_address" in values:
        ip_address(values["client_ip_address"])  # what is not an IP is left out


@pytest.fixture(params=["direct", "behind proxies"])
def deployment(request):
    if request.param == "direct":
        yield
        return
    with override_settings(**BEHIND_PROXIES), capi(TRUSTED_PROXY_COUNT=1):
        yield


@pytest.mark.parametrize("name", HOSTILE)
def test_no_header_cookie_or_path_breaks_the_page(name, deployment):

    request = hostile(name)
    response = run(lead_view, request)
    assert response.status_code == 200
    values = browser_context(request)
    assert_storable(values)
    assert OutboxEvent.objects.filter(pk=int(response.content)).exists()
    # A checkout stores it as is in a JSONField: PostgreSQL refuses NUL and lone surrogates.
    order = OrderFactory(browser=values)
    order.refresh_from_db()
    assert order.browser == values


@pytest.mark.parametrize("name", HOSTILE)
def test_no_header_cookie_or_path_breaks_an_async_page(name, deployment):
    from asgiref.sync import sync_to_async

    async def view(request):
        return await sync_to_async(lead_view)(request)

    request = hostile(name)
    response = asyncio.run(CapiMiddleware(view)(request))
    assert response.status_code == 200
    assert_storable(browser_context(request))
    assert OutboxEvent.objects.filter(pk=int(response.content)).exists()


def test_a_path_with_lone_surrogates_from_an_asgi_server_makes_a_storable_url():
    from io import BytesIO

    from django.core.handlers.asgi import ASGIRequest

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/caf\udce9/",  # a server that decoded the raw path with surrogateescape
        "query_string": b"",
        "headers": [(b"host", b"shop.example"), (b"user-agent", b"\xff\x00UA")],
        "client": ("203.0.113.5", 5000),
    }
    values = browser_context(ASGIRequest(scope, BytesIO()))
    assert values["event_source_url"] == "http://shop.example/caf%EF%BF%BD/"
    assert values["client_user_agent"] == "\xff\ufffdUA"


def test_a_value_that_cannot_be_read_is_left_out_and_logged_once(monkeypatch, caplog):
    from django_capi import context

    def broken(*args, **kwargs):
        raise RuntimeError("a bug in reading the IP")

    monkeypatch.setattr(context, "client_ip", broken)
    monkeypatch.setattr(context, "_logged_unreadable", set(), raising=False)
    for _ in range(2):
        request = get(HTTP_REFERER="https://x.example/")
        assert run(lead_view, request).status_code == 200
        values = browser_context(request)
        assert "client_ip_address" not in values
        assert values["client_user_agent"] == UA  # the rest is still read
        assert values["referrer_url"] == "https://x.example/"
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [
        "django-capi: could not read client_ip_address from the request"
    ]


def test_a_failing_collection_still_serves_the_page_and_is_logged_once(monkeypatch, caplog):
    from django_capi import browser

    class BrokenSession(dict):
        session_key = "k"

        def get(self, *args, **kwargs):
            raise RuntimeError("the session store is down")

    monkeypatch.setattr(browser, "_failures_logged", set(), raising=False)
    for _ in range(2):
        request = get(HTTP_REFERER="https://x.example/")
        request.session = BrokenSession()
        assert CapiMiddleware(lead_view)(request).status_code == 200
        values = browser_context(request)
        assert values["client_user_agent"] == UA
        assert values["event_source_url"] == "http://testserver/p/1/"
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert [r.getMessage() for r in errors] == [
        "django-capi: collecting the browser context failed"
    ]


@pytest.fixture
def capi_site():
    """The project's middleware with CapiMiddleware, as the README places it."""
    from django.conf import settings

    with override_settings(
        MIDDLEWARE=[*settings.MIDDLEWARE, "django_capi.middleware.CapiMiddleware"]
    ):
        yield


@pytest.mark.parametrize("referrer", ["http://[", "https://x]/"])
def test_a_malformed_referrer_does_not_take_the_admin_down(client, capi_site, referrer):
    response = client.get("/admin/login/", HTTP_REFERER=referrer)
    assert response.status_code == 200


def test_a_hostile_browser_can_view_buy_and_see_its_thank_you_page(client, capi_site):
    from tests.shop.models import Order, Product

    product = Product.objects.create(sku="SKU-1", name="Mug")
    # Django decodes the octal escapes: NUL reaches the cookies' values.
    client.cookies.load('_fbp="fb.1.1700000000000.\\000"; _fbc="fb.1.1700000000000.\\000"')
    headers = {"HTTP_REFERER": "http://[", "HTTP_USER_AGENT": UA}
    with capi(SERVER_PAGE_VIEW=True):
        page = client.get(
            f"/shop/product/{product.pk}/",
            **{**headers, "HTTP_USER_AGENT": "Mozilla/5.0\x00\udcff"},
        )
        assert page.status_code == 200
        added = client.post("/shop/cart/add/", {"product": product.pk, "quantity": 1}, **headers)
        assert added.status_code == 302
        # The shop keeps the raw user agent in a column of its own: a clean one here.
        paid = client.post("/shop/checkout/", {"email": "a@b.co", "payment": "card"}, **headers)
        assert paid.status_code == 302
        assert client.get(paid["Location"], **headers).status_code == 200
    order = Order.objects.get()  # browser_context(request) in a JSONField, as the README says
    assert order.browser["fbp"] == order.browser["fbc"] == "fb.1.1700000000000.\ufffd"
    view = OutboxEvent.objects.get(event_name="ViewContent")
    assert view.payload["user_data"]["client_user_agent"] == "Mozilla/5.0\ufffd\ufffd"
    rows = sorted(OutboxEvent.objects.values_list("event_name", "status"))
    pending = ["AddToCart", "PageView", "PageView", "Purchase", "ViewContent"]
    assert rows == [(name, "pending") for name in pending]


@pytest.mark.parametrize(
    "saved", [{"fbp": "fb.1.1700000000000.\x00", "fbc": "\udcff"}, ["not", "a", "dict"], "x"]
)
def test_ids_a_session_kept_from_before_are_storable(saved):
    from django.contrib.sessions.backends.db import SessionStore

    from django_capi.browser import SESSION_KEY

    request = with_session(get())
    store = SessionStore(request.COOKIES["sessionid"])
    store[SESSION_KEY] = saved
    store.save()
    assert run(lead_view, request).status_code == 200
    values = browser_context(request)
    assert_storable(values)
    if isinstance(saved, dict):
        assert values["fbp"] == "fb.1.1700000000000.\ufffd"
