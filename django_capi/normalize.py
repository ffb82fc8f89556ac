"""Normalize and hash ``user_data`` exactly as Meta's Conversions API documentation asks.

Meta only matches a person when each identifier is normalized as its docs describe before it is
SHA-256 hashed. The official Python SDK is looser (it keeps punctuation in names, adds no phone
country code, does not reformat dates, passes malformed values on), so matches silently fail.

Pure: no database, no Django settings, no logging. Unusable values are dropped and described in
``NormalizedUserData.problems`` by key, position and reason, never by value: those lines are
stored, and raw PII must not be.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import unicodedata
from collections.abc import Callable, Mapping
from contextlib import suppress
from datetime import date, datetime
from functools import cache, lru_cache
from typing import Any, NamedTuple

import phonenumbers
import pycountry
from dateutil import parser as date_parser

from .exceptions import UnknownUserDataKey
from .text import MAX_BROWSER_VALUE_LENGTH, is_storable, storable

HASHED_KEYS: frozenset[str] = frozenset(
    {"em", "ph", "fn", "ln", "ge", "db", "ct", "st", "zp", "country", "external_id"}
)
# The business-messaging keys are Meta's [CIP], [BMSG]: whatsapp_business_account_id and
# instagram_business_account_id appear in its examples beside page_id.
# fmt: off
PLAIN_KEYS: frozenset[str] = frozenset({
    "client_ip_address", "client_user_agent", "fbc", "fbp", "subscription_id", "fb_login_id",
    "lead_id", "anon_id", "madid", "page_id", "page_scoped_user_id", "ctwa_clid", "ig_account_id",
    "ig_sid", "whatsapp_business_account_id", "instagram_business_account_id",
})
# fmt: on
# Meta's layout fb.<subdomain index>.<creation time in ms>.<value> [FBC], optionally with the
# Parameter Builder's appendix [PB]. They come from cookies anyone can write: a value in
# another layout (seconds instead of milliseconds, junk, thousands of digits) would get the
# whole event rejected, so it is dropped. The click id is kept exactly (Meta: case-sensitive).
_FB_COOKIES = {
    "fbc": re.compile(r"fb\.[0-9]\.[0-9]{13}\.[!-\-/-~]{1,500}(?:\.[A-Za-z0-9_-]{2,8})?"),
    "fbp": re.compile(r"fb\.[0-9]\.[0-9]{13}\.[0-9]{1,20}(?:\.[A-Za-z0-9_-]{2,8})?"),
}
_FB_COOKIE_LAYOUTS = {
    "fbc": "fb.<subdomain index>.<creation time in ms>.<click id>",
    "fbp": "fb.<subdomain index>.<creation time in ms>.<random number>",
}

_SHA256_RE = re.compile(r"[0-9a-fA-F]{64}")
# Meta's parameter builder maps these English words to m and f [PB]; it maps no other
# language, so the common words of shop forms in German, French, Spanish, Italian, Portuguese
# and Dutch are added. Keys are folded (_fold): "Mrs." and "Señora" find "mrs" and "senora".
# fmt: off
_MALE = (
    "m", "male", "man", "boy", "gentleman", "guy", "sir", "mister", "mr", "son", "father", "dad",
    "daddy", "papa", "uncle", "nephew", "brother", "husband", "boyfriend", "groom", "widower",
    "king", "prince", "duke", "count", "emperor", "god", "lord", "lad", "fellow", "chap",
    "bloke", "dude", "he", "him", "his", "himself",
    "mannlich", "mann", "herr", "masculin", "homme", "monsieur", "masculino", "hombre", "senor",
    "sr", "maschile", "maschio", "uomo", "signore", "sig", "homem", "mannelijk", "heer",
)
_FEMALE = (
    "f", "female", "woman", "girl", "lady", "miss", "ms", "mrs", "madam", "maam", "daughter",
    "mother", "mom", "mama", "mommy", "aunt", "niece", "sister", "wife", "girlfriend", "bride",
    "widow", "queen", "princess", "duchess", "countess", "empress", "goddess", "maiden", "lass",
    "gal", "chick", "dame", "belle", "she", "her", "hers", "herself",
    "weiblich", "frau", "feminin", "femme", "madame", "mademoiselle", "mme", "femenino", "mujer",
    "senora", "sra", "femminile", "femmina", "donna", "signora", "mulher", "vrouwelijk", "vrouw",
    "mevrouw",
)
# fmt: on
_GENDERS = dict.fromkeys(_MALE, "m") | dict.fromkeys(_FEMALE, "f")
# pycountry only knows official and common names; these are frequent in shop address forms.
_COUNTRY_ALIASES = dict.fromkeys(
    ("uk", "britain", "greatbritain", "england", "scotland", "wales", "northernireland"), "GB"
) | {"russia": "RU"}
_EARLIEST_BIRTH_YEAR = 1900
#: Meta's integer ids (fb_login_id, lead_id) are 64-bit: at most 20 digits.
_MAX_ID_DIGITS = 20


class NormalizedUserData(dict[str, Any]):
    """A Meta-ready ``user_data`` dict (keys sorted); ``.problems`` lists what was dropped and why.

    ``problems`` never holds a raw value, so it is safe to store.
    """

    __slots__ = ("problems",)
    problems: list[str]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.problems = []


class _Drop(Exception):
    """Raised by a single-value normalizer; its message must never include the value."""


class _Record(NamedTuple):
    """What one value's normalization may depend on from the rest of the record (a tuple:
    made once per record, it is cheaper to build than a frozen dataclass)."""

    # Alpha-2 codes read from raw `country` values; None when the record has no country
    # at all (hashed or unknown countries give an empty tuple: present, but unreadable).
    countries: tuple[str, ...] | None
    phone_region: str | None


def sha256_hex(value: str) -> str:
    """Lowercase hex SHA-256 of ``value`` encoded as UTF-8."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def is_sha256_hex(value: str) -> bool:
    """True if ``value`` is exactly 64 hexadecimal characters (any case, no padding)."""
    return _SHA256_RE.fullmatch(value) is not None


