"""Meta's rules for the events that do not happen on a website: app, business messaging,
offline (physical store, phone, chat, email) and CRM (system generated) events.

Each ``clean_*`` function returns the value as Meta receives it, appends to ``problems`` what
Meta documents that it rejects, and to ``warnings`` what it would take anyway (meta-capi.md
§10). Messages name keys and positions, never a value: they are stored on the outbox row.

Tags are those of meta-capi.md, plus [APPD], Meta's App Data Parameters page
(developers.facebook.com/documentation/ads-commerce/conversions-api/parameters/app-data), and
[CRM], the Conversion Leads payload specification (…/conversions-api/conversion-leads-integration/
payload-specification).

Pure: no settings, no models, no database.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from decimal import Decimal
from typing import Any, TypedDict

from django.utils import timezone

from .constants import ActionSource
from .text import storable

#: ``extinfo`` has exactly this many values, in Meta's order [APPD].
EXTINFO_LENGTH = 16
#: ``extinfo[0]``: "version must be a2 for Android, i2 for iOS" [APPD].
EXTINFO_VERSIONS = ("a2", "i2")
#: Positions Meta marks "Required" beside the list itself: the version and the OS version.
_EXTINFO_REQUIRED = {0: "extinfo version", 4: "OS version"}

#: ``app_data`` fields of Meta's App Data Parameters page [APPD], then those the official
#: Python SDK's ``AppData`` also sends [SDK]: none of them draws a warning.
APP_DATA_FIELDS = frozenset(
    {
        "advertiser_tracking_enabled",
        "application_tracking_enabled",
        "extinfo",
        "campaign_ids",
        "install_referrer",
        "installer_package",
        "url_schemes",
        "vendor_id",
        "windows_attribution_id",
        "app_user_id",
        "consider_views",
        "include_dwell_data",
        "include_video_data",
        "receipt_data",
    }
)
_APP_DATA_FLAGS = ("advertiser_tracking_enabled", "application_tracking_enabled")

#: ``messaging_channel`` of business-messaging events [BMSG].
MESSAGING_CHANNELS = ("whatsapp", "messenger", "instagram")
#: The ``user_data`` ids Meta's examples send for each channel [BMSG]: the business account
#: (or Page) and the person's id in that channel (or the ad click's); either name of a pair
#: will do.
CHANNEL_KEYS: dict[str, tuple[tuple[str, ...], ...]] = {
    "whatsapp": (("whatsapp_business_account_id",), ("ctwa_clid",)),
    "messenger": (("page_id",), ("page_scoped_user_id",)),
    "instagram": (("instagram_business_account_id", "ig_account_id"), ("ig_sid",)),
}
#: The event names Meta supports for business messaging [BMSG].
MESSAGING_EVENTS = frozenset(
    {
        "Purchase",
        "LeadSubmitted",
        "InitiateCheckout",
        "AddToCart",
        "ViewContent",
        "OrderCreated",
        "OrderShipped",
        "OrderDelivered",
        "OrderCanceled",
        "OrderReturned",
        "CartAbandoned",
        "QualifiedLead",
        "RatingProvided",
        "ReviewProvided",
    }
)

#: No device value comes near; Python cannot even print integers of over 4,300 digits.
_TOO_LARGE = 10**20
#: ``original_event_data`` fields [OED]; all optional.
ORIGINAL_EVENT_FIELDS = ("event_name", "event_time", "order_id", "event_id")


@dataclass(frozen=True)
class ExtInfo:
    """Meta's ``extinfo`` by name, so nobody counts positions [APPD].

    ``ExtInfo(version="a2", package_name="com.example.shop", os_version="14", ...)``; fields
    left out are sent as the empty string Meta asks for. ``as_list()`` returns the 16 strings
    in Meta's order. ``app_data={"extinfo": ExtInfo(...)}`` or a dict of these names works
    as well as Meta's own list.
    """

    #: "a2" for Android, "i2" for iOS.
    version: str
    package_name: str = ""
    short_version: str | int = ""
    long_version: str = ""
    os_version: str = ""
    device_model: str = ""
    #: e.g. "en_US".
    locale: str = ""
    #: e.g. "PDT".
    timezone_abbreviation: str = ""
    carrier: str = ""
    screen_width: int | str = ""
    screen_height: int | str = ""
    screen_density: float | str = ""
    cpu_cores: int | str = ""
    #: External storage size, in GB.
    storage_size_gb: int | str = ""
    #: Free space on the external storage, in GB.
    free_storage_gb: int | str = ""
    #: e.g. "America/New_York".
    device_timezone: str = ""

    def as_list(self) -> list[str]:
        """The 16 ``extinfo`` strings, in Meta's order (the order of the fields above)."""
        return [_extinfo_text(getattr(self, field.name)) for field in fields(self)]


