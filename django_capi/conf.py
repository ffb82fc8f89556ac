"""The ``DJANGO_CAPI`` settings: one validated, cached view of the user's configuration.

Values come from ``settings.DJANGO_CAPI``; a key left out there falls back to its environment
variable (read with django-environ), then to the default. The result is cached and the cache
is cleared on ``setting_changed``, so ``override_settings`` works in tests while a request
never re-validates the dict.
"""

from __future__ import annotations

import importlib.util
import re
import uuid
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from datetime import date
from functools import cache
from typing import Any

import environ
import phonenumbers
from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.http import HttpRequest
from django.utils.module_loading import import_string

from .exceptions import CapiConfigurationError
from .validation import check_limited_data_use

SETTING_NAME = "DJANGO_CAPI"

#: Meta accepts at most this many events in one request.
META_MAX_BATCH_SIZE = 1000

#: The Graph API versions Meta's changelog lists, newest first, with the first day each is no
#: longer served (None: no end announced) [GCL] (meta-capi.md §1.4). The one place to update
#: when Meta releases a version: the default and the W006 check follow it.
API_VERSIONS: dict[str, date | None] = {
    "v26.0": None,
    "v25.0": date(2028, 7, 29),
    "v24.0": date(2028, 2, 18),
    "v23.0": date(2027, 10, 8),
    "v22.0": date(2027, 5, 20),
    "v21.0": date(2027, 1, 21),
    "v20.0": date(2026, 9, 24),
    "v19.0": date(2026, 5, 21),
}

DEFAULTS: dict[str, Any] = {
    "PIXEL_ID": None,
    "ACCESS_TOKEN": None,
    "GRAPH_API_URL": "https://graph.facebook.com",
    "API_VERSION": next(iter(API_VERSIONS)),
    "TEST_EVENT_CODE": None,
    # The default pixel's app secret: when set, every request carries appsecret_proof, as apps
    # with "Require App Secret" demand (Graph API "Securing requests").
    "APP_SECRET": None,
    # More pixels: {pixel id: {"ACCESS_TOKEN": …, "TEST_EVENT_CODE": …, "API_VERSION": …,
    # "APP_SECRET": …}}. PIXEL_ID stays the default pixel; its entry here, if any, overrides
    # the top-level values above.
    "PIXELS": None,
    # The namespace of default event ids (a UUID); None uses the one stored in each outbox
    # database at migrate time, so two installations never share an order's event id.
    "EVENT_ID_NAMESPACE": None,
    "DEFAULT_PHONE_REGION": None,
    "BATCH_SIZE": META_MAX_BATCH_SIZE,
    # With the backoff below, 25 attempts span about two days on average: a long outage of
    # Meta or of this server's network does not exhaust events Meta would still take.
    "MAX_ATTEMPTS": 25,
    # Meta: "we recommend setting a timeout of 1500 milliseconds"; a 1000-event batch needs
    # longer than that to be answered.
    "CONNECT_TIMEOUT": 1.5,
    "READ_TIMEOUT": 5.0,
    # A worker owns claimed rows this long; it renews the lease while bisecting a batch.
    "LEASE_SECONDS": 60,
    "RETRY_BASE_SECONDS": 30,
    "RETRY_MAX_SECONDS": 6 * 3600,
    "TOKEN_PROBE_SECONDS": 300,
    # How committed rows wake the drainer: "celery", "none" (cron or `capi_drain --loop`),
    # or None for Celery when a Celery app with a broker is configured.
    "WAKE": None,
    # Browser side.
    # Dotted path of a callable taking the request and returning whether the visitor
    # consented to Meta's tracking; None means consent is not asked for.
    "CONSENT": None,
    # Proxies in front of Django that append to X-Forwarded-For; 0 trusts only REMOTE_ADDR.
    "TRUSTED_PROXY_COUNT": 0,
    # Also set a first-party _fbp cookie when the browser has none (the Pixel sets its own).
    "SET_FBP_COOKIE": False,
    # The domain of the _fbc/_fbp cookies the middleware sets, e.g. ".example.com" as the
    # Pixel's own cookies use; None sets host-only cookies.
    "COOKIE_DOMAIN": None,
    # Send the signed-in user's hashed email and id with the Pixel's init.
    "ADVANCED_MATCHING": True,
    # Record a server-side PageView for each {% capi_pixel %}, sharing its eventID.
    "SERVER_PAGE_VIEW": False,
    # Limited Data Use for every event: {"country": 1, "state": 1000}, or {"country": 0,
    # "state": 0} to let Meta geolocate; None sends no data processing options.
    "LIMITED_DATA_USE": None,
    # Operations.
    # capi_purge deletes delivered rows this old, and scrubs the IP, user agent, fbc and fbp
    # from rows this old (hashed data is personal data too: keep as little as needed).
    "PURGE_DELIVERED_AFTER_DAYS": 30,
    "SCRUB_BROWSER_DATA_AFTER_DAYS": 7,
    # Alerts, once per incident: a due row waiting longer than this many seconds, or more
    # than this share of the last hour's events failing.
    "ALERT_BACKLOG_SECONDS": 900,
    "ALERT_FAILURE_RATE": 0.2,
    "ALERT_MAIL_ADMINS": True,
}