def normalize_user_data(
    data: Mapping[str, object],
    *,
    phone_region: str | None = None,
    default_phone_region: str | None = None,
) -> NormalizedUserData:
    """Return ``data`` normalized, hashed where Meta requires it, with unusable values dropped.

    A phone number written without a country code is read in ``phone_region`` if given, else in
    the record's own ``country``, else in ``default_phone_region``; with none of them its
    digits must already start with a real country code. Raises ``UnknownUserDataKey`` for a
    key Meta does not know and ``ValueError`` for a region argument that is not a country
    phonenumbers knows. ``django_capi.normalize_user_data`` (``events.py``) is this function
    with the ``DEFAULT_PHONE_REGION`` setting as the default region.
    """
    if not _KNOWN_KEYS.issuperset(data):
        raise UnknownUserDataKey(str(next(key for key in data if key not in _KNOWN_KEYS)))
    country = data.get("country")
    record = _record(
        country if isinstance(country, str) else _record_countries(country),
        _region_argument("phone_region", phone_region),
        _region_argument("default_phone_region", default_phone_region),
    )

    result = NormalizedUserData()
    problems = result.problems
    for key in sorted(data):
        value = data[key]
        normalizer = _NORMALIZERS.get(key)
        if normalizer is None:
            # The common case, inline: ASCII text, which is storable without NUL (isascii()
            # costs nothing in CPython), of a key without a format or in its format, and not
            # so long that _plain_value would cut it.
            if (
                type(value) is str
                and value.isascii()
                and "\x00" not in value
                and len(value) <= MAX_BROWSER_VALUE_LENGTH
                and key not in _INTEGER_IDS
            ):
                text = value.strip()
                pattern = _PLAIN_FORMATS.get(key)
                if text and (pattern is None or pattern.fullmatch(text)):
                    result[key] = text
                    continue
            value = _plain_value(key, value, problems)
        elif type(value) is str and (value.isascii() and "\x00" not in value or is_storable(value)):
            # The common case, inline (_hash_values does the same for any value).
            text = value.strip()
            if not text:
                continue
            if len(text) == 64 and is_sha256_hex(text):
                value = text.lower()  # already hashed: hashing again would never match
            else:
                try:
                    value = (
                        _repeated_digest(key, text, record)
                        if key in _REPEATED_KEYS
                        else _sha256(normalizer(text, record).encode()).hexdigest()
                    )
                except _Drop as drop:
                    problems.append(f"{key}: value {drop}; dropped")
                    continue
        else:
            value = _hash_values(key, value, record, problems)
        if value is not None:
            result[key] = value
    return result