EXTINFO_NAMES = tuple(field.name for field in fields(ExtInfo))


class AppData(TypedDict, total=False):
    """Meta's ``app_data`` [APPD]; ``extinfo`` may be Meta's list, an ``ExtInfo`` or a dict
    of its field names."""

    advertiser_tracking_enabled: bool
    application_tracking_enabled: bool
    extinfo: Sequence[str | int | float] | ExtInfo | Mapping[str, object]
    campaign_ids: str
    install_referrer: str
    installer_package: str
    url_schemes: Sequence[str]
    vendor_id: str
    windows_attribution_id: str


def _extinfo_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # 2.0 → "2", as Meta's example density
    return str(value)


# --- app events ---------------------------------------------------------------------------


def clean_app_data(
    app_data: object, action_source: str, problems: list[str], warnings: list[str]
) -> dict[str, Any] | None:
    """``app_data`` as Meta receives it. App events need it [SEP], [APPD]."""
    app = action_source == ActionSource.APP
    if app_data is None:
        if app:
            problems.append(
                "app event without app_data (Meta requires app_data with "
                "advertiser_tracking_enabled and the 16 extinfo values for app events): pass "
                "app_data=..., or return it from the ModelEvent's app_data()"
            )
        return None
    if not isinstance(app_data, Mapping):
        problems.append("app_data must be a dict (Meta's app_data object)")
        return None
    if not app:
        warnings.append(
            "app_data is for app events (action_source 'app'); sent as it is with this "
            f"{action_source} event"
        )
    cleaned: dict[str, Any] = {}
    for key, value in app_data.items():
        if not isinstance(key, str):
            problems.append("app_data has a key that is not a string")
            continue
        if key in _APP_DATA_FLAGS:
            flag = _flag(key, value, problems)
            if flag is not None:
                cleaned[key] = flag
        elif key == "extinfo":
            extinfo = clean_extinfo(value, problems)
            if extinfo is not None:
                cleaned[key] = extinfo
        else:
            if key not in APP_DATA_FIELDS:
                warnings.append(f"app_data[{key!r}] is not a field Meta documents; sent as it is")
            plain = _plain_json(value, f"app_data[{key!r}]", problems)
            if plain is not None:
                cleaned[storable(key)] = plain
    if app:
        if "advertiser_tracking_enabled" not in app_data:
            problems.append(
                "app_data without advertiser_tracking_enabled (Meta requires it for app "
                "events: the person's App Tracking Transparency choice, True or False)"
            )
        if "extinfo" not in app_data:
            problems.append(
                "app_data without extinfo (Meta requires its 16 device values for app events): "
                "build it with django_capi.ExtInfo"
            )
        if "application_tracking_enabled" not in app_data:
            # Required in one version of Meta's page, optional in the current one [APPD].
            warnings.append(
                "app_data without application_tracking_enabled (the person's app-level "
                "opt-out); Meta's current documentation calls it optional"
            )
    return cleaned


def _flag(key: str, value: object, problems: list[str]) -> bool | None:
    # Meta: "Set to 0 for disabled or 1 for enabled"; the SDK sends a boolean.
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    problems.append(f"app_data {key} must be True or False (or 1 or 0)")
    return None


