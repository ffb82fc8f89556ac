"""Meta's Conversions API rules, as the emulator enforces them.

Written from Meta's documentation (see the project's Meta reference, sections 1-3, 7 and 11) and
deliberately independent of ``django_capi.validation`` and ``django_capi.normalize``: the
emulator plays Meta, so sharing code with the sender would let one bug hide another.

Meta only documents subcode 2804003 ("Event Timestamp Too Old"). The other 28040xx subcodes
below are the emulator's own, one per kind of mistake, so a test can tell them apart; real
Meta answers all of them with code 100 and a subcode you should not rely on.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: Meta takes at most this many events in one request ("up to 1,000 events in data").
MAX_EVENTS = 1000
#: ``event_time`` may be at most 7 days old, 62 for ``physical_store`` events.
MAX_AGE = 7 * 86400
MAX_AGE_PHYSICAL_STORE = 62 * 86400
#: Above this an ``event_time`` is far more likely milliseconds than a date after year 5000.
MILLISECONDS_THRESHOLD = 100_000_000_000
#: The same (pixel, event_name, event_id) within 48 hours of the first one is a duplicate.
DEDUP_WINDOW = 48 * 3600

INVALID_DATA = 2804001
MISSING_PARAMETER = 2804002
TIMESTAMP_TOO_OLD = 2804003
TIMESTAMP_IN_FUTURE = 2804004
INVALID_TIMESTAMP = 2804005
INVALID_ACTION_SOURCE = 2804006
MISSING_WEBSITE_PARAMETERS = 2804007
INVALID_CUSTOMER_INFORMATION = 2804008
INSUFFICIENT_CUSTOMER_INFORMATION = 2804009
INVALID_CUSTOM_DATA = 2804010
INVALID_PARAMETER = 2804011

TITLES: dict[int, str] = {
    INVALID_DATA: "Invalid Data Parameter",
    MISSING_PARAMETER: "Missing Required Parameter",
    TIMESTAMP_TOO_OLD: "Event Timestamp Too Old",
    TIMESTAMP_IN_FUTURE: "Event Timestamp In The Future",
    INVALID_TIMESTAMP: "Invalid Event Timestamp",
    INVALID_ACTION_SOURCE: "Invalid Action Source",
    MISSING_WEBSITE_PARAMETERS: "Missing Website Event Parameters",
    INVALID_CUSTOMER_INFORMATION: "Invalid Customer Information Parameter",
    INSUFFICIENT_CUSTOMER_INFORMATION: "Insufficient Customer Information",
    INVALID_CUSTOM_DATA: "Invalid Custom Data",
    INVALID_PARAMETER: "Invalid Event Parameter",
}

#: Meta's wording for 2804003, as observed in real responses.
TOO_OLD_MESSAGE = (
    "The timestamp for this event is too far in the past. Events need to be sent from your "
    "server within 7 days of when they occurred. Enter a timestamp that has occurred within "
    "the last 7 days."
)

ACTION_SOURCES = frozenset(
    {
        "email",
        "website",
        "app",
        "phone_call",
        "chat",
        "physical_store",
        "system_generated",
        "business_messaging",
        "other",
    }
)

EVENT_KEYS = frozenset(
    {
        "event_name",
        "event_time",
        "user_data",
        "custom_data",
        "event_source_url",
        "opt_out",
        "event_id",
        "action_source",
        "data_processing_options",
        "data_processing_options_country",
        "data_processing_options_state",
        "app_data",
        "referrer_url",
        "original_event_data",
        "customer_segmentation",
        "messaging_channel",
        "attribution_data",
        "advanced_measurement_table",
    }
)

#: Contact information: SHA-256 only, a string or a list of strings. Meta only recommends
#: hashing ``external_id`` [CIP]: it is a string or a list of strings, hashed or not.
HASHED_LIST_KEYS = frozenset({"em", "ph", "fn", "ln", "ge", "db", "ct", "st", "zp", "country"})
#: The Python SDK's extra hashed scalars.
HASHED_SCALAR_KEYS = frozenset({"f5first", "f5last", "fi", "dobd", "dobm", "doby"})
INTEGER_KEYS = frozenset({"fb_login_id", "lead_id"})
PLAIN_KEYS = frozenset(
    {
        "client_ip_address",
        "client_user_agent",
        "fbc",
        "fbp",
        "subscription_id",
        "anon_id",
        "madid",
        "page_id",
        "page_scoped_user_id",
        "ctwa_clid",
        "ig_account_id",
        "ig_sid",
        # In Meta's business-messaging examples beside page_id [BMSG].
        "whatsapp_business_account_id",
        "instagram_business_account_id",
    }
)
USER_DATA_KEYS = HASHED_LIST_KEYS | HASHED_SCALAR_KEYS | INTEGER_KEYS | PLAIN_KEYS | {"external_id"}

#: Since Graph v13.0 an event whose customer information is only (a subset of) one of these
#: combinations is invalid.
BASELINE_INSUFFICIENT: tuple[frozenset[str], ...] = (
    frozenset({"ct", "country", "st", "zp", "ge", "client_user_agent"}),
    frozenset({"db", "client_user_agent"}),
    frozenset({"fn", "ge"}),
    frozenset({"ln", "ge"}),
)

CUSTOMER_SEGMENTS = frozenset(
    {
        "new_customer_to_business",
        "new_customer_to_business_line",
        "new_customer_to_product_area",
        "new_customer_to_medium",
        "existing_customer_to_business",
        "existing_customer_to_business_line",
        "existing_customer_to_product_area",
        "existing_customer_to_medium",
        "customer_in_loyalty_program",
    }
)

#: Active ISO 4217 codes (plus ANG, replaced by XCG in 2025 but still seen).
CURRENCIES = frozenset(
    """
    AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BRL BSD BTN
    BWP BYN BZD CAD CDF CHF CLP CNY COP CRC CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB EUR FJD
    FKP GBP GEL GHS GIP GMD GNF GTQ GYD HKD HNL HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY
    KES KGS KHR KMF KPW KRW KWD KYD KZT LAK LBP LKR LRD LSL LYD MAD MDL MGA MKD MMK MNT MOP
    MRU MUR MVR MWK MXN MYR MZN NAD NGN NIO NOK NPR NZD OMR PAB PEN PGK PHP PKR PLN PYG QAR
    RON RSD RUB RWF SAR SBD SCR SDG SEK SGD SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT
    TND TOP TRY TTD TWD TZS UAH UGX USD UYU UZS VES VND VUV WST XAF XCD XCG XOF XPF YER ZAR
    ZMW ZWG
    """.split()  # noqa: SIM905 - a table reads better than 160 quoted strings
)

#: The rest of ISO 4217: funds, precious metals, units of account, testing (XTS) and "no
#: currency" (XXX). Meta documents only "a valid ISO 4217 three-letter code" [STD].
OTHER_CODES = frozenset(
    """
    BOV CHE CHW CLF COU MXV USN UYI UYW VED XAD XAG XAU XBA XBB XBC XBD XDR XPD XPT XSU XTS
    XUA XXX
    """.split()  # noqa: SIM905 - as CURRENCIES above
)

_SHA256 = re.compile(r"[0-9a-f]{64}")
_HEXISH = re.compile(r"[0-9a-fA-F]{32}|[0-9a-fA-F]{64}")
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
# fb.{subdomain_index}.{creation time in ms}.{fbclid or random}[.{appendix}]
_FBC = re.compile(r"fb\.\d\.\d{13}\.\S+")
_FBP = re.compile(r"fb\.\d\.\d{13}\.\d+(\.[A-Za-z0-9_-]+)?")
_URL = re.compile(r"https?://[^\s/?#]+\S*")


class Rejection(Exception):
    """One broken rule: Meta refuses the whole request, so one exception is enough."""

    def __init__(self, subcode: int, message: str) -> None:
        super().__init__(message)
        self.subcode = subcode
        self.title = TITLES[subcode]
        self.message = message


@dataclass(frozen=True)
class ErrorSpec:
    """How Graph answers an error code when a test scripts it without details."""

    message: str
    status: int
    is_transient: bool
    type: str = "OAuthException"


GRAPH_ERRORS: dict[int, ErrorSpec] = {
    1: ErrorSpec("An unknown error has occurred.", 500, is_transient=True),
    2: ErrorSpec(
        "An unexpected error has occurred. Please retry your request later.",
        500,
        is_transient=True,
    ),
    4: ErrorSpec("(#4) Application request limit reached", 400, is_transient=True),
    10: ErrorSpec(
        "(#10) Application does not have permission for this action", 400, is_transient=False
    ),
    17: ErrorSpec("(#17) User request limit reached", 400, is_transient=True),
    32: ErrorSpec("(#32) Page request limit reached", 400, is_transient=True),
    100: ErrorSpec("Invalid parameter", 400, is_transient=False),
    190: ErrorSpec(
        "Invalid OAuth access token - Cannot parse access token", 401, is_transient=False
    ),
    200: ErrorSpec("(#200) Permissions error", 400, is_transient=False),
    341: ErrorSpec("(#341) Application limit reached", 400, is_transient=True),
    368: ErrorSpec(
        "(#368) The action attempted has been deemed abusive or is otherwise disallowed",
        400,
        is_transient=False,
    ),
    613: ErrorSpec(
        "(#613) Calls to this api have exceeded the rate limit.", 400, is_transient=True
    ),
    80004: ErrorSpec(
        "(#80004) There have been too many calls to this ad-account. Wait a bit and try again. "
        "For more info, please refer to "
        "https://developers.facebook.com/docs/graph-api/overview/rate-limiting#ads-management.",
        400,
        is_transient=True,
    ),
}

#: Messages that depend on the subcode rather than the code alone.
SUBCODE_MESSAGES: dict[tuple[int, int], str] = {
    (190, 463): "Error validating access token: Session has expired.",
    (190, 467): "The access token could not be decrypted",
    (613, 1487742): (
        "There have been too many calls from this ad-account. Wait a bit and try again."
    ),
    (100, 33): (
        "Unsupported post request. Object does not exist, cannot be loaded due to missing "
        "permissions, or does not support this operation. Please read the Graph API "
        "documentation at https://developers.facebook.com/docs/graph-api"
    ),
}


def error_spec(code: int) -> ErrorSpec:
    """Defaults for ``code``; unknown codes behave like a permanent client error."""
    return GRAPH_ERRORS.get(code, ErrorSpec(f"(#{code}) Error", 400, is_transient=False))


def unsupported_request(method: str, object_id: str | None = None) -> str:
    """Graph's answer for a path or object it cannot serve (code 100, subcode 33)."""
    what = f"Object with ID '{object_id}'" if object_id else "Object"
    return (
        f"Unsupported {method.lower()} request. {what} does not exist, cannot be loaded due to "
        "missing permissions, or does not support this operation. Please read the Graph API "
        "documentation at https://developers.facebook.com/docs/graph-api"
    )