_sha256 = hashlib.sha256
#: Keys whose values a shop's customers share (a few hundred countries and regions): their
#: digests are kept, so most records hash neither. Not the identifying keys, whose values
#: rarely recur.
_REPEATED_KEYS = frozenset({"country", "st"})


@lru_cache(maxsize=1024)
def _repeated_digest(key: str, text: str, record: _Record) -> str:
    return _sha256(_NORMALIZERS[key](text, record).encode()).hexdigest()


_KNOWN_KEYS = HASHED_KEYS | PLAIN_KEYS


@lru_cache(maxsize=1024)
def _record(
    countries: str | tuple[str, ...] | None, forced_region: str | None, fallback_region: str | None
) -> _Record:
    """What a record's values depend on: its countries (a raw ``country`` text, read here,
    or those already read) and the region its phones are read in."""
    if isinstance(countries, str):
        countries = _countries_of(countries)
    record_region = next((c for c in countries or () if c in phonenumbers.SUPPORTED_REGIONS), None)
    return _Record(countries, forced_region or record_region or fallback_region)


def _hash_values(
    key: str, value: object, record: _Record, problems: list[str]
) -> str | list[str] | None:
    if not isinstance(value, list | tuple):  # the common case: one value
        try:
            return _hash_one(key, _hashable(key, "value", value, problems), record)
        except _Drop as drop:
            problems.append(f"{key}: value {drop}; dropped")
            return None
    hashes: list[str] = []
    for position, item in enumerate(value, start=1):
        where = f"value {position} of {len(value)}"
        try:
            digest = _hash_one(key, _hashable(key, where, item, problems), record)
        except _Drop as drop:
            problems.append(f"{key}: {where} {drop}; dropped")
            continue
        if digest is not None and digest not in hashes:
            hashes.append(digest)
    if not hashes:
        return None
    return hashes[0] if len(hashes) == 1 else hashes


def _hashable(key: str, where: str, item: object, problems: list[str]) -> object:
    """Lone surrogates cannot be encoded as UTF-8 for hashing: hash what a database would
    store, as the rest of the event is stored."""
    if isinstance(item, str) and not is_storable(item):
        problems.append(
            f"{key}: {where} had NUL or lone surrogates, replaced by U+FFFD before hashing"
        )
        return storable(item)
    return item


def _hash_one(key: str, item: object, record: _Record) -> str | None:
    if isinstance(item, str):  # the common case first
        text = item.strip()
        if not text:
            return None
        if len(text) == 64 and is_sha256_hex(text):
            # Already hashed by the caller (or by a previous pass): hashing again would never
            # match.
            return text.lower()
        return sha256_hex(_NORMALIZERS[key](text, record))
    if item is None:
        return None
    if key == "db" and isinstance(item, date):
        return sha256_hex(_birth_date(item.date() if isinstance(item, datetime) else item))
    # Shops commonly use the primary key as external_id; str() of an int is lossless.
    if key == "external_id" and isinstance(item, int) and not isinstance(item, bool):
        return sha256_hex(_integer_text(item))
    raise _Drop(f"has unsupported type {type(item).__name__}")


def _email(text: str, record: _Record) -> str:
    # Meta asks only to trim and lowercase [CIP]: a stricter validator would drop addresses
    # Meta matches (non-ASCII local parts, IDN domains). Drop only what cannot be an address.
    # One "@", something before it, a domain of two or more non-empty labels, no spaces.
    lowered = text.lower()
    if _EMAIL_RE.fullmatch(lowered) is None:
        raise _Drop("is not a valid email address")
    return lowered


def _phone(text: str, record: _Record) -> str:
    digits = _plain_phone_digits(text, record.phone_region)
    if digits is not None:
        return digits
    digits, problem = _phone_digits(text, record.phone_region)
    if digits is None:
        raise _Drop(problem)
    return digits


class _Dialling(NamedTuple):
    """The parts of phonenumbers' metadata that ``phonenumbers.parse`` consults for a number
    made of digits and punctuation only (``_plain_phone_digits``)."""

    country_code: str
    international_prefix: re.Pattern[str] | None
    national_prefix: re.Pattern[str] | None
    #: Lengths of a national significant number that ``is_possible_number_with_reason``
    #: calls ``IS_POSSIBLE`` (the country code's main region decides, as in phonenumbers).
    possible_lengths: frozenset[int]