def clean_extinfo(value: object, problems: list[str]) -> list[str] | None:
    """Meta's 16 ``extinfo`` strings from its list, an ``ExtInfo`` or a dict of its names."""
    raw: Sequence[object]
    if isinstance(value, ExtInfo):
        raw = [getattr(value, name) for name in EXTINFO_NAMES]
    elif isinstance(value, Mapping):
        unknown = sorted(str(name) for name in value if name not in EXTINFO_NAMES)
        if unknown:
            problems.append(
                f"app_data extinfo has unknown names ({', '.join(unknown)}); "
                f"ExtInfo's are: {', '.join(EXTINFO_NAMES)}"
            )
            return None
        raw = [value.get(name, "") for name in EXTINFO_NAMES]
    elif isinstance(value, list | tuple):
        raw = value
        if len(raw) != EXTINFO_LENGTH:
            problems.append(
                f"app_data extinfo has {len(raw)} values; Meta requires all {EXTINFO_LENGTH}, "
                "in its order, with empty strings for unknown ones: build it with "
                "django_capi.ExtInfo"
            )
            return None
    else:
        problems.append(
            "app_data extinfo must be Meta's list of 16 strings, a django_capi.ExtInfo or a "
            "dict of ExtInfo's field names"
        )
        return None
    values: list[str] = []
    for position, item in enumerate(raw):
        where = f"app_data extinfo {EXTINFO_NAMES[position]} (position {position})"
        if (isinstance(item, float) and not math.isfinite(item)) or (
            isinstance(item, int) and abs(item) >= _TOO_LARGE
        ):
            problems.append(f"{where} is not a usable number")
            return None
        if not (item is None or isinstance(item, str | int | float)) or isinstance(item, bool):
            problems.append(
                f"{where} is a {type(item).__name__}; Meta wants a string (an empty one for "
                "an unknown value)"
            )
            return None
        values.append(storable(_extinfo_text(item).strip()))
    if values[0] not in EXTINFO_VERSIONS:
        problems.append(
            "app_data extinfo version (position 0) must be 'a2' for Android or 'i2' for iOS"
        )
        return None
    for position, name in _EXTINFO_REQUIRED.items():
        if not values[position]:
            problems.append(
                f"app_data extinfo {name} (position {position}) is empty; Meta requires it"
            )
            return None
    return values


def _plain_json(value: object, where: str, problems: list[str]) -> Any:
    """A JSON scalar, or a list of them, as Meta's optional ``app_data`` fields are."""
    if isinstance(value, list | tuple):
        if any(isinstance(item, list | tuple | Mapping) for item in value):
            problems.append(f"{where} must be a list of strings, numbers or booleans")
            return None
        return [
            _plain_json(item, f"{where}[{index}]", problems) for index, item in enumerate(value)
        ]
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return storable(value)
    if isinstance(value, int) and abs(value) < _TOO_LARGE:
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    problems.append(f"{where} must be a string, a number, a boolean or a list of them")
    return None


# --- business messaging -------------------------------------------------------------------


_CHANNEL_CHOICES = ", ".join(repr(name) for name in MESSAGING_CHANNELS)