# --- the request -------------------------------------------------------------------------


def decode_data(raw: object) -> list[dict[str, Any]]:
    """Turn ``data`` (a JSON array, or its JSON text) into event objects.

    Each element may itself be JSON text: Graph types ``data`` as ``list<JSON-encoded string>``
    and the Python SDK sends it that way.
    """
    if raw is None:
        raise Rejection(MISSING_PARAMETER, "The parameter data is required.")
    if isinstance(raw, str):
        raw = _json_or_reject(raw, "data must be a JSON-encoded array of events.")
    if not isinstance(raw, list):
        raise Rejection(INVALID_DATA, "data must be an array of events.")
    events: list[dict[str, Any]] = []
    for element in raw:
        if isinstance(element, str):
            element = _json_or_reject(element, "Each element of data must be a JSON object.")
        if not isinstance(element, dict):
            raise Rejection(INVALID_DATA, "Each element of data must be an event object.")
        events.append(element)
    return events


def validate_request(params: Mapping[str, Any], events: list[dict[str, Any]], now: float) -> None:
    """Apply every rule; the first broken one rejects the request."""
    for name in ("test_event_code", "partner_agent", "namespace_id", "upload_tag"):
        if name in params and not (isinstance(params[name], str) and params[name]):
            raise Rejection(INVALID_PARAMETER, f"{name} must be a non-empty string.")
    if not events:
        raise Rejection(INVALID_DATA, "data must contain at least one event.")
    if len(events) > MAX_EVENTS:
        raise Rejection(
            INVALID_DATA,
            f"You can send up to {MAX_EVENTS:,} events in data; this request has {len(events):,}.",
        )
    for event in events:
        validate_event(event, now)