def _dialling(metadata: Any) -> _Dialling:
    code = int(metadata.country_code)
    main = phonenumbers.PhoneMetadata.metadata_for_region_or_calling_code(
        code, phonenumbers.region_code_for_country_code(code)
    )
    general = main.general_desc if main is not None else None
    lengths = tuple(general.possible_length or ()) if general is not None else ()
    local_only = set(general.possible_length_local_only or ()) if general is not None else set()
    return _Dialling(
        country_code=str(code),
        international_prefix=_pattern(metadata.international_prefix),
        national_prefix=_pattern(metadata.national_prefix_for_parsing),
        possible_lengths=frozenset(
            () if not lengths or lengths[0] == -1 else set(lengths) - local_only
        ),
    )


def _pattern(regex: str | None) -> re.Pattern[str] | None:
    return re.compile(regex) if regex else None


@cache
def _region_dialling(region: str) -> _Dialling | None:
    metadata = phonenumbers.PhoneMetadata.metadata_for_region(region, None)
    if metadata is None or metadata.international_prefix is None:
        return None
    return _dialling(metadata)


@cache
def _country_code_dialling(code: int) -> _Dialling | None:
    if code not in phonenumbers.COUNTRY_CODE_TO_REGION_CODE:
        return None
    region = phonenumbers.region_code_for_country_code(code)
    metadata = phonenumbers.PhoneMetadata.metadata_for_region_or_calling_code(code, region)
    return None if metadata is None else _dialling(metadata)


# ASCII digits and the punctuation of written numbers; a "+" only before the first digit.
_PLAIN_PHONE_RE = re.compile(r"[ (]*(\+?)[0-9 ().-]{1,40}")
# phonenumbers tries country codes of 1 to 3 digits, shortest first.
_COUNTRY_CODE_SIZES = (1, 2, 3)


def _plain_phone_digits(text: str, region: str | None) -> str | None:
    """The E.164 digits of a plainly written number, as ``_phone_digits`` would find them
    but without ``phonenumbers.parse`` (most of a record's cost); None when the number is not
    of the two shapes read here, and then phonenumbers decides.

    The shapes: ``+`` and a country code, and a national number in ``region``, both made of
    digits and `` ().-`` only, where no international prefix, country code or national
    prefix leads the national digits: there phonenumbers would try to strip them, and its
    heuristics stay its own. What is left is its length test, made from the same metadata,
    so the result is the one phonenumbers gives (``tests/test_normalize.py`` compares both
    on generated numbers of every region)."""
    shape = _PLAIN_PHONE_RE.fullmatch(text)
    if shape is None:
        return None
    digits = _NOT_DIGIT_RE.sub("", text)
    dialling: _Dialling | None = None
    if shape[1]:
        if digits[:1] == "0":
            return None
        for size in _COUNTRY_CODE_SIZES:
            code = digits[:size]
            if int(code or 0) in phonenumbers.COUNTRY_CODE_TO_REGION_CODE:
                dialling = _country_code_dialling(int(code))
                national = digits[size:]
                break
    elif region is not None:
        dialling = _region_dialling(region)
        national = digits
        if dialling is not None and (
            dialling.international_prefix is None
            or dialling.international_prefix.match(digits)
            or digits.startswith(dialling.country_code)
        ):
            return None
    if dialling is None:
        return None
    if dialling.national_prefix is not None and dialling.national_prefix.match(national):
        return None
    if len(national) not in dialling.possible_lengths:
        return None
    return dialling.country_code + national


@lru_cache(maxsize=4096)
def _phone_digits(text: str, region: str | None) -> tuple[str | None, str]:
    """The E.164 digits of ``text`` read in ``region``, else None and why. Cached: parsing
    is most of the cost of a record, and a customer's number recurs with each of their
    events (in this process's memory only, like the request that brought it)."""
    number, guessed = _parse_phone(text, region)
    # LOCAL_ONLY numbers lack the area code Meta needs, so they are as useless as impossible ones.
    possible = phonenumbers.ValidationResult.IS_POSSIBLE
    if number is None or phonenumbers.is_possible_number_with_reason(number) != possible:
        return None, "is not a possible phone number"
    # A guessed country code is only trusted when it yields a real number: "(650) 555-1212"
    # read as +65 would be hashed into a match for nobody.
    if guessed and not phonenumbers.is_valid_number(number):
        return None, "has no country code and no region is known"
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)[1:], ""