#: Keys that may come from the environment when ``DJANGO_CAPI`` leaves them out.
ENVIRONMENT: dict[str, str] = {
    "PIXEL_ID": "CAPI_PIXEL_ID",
    "ACCESS_TOKEN": "CAPI_ACCESS_TOKEN",
    "TEST_EVENT_CODE": "CAPI_TEST_EVENT_CODE",
    "GRAPH_API_URL": "CAPI_GRAPH_API_URL",
    "APP_SECRET": "CAPI_APP_SECRET",
}

#: The keys of one ``PIXELS`` entry.
PIXEL_KEYS = ("ACCESS_TOKEN", "TEST_EVENT_CODE", "API_VERSION", "APP_SECRET")

# [0-9], not \d: \d matches the digits of every script (U+FF11, U+0661, …). A version has a
# few digits: a longer one cannot be Meta's, and no integer of over 4,300 digits is readable.
_API_VERSION = re.compile(r"v[0-9]{1,4}\.[0-9]{1,4}")
_PIXEL_ID = re.compile(r"[0-9]{1,32}")
#: What an unknown key may look like to be quoted in an error: a setting's name. Anything
#: else (a token pasted in the wrong place) is counted, never shown.
_SETTING_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,39}")
_TOKEN_SHAPE = re.compile(r"EAA[A-Za-z0-9]{20,}")
_URL = re.compile(r"https?://[^\s/?#]+(?::\d+)?/?")


@dataclass(frozen=True)
class PixelSettings:
    """What sending to one pixel takes. The token and the app secret never show in a repr."""

    pixel_id: str
    access_token: str | None = field(repr=False)
    test_event_code: str | None
    api_version: str
    app_secret: str | None = field(repr=False)


@dataclass(frozen=True)
class CapiSettings:
    """The validated settings. ``pixel_id``, ``access_token``, ``api_version``,
    ``test_event_code`` and ``app_secret`` are the default pixel's; ``pixels`` has every
    configured pixel, the default one included."""

    pixel_id: str | None
    access_token: str | None = field(repr=False)
    graph_api_url: str
    api_version: str
    test_event_code: str | None
    app_secret: str | None = field(repr=False)
    pixels: Mapping[str, PixelSettings]
    event_id_namespace: uuid.UUID | None
    default_phone_region: str | None
    batch_size: int
    max_attempts: int
    connect_timeout: float
    read_timeout: float
    lease_seconds: int
    retry_base_seconds: float
    retry_max_seconds: float
    token_probe_seconds: int
    wake: str
    consent: Callable[[HttpRequest], bool] | None
    trusted_proxy_count: int
    set_fbp_cookie: bool
    cookie_domain: str | None
    advanced_matching: bool
    server_page_view: bool
    limited_data_use: dict[str, int] | None
    purge_delivered_after_days: int
    scrub_browser_data_after_days: int
    alert_backlog_seconds: int
    alert_failure_rate: float
    alert_mail_admins: bool

    def pixel(self, pixel_id: str) -> PixelSettings | None:
        """The settings of ``pixel_id``; None when it is not configured."""
        return self.pixels.get(pixel_id)

    def credentials(self, pixel_id: str) -> PixelSettings:
        """What a request to ``pixel_id`` is sent with: its own settings, or for a pixel not
        configured (rows recorded before a settings change) the top-level ones, as before
        ``PIXELS`` existed. Meta then decides whether that token may use the pixel."""
        return self.pixels.get(pixel_id) or PixelSettings(
            pixel_id=pixel_id,
            access_token=self.access_token,
            test_event_code=self.test_event_code,
            api_version=self.api_version,
            app_secret=self.app_secret,
        )

    def events_url(self, pixel_id: str) -> str:
        version = self.credentials(pixel_id).api_version
        return f"{self.graph_api_url}/{version}/{pixel_id}/events"

    def with_test_event_code(self, code: str | None) -> CapiSettings:
        """These settings with ``code`` as every pixel's test event code (``capi_test_event``)."""
        pixels = {
            pixel_id: replace(pixel, test_event_code=code)
            for pixel_id, pixel in self.pixels.items()
        }
        return replace(self, test_event_code=code, pixels=pixels)