def _json_or_reject(text: str, message: str) -> Any:
    def no_constants(name: str) -> None:
        raise ValueError(name)

    try:
        return json.loads(text, parse_constant=no_constants)
    except (ValueError, RecursionError):  # nested deeper than Python's recursion limit
        raise Rejection(INVALID_DATA, message) from None


# --- one event ---------------------------------------------------------------------------


def validate_event(event: Mapping[str, Any], now: float) -> None:
    unknown = sorted(set(event) - EVENT_KEYS)
    if unknown:
        raise Rejection(INVALID_PARAMETER, f"Unknown event parameter(s): {', '.join(unknown)}.")
    for required in ("event_name", "event_time", "action_source", "user_data"):
        if required not in event:
            raise Rejection(MISSING_PARAMETER, f"The event parameter {required} is required.")
    _check_event_name(event["event_name"])
    action_source = event["action_source"]
    if action_source not in ACTION_SOURCES:
        raise Rejection(
            INVALID_ACTION_SOURCE,
            f"action_source must be one of: {', '.join(sorted(ACTION_SOURCES))}.",
        )
    _check_event_time(event["event_time"], action_source, now)
    if "event_id" in event and not (isinstance(event["event_id"], str) and event["event_id"]):
        raise Rejection(INVALID_PARAMETER, "event_id must be a non-empty string.")
    user_data = event["user_data"]
    _check_user_data(user_data)
    if action_source == "website":
        if "event_source_url" not in event:
            raise Rejection(MISSING_WEBSITE_PARAMETERS, "Website events require event_source_url.")
        if "client_user_agent" not in user_data:
            raise Rejection(
                MISSING_WEBSITE_PARAMETERS, "Website events require user_data.client_user_agent."
            )
    if action_source == "app":
        _check_app_data(event.get("app_data"))
    _check_messaging_channel(event)
    _check_custom_data(event)
    _check_other_fields(event)