_IPV4_RE = re.compile(
    r"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}"
    r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
)
#: The plain keys whose stripped ASCII text ``_plain_value`` returns as it is when it is in
#: their format (an IPv4 address as ``ipaddress`` writes it, Meta's cookie layouts); any
#: other plain key's text is returned as it is, except ``_INTEGER_IDS``, which are converted.
_PLAIN_FORMATS = {"client_ip_address": _IPV4_RE, **_FB_COOKIES}
_INTEGER_IDS = frozenset({"fb_login_id", "lead_id"})
_EMAIL_RE = re.compile(r"[^@\s]+@[^@\s.]+(?:\.[^@\s.]+)+")
_ASCII_ZIP_RE = re.compile(r"[\s-]")
_ZIP9_RE = re.compile(r"[0-9]{9}")
_ASCII_NOT_ALPHA_RE = re.compile(r"[^a-z]")
_ASCII_NOT_ALNUM_RE = re.compile(r"[^a-z0-9]")
_INTERNATIONAL_RE = re.compile(r"[^0-9]*\+")
_NOT_DIGIT_RE = re.compile(r"[^0-9]")
_SIGNIFICANT_RE = re.compile(r"[1-9]")


def _parse_phone(text: str, region: str | None) -> tuple[phonenumbers.PhoneNumber | None, bool]:
    """The parsed number, and whether its country code was guessed from bare digits."""
    if _INTERNATIONAL_RE.match(text):
        return _try_parse(text, None), False
    if region is not None:
        # phonenumbers strips the region's own international prefix (00, 011, 0011...).
        number = _try_parse(text, region)
        if number is not None and phonenumbers.is_possible_number(number):
            return number, False
        if not _NOT_DIGIT_RE.sub("", text).startswith("00"):
            return number, False
    # Meta: without a known region the digits must already start with the country code; leading
    # zeros are a dialling prefix, not part of it.
    significant = _SIGNIFICANT_RE.search(text)
    if significant is None:
        return None, False
    return _try_parse("+" + text[significant.start() :], None), region is None


def _try_parse(text: str, region: str | None) -> phonenumbers.PhoneNumber | None:
    try:
        return phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None


def _state(text: str, record: _Record) -> str:
    folded = _fold(text)
    for country in ("US",) if record.countries is None else record.countries:
        code = _subdivision_codes(country).get(folded)
        if code is not None:
            return code
    return _keep_letters(text, digits=True)


def _zip(text: str, record: _Record) -> str:
    if text.isdigit() and text.isascii():
        value = text  # the common case: nothing to remove
    elif text.isascii():  # the one dash punctuation (Pd) of ASCII is "-"
        value = _ASCII_ZIP_RE.sub("", text.lower())
    else:
        value = "".join(
            ch for ch in text.lower() if not ch.isspace() and unicodedata.category(ch) != "Pd"
        )
    if not value:
        raise _Drop("has nothing left after normalization")
    # Meta wants only the 5-digit ZIP; ZIP+4 would never match.
    if (record.countries is None or "US" in record.countries) and _ZIP9_RE.fullmatch(value):
        return value[:5]
    return value


def _country(text: str, record: _Record) -> str:
    code = _resolve_country(text)
    if code is None:
        raise _Drop("is not a known country")
    return code.lower()


def _gender(text: str, record: _Record) -> str:
    value = _GENDERS.get(_fold(text))
    if value is None:
        raise _Drop("is not a word for female or male")
    return value


_YMD_RE = re.compile(r"([0-9]{4})([-/.])([0-9]{1,2})\2([0-9]{1,2})")
_COMPACT_RE = re.compile(r"([0-9]{4})()([0-9]{2})([0-9]{2})")  # groups line up with _YMD_RE
_DMY_RE = re.compile(r"([0-9]{1,2})([/.])([0-9]{1,2})\2([0-9]{4})")
# A written date names its month ("Feb 16, 1997", "16 February 1997") and its full year.
_WRITTEN_RE = re.compile(r"(?=.*[^\W\d_]{3})(?=.*(?<![0-9])[0-9]{4}(?![0-9]))", re.DOTALL)