def api_version_end(version: str) -> date | None:
    """The day Meta stops serving ``version``; None when no end is known. A version older than
    the oldest listed has ended: its end is the oldest listed one's."""
    if version in API_VERSIONS:
        return API_VERSIONS[version]
    oldest = list(API_VERSIONS)[-1]
    if _version_number(version) < _version_number(oldest):
        return API_VERSIONS[oldest]
    return None  # newer than this table: Meta served it when it was configured


def _version_number(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.lstrip("v").split("."))


@cache
def capi_settings() -> CapiSettings:
    """Return the validated settings; raise ``CapiConfigurationError`` naming a bad key."""
    user = getattr(settings, SETTING_NAME, None) or {}
    if not isinstance(user, dict):
        raise CapiConfigurationError(f"{SETTING_NAME} must be a dict, not {type(user).__name__}")
    unknown = set(user) - set(DEFAULTS)
    if unknown:
        raise CapiConfigurationError(
            f"{SETTING_NAME} has unknown key(s) {_key_names(unknown)}; "
            f"known keys: {', '.join(DEFAULTS)}"
        )
    env = environ.Env()
    raw = {
        key: user[key]
        if key in user
        else env.str(ENVIRONMENT[key], default=default)
        if key in ENVIRONMENT
        else default
        for key, default in DEFAULTS.items()
    }
    default = PixelSettings(
        pixel_id=_pixel_id("PIXEL_ID", raw["PIXEL_ID"]) or "",
        access_token=_optional_str("ACCESS_TOKEN", raw["ACCESS_TOKEN"]),
        test_event_code=_optional_str("TEST_EVENT_CODE", raw["TEST_EVENT_CODE"]),
        api_version=_api_version("API_VERSION", raw["API_VERSION"]),
        app_secret=_optional_str("APP_SECRET", raw["APP_SECRET"]),
    )
    pixels = _pixels(raw["PIXELS"], default)
    if default.pixel_id:
        default = pixels[default.pixel_id]
    conf = CapiSettings(
        pixel_id=default.pixel_id or None,
        access_token=default.access_token,
        graph_api_url=_graph_api_url(raw["GRAPH_API_URL"]),
        api_version=default.api_version,
        test_event_code=default.test_event_code,
        app_secret=default.app_secret,
        pixels=pixels,
        event_id_namespace=_uuid("EVENT_ID_NAMESPACE", raw["EVENT_ID_NAMESPACE"]),
        default_phone_region=_phone_region(raw["DEFAULT_PHONE_REGION"]),
        batch_size=_int_between("BATCH_SIZE", raw["BATCH_SIZE"], 1, META_MAX_BATCH_SIZE),
        max_attempts=_int_between("MAX_ATTEMPTS", raw["MAX_ATTEMPTS"], 1, 1000),
        connect_timeout=_seconds("CONNECT_TIMEOUT", raw["CONNECT_TIMEOUT"]),
        read_timeout=_seconds("READ_TIMEOUT", raw["READ_TIMEOUT"]),
        lease_seconds=_int_between("LEASE_SECONDS", raw["LEASE_SECONDS"], 1, 24 * 3600),
        retry_base_seconds=_seconds("RETRY_BASE_SECONDS", raw["RETRY_BASE_SECONDS"]),
        retry_max_seconds=_seconds("RETRY_MAX_SECONDS", raw["RETRY_MAX_SECONDS"]),
        token_probe_seconds=_int_between(
            "TOKEN_PROBE_SECONDS", raw["TOKEN_PROBE_SECONDS"], 1, 24 * 3600
        ),
        wake=_wake(raw["WAKE"]),
        consent=_consent(raw["CONSENT"]),
        trusted_proxy_count=_int_between("TRUSTED_PROXY_COUNT", raw["TRUSTED_PROXY_COUNT"], 0, 10),
        set_fbp_cookie=_bool("SET_FBP_COOKIE", raw["SET_FBP_COOKIE"]),
        cookie_domain=_cookie_domain(raw["COOKIE_DOMAIN"]),
        advanced_matching=_bool("ADVANCED_MATCHING", raw["ADVANCED_MATCHING"]),
        server_page_view=_bool("SERVER_PAGE_VIEW", raw["SERVER_PAGE_VIEW"]),
        limited_data_use=_limited_data_use(raw["LIMITED_DATA_USE"]),
        purge_delivered_after_days=_int_between(
            "PURGE_DELIVERED_AFTER_DAYS", raw["PURGE_DELIVERED_AFTER_DAYS"], 1, 3650
        ),
        scrub_browser_data_after_days=_int_between(
            "SCRUB_BROWSER_DATA_AFTER_DAYS", raw["SCRUB_BROWSER_DATA_AFTER_DAYS"], 1, 3650
        ),
        alert_backlog_seconds=_int_between(
            "ALERT_BACKLOG_SECONDS", raw["ALERT_BACKLOG_SECONDS"], 60, 7 * 86400
        ),
        alert_failure_rate=_share("ALERT_FAILURE_RATE", raw["ALERT_FAILURE_RATE"]),
        alert_mail_admins=_bool("ALERT_MAIL_ADMINS", raw["ALERT_MAIL_ADMINS"]),
    )
    # Pitfall: a lease shorter than a request lets a second worker send the same rows.
    if conf.lease_seconds <= 2 * (conf.connect_timeout + conf.read_timeout):
        raise CapiConfigurationError(
            f"{SETTING_NAME}['LEASE_SECONDS'] must be more than twice CONNECT_TIMEOUT + "
            "READ_TIMEOUT, so a lease outlives the slowest request"
        )
    return conf