def clean_messaging_channel(
    channel: object,
    action_source: str,
    event_name: str,
    user_data: Mapping[str, object],
    problems: list[str],
    warnings: list[str],
) -> str | None:
    """``messaging_channel``, which business-messaging events need [BMSG]."""
    messaging = action_source == ActionSource.BUSINESS_MESSAGING
    if channel is None or channel == "":
        if messaging:
            problems.append(
                "business_messaging event without messaging_channel (Meta requires it): "
                f"pass messaging_channel= one of {_CHANNEL_CHOICES}"
            )
        return None
    name = channel.strip().lower() if isinstance(channel, str) else None
    if name not in MESSAGING_CHANNELS:
        problems.append(f"messaging_channel must be one of {_CHANNEL_CHOICES}")
        return None
    assert name is not None  # noqa: S101 - for mypy
    if not messaging:
        warnings.append(
            "messaging_channel is for business_messaging events; sent as it is with this "
            f"{action_source} event"
        )
        return name
    missing = [
        " or ".join(names)
        for names in CHANNEL_KEYS[name]
        if not any(key in user_data for key in names)
    ]
    if missing:
        warnings.append(
            f"{name} event without {' and '.join(missing)} in user_data: Meta attributes "
            "business-messaging events to the conversation and the ad through them"
        )
    if event_name not in MESSAGING_EVENTS:
        warnings.append(
            f"{event_name!r} is not among the event names Meta lists for business messaging "
            "(Purchase, LeadSubmitted, QualifiedLead, OrderShipped, …); sent as it is"
        )
    return name


# --- offline and CRM events ---------------------------------------------------------------


def clean_original_event_data(
    value: object, problems: list[str], warnings: list[str]
) -> dict[str, Any] | None:
    """``original_event_data``: the event this one refers to [OED]."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        problems.append(
            "original_event_data must be a dict of event_name, event_time, order_id, event_id"
        )
        return None
    cleaned: dict[str, Any] = {}
    for key, item in value.items():
        where = f"original_event_data[{key!r}]"
        if item is None:
            continue
        if key == "event_time":
            seconds = _unix_seconds(item)
            if seconds is None:
                problems.append(f"{where} must be a datetime or Unix seconds")
            else:
                cleaned[key] = seconds
        elif key in ORIGINAL_EVENT_FIELDS:
            text = _id_text(item)
            if text is None:
                problems.append(f"{where} must be a string")
            else:
                cleaned[key] = text
        else:
            warnings.append(
                f"{where} is not a field Meta documents ({', '.join(ORIGINAL_EVENT_FIELDS)}); "
                "sent as it is"
            )
            plain = _plain_json(item, where, problems)
            if plain is not None:
                cleaned[storable(str(key))] = plain
    return cleaned or None


def _unix_seconds(value: object) -> int | None:
    if isinstance(value, datetime):
        aware = timezone.make_aware(value) if timezone.is_naive(value) else value
        try:
            return int(aware.timestamp())
        except (OverflowError, ValueError):
            return None
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 10**11:
        return value
    # Fractional seconds (time.time()) are cut to whole ones, as the event's own event_time.
    if isinstance(value, Decimal) and not value.is_finite():
        return None  # math.isfinite() raises on a signalling NaN
    if isinstance(value, float | Decimal) and math.isfinite(value) and 0 < value < 10**11:
        return int(value)
    return None


def _id_text(value: object) -> str | None:
    """An id as the string Meta types it; an integer (an order number) is fine."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 10**40:
        return str(value)
    if isinstance(value, str) and value.strip():
        return storable(value.strip())
    return None


def clean_order_id(custom_data: dict[str, Any], problems: list[str]) -> None:
    """``custom_data.order_id`` is a string [STD]: an order number becomes one."""
    if "order_id" not in custom_data:
        return
    text = _id_text(custom_data["order_id"])
    if text is None:
        problems.append("custom_data order_id must be a non-empty string (or an integer)")
    else:
        custom_data["order_id"] = text


def crm_warnings(
    action_source: str, user_data: Mapping[str, object], custom_data: Mapping[str, object]
) -> list[str]:
    """Meta's payload for CRM lead stages (Conversion Leads) names the CRM in custom_data
    [CRM]; it asks, it documents no rejection."""
    if action_source != ActionSource.SYSTEM_GENERATED or "lead_id" not in user_data:
        return []
    missing = [key for key in ("event_source", "lead_event_source") if key not in custom_data]
    if not missing:
        return []
    return [
        (
            f"CRM lead event without custom_data {' and '.join(missing)}: Meta's Conversion "
            "Leads payload asks for event_source 'crm' and lead_event_source (your CRM's name)"
        )
    ]