def _parse_date(text: str) -> date:
    with suppress(ValueError):  # YYYYMMDD, YYYY-MM-DD and ISO datetimes
        return datetime.fromisoformat(text).date()
    if match := _YMD_RE.fullmatch(text) or _COMPACT_RE.fullmatch(text):
        year, month, day = int(match[1]), int(match[3]), int(match[4])
    elif match := _DMY_RE.fullmatch(text):
        first, second, year = int(match[1]), int(match[3]), int(match[4])
        # Dots are the European day-first form; slashes are read US month-first (Meta's own
        # example) unless the first number cannot be a month.
        day_first = match[2] == "." or first > 12
        day, month = (first, second) if day_first else (second, first)
    elif _WRITTEN_RE.match(text):
        return _written_date(text)
    else:
        raise _Drop("is not a recognised date format")
    try:
        return date(year, month, day)
    except ValueError:
        raise _Drop("is not a real calendar date") from None


def _written_date(text: str) -> date:
    """An English written date. dateutil fills a missing part from its default, so parsing
    with two different defaults tells a complete date from "February 1997"."""
    try:
        parsed = [
            date_parser.parse(text, default=datetime(2000, 1, 1)),
            date_parser.parse(text, default=datetime(2001, 2, 2)),
        ]
    except (ValueError, OverflowError):
        raise _Drop("is not a recognised date format") from None
    if parsed[0] != parsed[1]:
        raise _Drop("is not a recognised date format")
    return parsed[0].date()


def _birth_date(value: date) -> str:
    if value.year < _EARLIEST_BIRTH_YEAR or value > date.today():
        raise _Drop("is outside the accepted range of 1900 to today")
    return value.strftime("%Y%m%d")


def _plain_value(key: str, value: object, problems: list[str]) -> str | int | None:
    if value is None:
        return None
    if isinstance(value, list | tuple):
        problems.append(f"{key}: a list is not allowed for this key; dropped")
        return None
    try:
        if key == "client_ip_address":
            return _ip_address(value)
        if key in _INTEGER_IDS:
            return _integer_id(value)
        text = _text(value)
        if text is not None and key in _FB_COOKIES and not _FB_COOKIES[key].fullmatch(text):
            raise _Drop(f"is not in Meta's {_FB_COOKIE_LAYOUTS[key]} format")
    except _Drop as drop:
        problems.append(f"{key}: value {drop}; dropped")
        return None
    if text is not None and not is_storable(text):
        problems.append(
            f"{key}: NUL or lone surrogates, which no database stores, were replaced by U+FFFD"
        )
        text = storable(text)
    if key == "client_user_agent" and text is not None and len(text) > MAX_BROWSER_VALUE_LENGTH:
        problems.append(
            f"{key}: longer than {MAX_BROWSER_VALUE_LENGTH} characters, which no browser "
            "sends; cut to that length"
        )
        text = text[:MAX_BROWSER_VALUE_LENGTH]
    return text


def _ip_address(value: object) -> str | None:
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return str(value)
    text = _text(value)
    if text is None:
        return None
    if _IPV4_RE.fullmatch(text):
        return text  # dotted-quad IPv4 without leading zeros: ipaddress would write it so
    # Proxies and some frameworks hand over "host:port"; Meta wants the bare address.
    if bracketed := re.fullmatch(r"\[([^\]]+)\](?::[0-9]{1,5})?", text):
        text = bracketed[1]
    elif with_port := re.fullmatch(r"([0-9.]+):[0-9]{1,5}", text):
        text = with_port[1]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise _Drop("is not a valid IP address") from None


def _integer_id(value: object) -> int | None:
    text = _text(value)
    if text is not None and not (text.isascii() and text.isdigit()):
        raise _Drop("is not a non-negative integer")
    if text is not None and len(text) > _MAX_ID_DIGITS:
        raise _Drop(f"has more than {_MAX_ID_DIGITS} digits")
    return None if text is None else int(text)


def _text(value: object) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return _integer_text(value)
    if not isinstance(value, str):
        raise _Drop(f"has unsupported type {type(value).__name__}")
    return value.strip() or None


def _integer_text(value: int) -> str:
    # Python refuses to print integers of more than 4,300 digits; no id comes near.
    try:
        return str(value)
    except ValueError:
        raise _Drop("is an integer of more than 4,300 digits") from None