@receiver(setting_changed)
def _clear_cache(*, setting: str, **kwargs: object) -> None:
    if setting == SETTING_NAME:
        capi_settings.cache_clear()


def _bad(key: str, expected: str) -> CapiConfigurationError:
    """``key`` is a top-level key, or a path already written as subscripts (``_in_pixel``)."""
    # The value is left out on purpose: it may be the access token.
    where = key if key.startswith("[") else f"[{key!r}]"
    return CapiConfigurationError(f"{SETTING_NAME}{where} must be {expected}")


def _key_names(keys: Collection[object]) -> str:
    """Unknown keys for an error message: those shaped like a setting's name, quoted; the
    others (a token pasted as a key) only counted."""
    shown = sorted(
        repr(key)
        for key in keys
        if isinstance(key, str) and _SETTING_KEY.fullmatch(key) and not _TOKEN_SHAPE.match(key)
    )
    hidden = len(keys) - len(shown)
    if hidden:
        shown.append(f"{hidden} not shown (not a setting's name; it may be a secret)")
    return ", ".join(shown)


def _in_pixel(pixel_id: str, key: str | None = None) -> str:
    return f"['PIXELS'][{pixel_id!r}]" + ("" if key is None else f"[{key!r}]")


def _optional_str(key: str, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _bad(key, "a string")
    return value.strip() or None


def _pixel_id(key: str, value: object) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    pixel_id = _optional_str(key, value)
    if pixel_id is not None and not _PIXEL_ID.fullmatch(pixel_id):
        raise _bad(key, "the pixel's numeric id, e.g. '1234567890123456'")
    return pixel_id


def is_pixel_id(value: object) -> bool:
    """Whether ``value`` is shaped like a pixel id (digits), whether configured or not."""
    return isinstance(value, str) and bool(_PIXEL_ID.fullmatch(value))


def _pixels(value: object, default: PixelSettings) -> dict[str, PixelSettings]:
    """``PIXELS`` validated, with the default pixel in it: its entry there overrides the
    top-level values key by key. Other pixels take only ``API_VERSION`` from the top level:
    a token, a test code or an app secret belongs to one pixel (or its app)."""
    pixels: dict[str, PixelSettings] = {}
    if default.pixel_id:
        pixels[default.pixel_id] = default
    if value is None:
        return pixels
    if not isinstance(value, Mapping):
        raise _bad("PIXELS", "a dict of pixel id to {'ACCESS_TOKEN': …}, or None")
    named: set[str] = set()
    for raw_id, entry in value.items():
        if isinstance(raw_id, int) and not isinstance(raw_id, bool):
            raw_id = str(raw_id)
        if not is_pixel_id(raw_id):
            # The key may be anything, a token pasted in the wrong place included: not shown.
            raise _bad("PIXELS", "keyed by pixel ids, e.g. '1234567890123456' (digits only)")
        assert isinstance(raw_id, str)  # noqa: S101 - for mypy
        if raw_id in named:
            # 2 and "2": which entry won would depend on the dict's order.
            raise CapiConfigurationError(
                f"{SETTING_NAME}['PIXELS'] names pixel {raw_id} twice (as an int and a string)"
            )
        named.add(raw_id)
        if not isinstance(entry, Mapping):
            raise _bad(
                _in_pixel(raw_id),
                "a dict with ACCESS_TOKEN (and optional TEST_EVENT_CODE, API_VERSION, APP_SECRET)",
            )
        unknown = set(entry) - set(PIXEL_KEYS)
        if unknown:
            raise CapiConfigurationError(
                f"{SETTING_NAME}['PIXELS'][{raw_id!r}] has unknown key(s) "
                f"{_key_names(unknown)}; known keys: {', '.join(PIXEL_KEYS)}"
            )
        base = default if raw_id == default.pixel_id else None

        pixels[raw_id] = PixelSettings(
            pixel_id=raw_id,
            access_token=_optional_str(
                _in_pixel(raw_id, "ACCESS_TOKEN"),
                entry.get("ACCESS_TOKEN", base.access_token if base else None),
            ),
            test_event_code=_optional_str(
                _in_pixel(raw_id, "TEST_EVENT_CODE"),
                entry.get("TEST_EVENT_CODE", base.test_event_code if base else None),
            ),
            api_version=_api_version(
                _in_pixel(raw_id, "API_VERSION"), entry.get("API_VERSION", default.api_version)
            ),
            app_secret=_optional_str(
                _in_pixel(raw_id, "APP_SECRET"),
                entry.get("APP_SECRET", base.app_secret if base else None),
            ),
        )
    return pixels


def _graph_api_url(value: object) -> str:
    url = _optional_str("GRAPH_API_URL", value)
    if url is None or not _URL.fullmatch(url):
        raise _bad(
            "GRAPH_API_URL", "an http(s) URL without a path, e.g. 'https://graph.facebook.com'"
        )
    return url.rstrip("/")


def _api_version(key: str, value: object) -> str:
    version = _optional_str(key, value)
    if version is None or not _API_VERSION.fullmatch(version):
        raise _bad(key, "a Graph API version such as 'v25.0'")
    return version


def _uuid(key: str, value: object) -> uuid.UUID | None:
    if value is None or isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(_optional_str(key, value)))
    except ValueError:
        raise _bad(key, "a UUID such as 'c2f3a0e4-…', or None") from None