def _check_event_name(name: object) -> None:
    if not isinstance(name, str) or not name.strip():
        raise Rejection(INVALID_PARAMETER, "event_name must be a non-empty string.")
    if len(name) > 50:
        raise Rejection(INVALID_PARAMETER, "event_name cannot exceed 50 characters.")


def _check_event_time(value: object, action_source: str, now: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise Rejection(
            INVALID_TIMESTAMP, "event_time must be an integer Unix timestamp in seconds."
        )
    if value >= MILLISECONDS_THRESHOLD:
        raise Rejection(
            TIMESTAMP_IN_FUTURE,
            "event_time is in the future: it looks like milliseconds; send Unix seconds.",
        )
    # A time in the future is accepted: Meta documents no limit (meta-capi.md §2).
    if action_source == "physical_store":
        if value < now - MAX_AGE_PHYSICAL_STORE:
            raise Rejection(
                TIMESTAMP_TOO_OLD,
                "The timestamp for this event is too far in the past. Physical store events "
                "need to be uploaded within 62 days of when they occurred.",
            )
    elif value < now - MAX_AGE:
        raise Rejection(TIMESTAMP_TOO_OLD, TOO_OLD_MESSAGE)


def _check_user_data(user_data: object) -> None:
    if not isinstance(user_data, dict):
        raise Rejection(INVALID_CUSTOMER_INFORMATION, "user_data must be an object.")
    unknown = sorted(set(user_data) - USER_DATA_KEYS)
    if unknown:
        raise Rejection(
            INVALID_CUSTOMER_INFORMATION, f"Unknown user_data parameter(s): {', '.join(unknown)}."
        )
    for key, value in user_data.items():
        _check_user_data_value(key, value)
    keys = set(user_data)
    if any(keys <= combination for combination in BASELINE_INSUFFICIENT):
        raise Rejection(
            INSUFFICIENT_CUSTOMER_INFORMATION,
            "The customer information parameters of this event are insufficient to match it "
            "(below the baseline: add em, ph, external_id, client_ip_address, fbc or fbp).",
        )


def _check_user_data_value(key: str, value: object) -> None:
    # Values are never echoed: they are customer data.
    where = f"user_data.{key}"
    if value is None or value in ("", []):
        raise Rejection(INVALID_CUSTOMER_INFORMATION, f"{where} is empty; leave it out instead.")
    if key in HASHED_LIST_KEYS or key in HASHED_SCALAR_KEYS:
        items = value if isinstance(value, list) and key in HASHED_LIST_KEYS else [value]
        for item in items:
            if not isinstance(item, str) or not _SHA256.fullmatch(item):
                raise Rejection(
                    INVALID_CUSTOMER_INFORMATION,
                    f"{where} must be hashed: a SHA-256 digest in lowercase hex (64 characters)"
                    f"{' or a list of them' if key in HASHED_LIST_KEYS else ''}.",
                )
            if item == _EMPTY_SHA256:
                raise Rejection(
                    INVALID_CUSTOMER_INFORMATION, f"{where} is the SHA-256 of an empty string."
                )
        return
    if key == "external_id":
        items = value if isinstance(value, list) else [value]
        if not all(isinstance(item, str) and item.strip() for item in items):
            raise Rejection(
                INVALID_CUSTOMER_INFORMATION, f"{where} must be a string or a list of strings."
            )
        return
    if key in INTEGER_KEYS:
        if isinstance(value, bool) or not (
            isinstance(value, int) or (isinstance(value, str) and value.isdigit())
        ):
            raise Rejection(INVALID_CUSTOMER_INFORMATION, f"{where} must be an integer.")
        return
    if not isinstance(value, str):
        raise Rejection(INVALID_CUSTOMER_INFORMATION, f"{where} must be a string.")
    if key in {"client_ip_address", "client_user_agent", "fbc", "fbp"} and _HEXISH.fullmatch(value):
        raise Rejection(INVALID_CUSTOMER_INFORMATION, f"{where} must not be hashed.")
    if key == "client_ip_address":
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise Rejection(
                INVALID_CUSTOMER_INFORMATION, f"{where} must be a valid IPv4 or IPv6 address."
            ) from None
    elif key == "fbc" and not _FBC.fullmatch(value):
        raise Rejection(
            INVALID_CUSTOMER_INFORMATION,
            f"{where} must look like fb.1.<creation time in ms>.<fbclid>.",
        )
    elif key == "fbp" and not _FBP.fullmatch(value):
        raise Rejection(
            INVALID_CUSTOMER_INFORMATION,
            f"{where} must look like fb.1.<creation time in ms>.<random number>.",
        )
    elif not value.strip():
        raise Rejection(INVALID_CUSTOMER_INFORMATION, f"{where} is blank.")


#: App Data Parameters [APPD]: extinfo positions marked "Required" besides the list itself.
EXTINFO_REQUIRED = {0: "extinfo version", 4: "OS version"}
MESSAGING_CHANNELS = frozenset({"whatsapp", "messenger", "instagram"})


def _check_app_data(app_data: object) -> None:
    if not isinstance(app_data, dict):
        raise Rejection(MISSING_PARAMETER, "App events require app_data.")
    if "advertiser_tracking_enabled" not in app_data:
        raise Rejection(
            MISSING_PARAMETER, "App events require app_data.advertiser_tracking_enabled."
        )
    # application_tracking_enabled: "Required" on one version of Meta's page, "Optional" on
    # the current one; the emulator follows the current one.
    for key in ("advertiser_tracking_enabled", "application_tracking_enabled"):
        if key in app_data and app_data[key] not in (True, False):  # 0 and 1 compare equal
            raise Rejection(INVALID_PARAMETER, f"app_data.{key} must be a boolean (0 or 1).")
    extinfo = app_data.get("extinfo")
    if not (
        isinstance(extinfo, list)
        and len(extinfo) == 16
        and all(
            isinstance(item, str) or (_is_number(item) and not isinstance(item, bool))
            for item in extinfo
        )
        and extinfo[0] in ("a2", "i2")
    ):
        raise Rejection(
            INVALID_PARAMETER,
            "app_data.extinfo must list all 16 values as strings (empty for unknown ones), "
            "starting with 'a2' (Android) or 'i2' (iOS).",
        )
    for position, name in EXTINFO_REQUIRED.items():
        if not str(extinfo[position]).strip():
            raise Rejection(
                INVALID_PARAMETER, f"app_data.extinfo[{position}] ({name}) is required."
            )


def _check_messaging_channel(event: Mapping[str, Any]) -> None:
    channel = event.get("messaging_channel")
    if channel is None:
        if event["action_source"] == "business_messaging":
            raise Rejection(
                MISSING_PARAMETER,
                "Business messaging events require messaging_channel "
                "(whatsapp, messenger or instagram).",
            )
        return
    if not isinstance(channel, str) or channel not in MESSAGING_CHANNELS:
        raise Rejection(
            INVALID_PARAMETER, "messaging_channel must be whatsapp, messenger or instagram."
        )


def _check_original_event_data(value: object) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        raise Rejection(INVALID_PARAMETER, "original_event_data must be an object.")
    for key in ("event_name", "order_id", "event_id"):
        if key in value and not (isinstance(value[key], str) and value[key].strip()):
            raise Rejection(
                INVALID_PARAMETER, f"original_event_data.{key} must be a non-empty string."
            )
    if "event_time" in value and (
        isinstance(value["event_time"], bool) or not isinstance(value["event_time"], int)
    ):
        raise Rejection(
            INVALID_PARAMETER, "original_event_data.event_time must be Unix seconds (integer)."
        )


def _is_number(value: object) -> bool:
    if isinstance(value, int) and not isinstance(value, bool):
        return True  # math.isfinite() of an int past a float's range raises OverflowError
    return isinstance(value, float) and math.isfinite(value)


def _is_amount(value: object) -> bool:
    """A number, or a numeric string: Meta's own fbc example sends ``"value": "142.52"``."""
    if isinstance(value, str):
        try:
            return math.isfinite(float(value))
        except ValueError:
            return False
    return _is_number(value)


def _check_custom_data(event: Mapping[str, Any]) -> None:
    custom_data = event.get("custom_data")
    if custom_data is None:
        if event["event_name"] == "Purchase":
            raise Rejection(
                INVALID_CUSTOM_DATA, "Purchase events require custom_data.value and currency."
            )
        return
    if not isinstance(custom_data, dict):
        raise Rejection(INVALID_CUSTOM_DATA, "custom_data must be an object.")
    purchase = event["event_name"] == "Purchase"
    if ("value" in custom_data or purchase) and not _is_amount(custom_data.get("value")):
        raise Rejection(INVALID_CUSTOM_DATA, "custom_data.value must be a number.")
    if "currency" in custom_data or purchase:
        currency = custom_data.get("currency")
        if not isinstance(currency, str) or currency.upper() not in CURRENCIES | OTHER_CODES:
            raise Rejection(
                INVALID_CUSTOM_DATA,
                "custom_data.currency must be a valid ISO 4217 three-letter currency code.",
            )


def _check_other_fields(event: Mapping[str, Any]) -> None:
    # Meta asks for the browser's http(s) address of website events [SEP]; other events may
    # name their source in any string.
    for key in ("event_source_url", "referrer_url"):
        if key not in event:
            continue
        if not isinstance(event[key], str):
            raise Rejection(INVALID_PARAMETER, f"{key} must be a string.")
        if event["action_source"] == "website" and not _URL.fullmatch(event[key]):
            raise Rejection(INVALID_PARAMETER, f"{key} must be an absolute http(s) URL.")
    if "opt_out" in event and not isinstance(event["opt_out"], bool):
        raise Rejection(INVALID_PARAMETER, "opt_out must be a boolean.")
    for key in ("original_event_data", "attribution_data", "app_data"):
        if key in event and not isinstance(event[key], dict):
            raise Rejection(INVALID_PARAMETER, f"{key} must be an object.")
    _check_original_event_data(event.get("original_event_data"))
    if "advanced_measurement_table" in event and not isinstance(
        event["advanced_measurement_table"], str
    ):
        raise Rejection(INVALID_PARAMETER, "advanced_measurement_table must be a string.")
    if "customer_segmentation" in event and event["customer_segmentation"] not in (
        CUSTOMER_SEGMENTS
    ):
        raise Rejection(INVALID_PARAMETER, "customer_segmentation is not a known segment.")
    _check_data_processing_options(event)


def _check_data_processing_options(event: Mapping[str, Any]) -> None:
    options = event.get("data_processing_options")
    if options is None:
        return
    if not isinstance(options, list) or any(option != "LDU" for option in options):
        raise Rejection(
            INVALID_PARAMETER, "data_processing_options must be [] or ['LDU'] (Limited Data Use)."
        )
    if not options:
        return
    for key in ("data_processing_options_country", "data_processing_options_state"):
        value = event.get(key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise Rejection(
                INVALID_PARAMETER, f"Limited Data Use requires {key} (an integer, 0 to geolocate)."
            )