def _keep_letters(text: str, record: _Record | None = None, *, digits: bool = False) -> str:
    if text.isascii():
        # ASCII letters are the only ASCII characters in L (no M), digits the only Nd; NFC
        # changes no ASCII text.
        lowered = text.lower()
        if lowered.isalpha():
            return lowered  # the common case: nothing to remove
        kept = (_ASCII_NOT_ALNUM_RE if digits else _ASCII_NOT_ALPHA_RE).sub("", lowered)
        if not kept:
            raise _Drop("has nothing left after normalization")
        return kept
    # str.lower, not casefold: Meta hashes "straße", not "strasse".
    lowered = unicodedata.normalize("NFC", text).lower()
    if lowered.isalpha():
        # Letters only (categories L*, as isalpha defines them): all kept, as below.
        return unicodedata.normalize("NFC", lowered)
    keep = ("L", "M", "Nd") if digits else ("L", "M")
    kept = unicodedata.normalize(
        "NFC", "".join(ch for ch in lowered if unicodedata.category(ch).startswith(keep))
    )
    if not kept:
        raise _Drop("has nothing left after normalization")
    return kept


_NORMALIZERS: dict[str, Callable[[str, _Record], str]] = {
    "em": _email,
    "ph": _phone,
    "fn": _keep_letters,
    "ln": _keep_letters,
    "ct": _keep_letters,
    "st": _state,
    "zp": _zip,
    "country": _country,
    "db": lambda text, _: _birth_date(_parse_date(text)),
    "ge": _gender,
    # Meta only asks that it be consistent across channels, so the case is kept.
    "external_id": lambda text, _: text,
}


@lru_cache(maxsize=1024)
def _fold(text: str) -> str:
    """Lookup key: lowercase letters and digits without accents, so "Québec" finds "Quebec"."""
    decomposed = unicodedata.normalize("NFKD", text.lower())
    return "".join(ch for ch in decomposed if ch.isalnum() and not unicodedata.combining(ch))


@cache
def _subdivision_codes(country: str) -> dict[str, str]:
    """Folded name or code → lowercase 2-letter code, only where Meta expects codes (US, CA)."""
    if country not in {"US", "CA"}:
        return {}
    table: dict[str, str] = {}
    for subdivision in pycountry.subdivisions:
        if subdivision.country_code != country:
            continue
        code = str(subdivision.code).split("-", 1)[1].lower()
        table[_fold(code)] = code
        table[_fold(str(subdivision.name))] = code
    return table


@cache
def _country_names() -> dict[str, str]:
    table = dict(_COUNTRY_ALIASES)
    for country in pycountry.countries:
        for attribute in ("alpha_2", "alpha_3", "name", "official_name", "common_name"):
            name = getattr(country, attribute, None)
            if isinstance(name, str):
                table.setdefault(_fold(name), str(country.alpha_2))
    return table


@lru_cache(maxsize=1024)
def _resolve_country(text: str) -> str | None:
    """Upper-case alpha-2 code for a code, alpha-3 code or country name; None if unknown."""
    with suppress(LookupError):
        return str(pycountry.countries.lookup(text).alpha_2)
    # Also accept "U.S.A.", "unitedstates", "Côte d'Ivoire" spelled without accents, "UK".
    folded = _fold(text)
    return _country_names().get(folded) if folded else None


def _record_countries(value: object) -> tuple[str, ...] | None:
    if isinstance(value, str):  # the common case: one country
        return _countries_of(value)
    items = value if isinstance(value, list | tuple) else (value,)
    present = [item for item in items if item is not None and str(item).strip()]
    # A hashed country cannot be read back, so it tells us nothing about the region.
    codes = [
        _resolve_country(item.strip())
        for item in present
        if isinstance(item, str) and not is_sha256_hex(item.strip())
    ]
    return tuple(dict.fromkeys(code for code in codes if code)) if present else None


@lru_cache(maxsize=1024)
def _countries_of(value: str) -> tuple[str, ...] | None:
    return _record_countries((value,))


def _region_argument(name: str, value: str | None) -> str | None:
    if value is None:
        return None
    code = _region_code(value)
    if code == "":
        raise ValueError(f"{name} must be a country code phonenumbers knows, got {value!r}")
    return code


@lru_cache(maxsize=256)
def _region_code(value: str) -> str | None:
    """The region phonenumbers knows by ``value``, None for a blank one, "" for none."""
    if not value.strip():
        return None
    code = _resolve_country(value.strip())
    return code if code is not None and code in phonenumbers.SUPPORTED_REGIONS else ""