def _phone_region(value: object) -> str | None:
    region = _optional_str("DEFAULT_PHONE_REGION", value)
    if region is None:
        return None
    if region.upper() not in phonenumbers.SUPPORTED_REGIONS:
        raise _bad("DEFAULT_PHONE_REGION", "an ISO 3166-1 alpha-2 region such as 'US' or 'DE'")
    return region.upper()


def _seconds(key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 86400:
        raise _bad(key, "a number of seconds greater than 0")
    return float(value)


def _wake(value: object) -> str:
    if value is None:
        return "celery" if _celery_is_configured() else "none"
    if value not in ("celery", "none"):
        raise _bad("WAKE", "'celery', 'none' or None (Celery when it is installed)")
    return str(value)


def _cookie_domain(value: object) -> str | None:
    domain = _optional_str("COOKIE_DOMAIN", value)
    if domain is not None and not re.fullmatch(r"\.?[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+", domain):
        raise _bad("COOKIE_DOMAIN", "a domain such as '.example.com', or None")
    return domain


def _share(key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise _bad(key, "a share between 0 and 1, such as 0.2")
    return float(value)


def _bool(key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise _bad(key, "True or False")
    return value


def _consent(value: object) -> Callable[[HttpRequest], bool] | None:
    if value is None or callable(value):
        return value
    if not isinstance(value, str):
        raise _bad("CONSENT", "a dotted path to a callable, a callable, or None")
    try:
        function = import_string(value)
    except ImportError as exc:
        message = f"{SETTING_NAME}['CONSENT'] cannot be imported: {exc}"
        raise CapiConfigurationError(message) from exc
    if not callable(function):
        raise _bad("CONSENT", "a dotted path to a callable")
    return function  # type: ignore[no-any-return]


def _limited_data_use(value: object) -> dict[str, int] | None:
    if value is None:
        return None
    # The shape is the per-event rule's (validation); only the message speaks of the setting.
    if not isinstance(value, Mapping) or check_limited_data_use(value):
        raise _bad(
            "LIMITED_DATA_USE", "None or {'country': 1, 'state': 1000} (0 and 0 let Meta geolocate)"
        )
    return {"country": value["country"], "state": value["state"]}


def _celery_is_configured() -> bool:
    if importlib.util.find_spec("celery") is None:
        return False
    from celery import current_app

    # An app nobody configured would send tasks to amqp://localhost and lose them.
    return bool(current_app.conf.broker_url)


def _int_between(key: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _bad(key, f"an integer from {low} to {high}")
    return value
