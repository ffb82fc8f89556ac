"""The bad-input corpus: values a browser, an integrator or Meta may hand django-capi.

Each entry is ``(kind, value)``; the kind says where the driver (``test_corpus.py``) puts
the value: a header, a cookie, a user_data key, custom_data, a hook's return value. ``PII``
kinds are personal data: their raw text must never reach the database.
"""

from __future__ import annotations

import datetime as dt
import math
from decimal import Decimal
from typing import Any

MEGABYTE = 1024 * 1024
#: Kinds whose raw values are personal data.
PII = frozenset({"email", "phone", "name"})


def _deep_dict(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"a": value}
    return value


def _deep_list(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


def _cyclic_dict() -> dict[str, Any]:
    value: dict[str, Any] = {"id": "1"}
    value["self"] = value
    return value


def _cyclic_list() -> list[Any]:
    value: list[Any] = ["1"]
    value.append(value)
    return value


URLS = [
    "http://[",
    "https://x]/",
    "http://[::1",
    "http://[zz::1]/",
    "https://example.com:99999/",
    "https://example.com:-1/",
    "https://example.com:port/",
    "http://",
    "://",
    "//evil.example/",
    "javascript:alert(1)",
    "data:text/html,<script>alert(1)</script>",
    "file:///etc/passwd",
    "https://shop.example.com/a b c/",
    "https://shop.example.com/\x00/",
    "https://shop.example.com/\ud800/",
    "https://shop.example.com/\u202eevil/",
    "https://user:pass@shop.example.com/",
    "https://shop.example.com/?email=corpus.url@example.org",
    "https://shop.example.com/confirm/corpus.path@example.org/",
    "https://xn--80ak6aa92e.com/",
    "https://пример.рф/страница",
    "https://shop.example.com/" + "a" * 70_000,
    "https://shop.example.com/#<script>",
    "https://shop.example.com/\r\nSet-Cookie: x=1",
    "http://%00/",
    "https:\\\\evil.example\\",
    "https://shop.example.com/%ff%fe%00",
    "ht tp://x",
    "https://" + "a." * 200 + "com/",
]

HOSTS = [
    "",
    "[",
    "x]",
    "evil.example:99999",
    "a" * 300,
    "shop.example.com\x00",
    "shop example com",
    "shop.example.com:80:80",
    "пример.рф",
    "[::1]:8000",
    "127.0.0.1:-1",
    "shop.example.com/../../",
    "shop.example.com\r\nX-Injected: 1",
    "@evil.example",
    "%00",
]

COOKIE_VALUES = [
    "junk",
    "",
    "fb.1.1700000000.123",  # seconds, not milliseconds
    "fb.1.1700000000000.\x00",
    "fb.1.1700000000000.\ud800",
    "fb.1.1700000000000." + "9" * 5000,
    "fb.1." + "9" * 5000 + ".1",
    "fb.1.-1700000000000.1",
    "fb.x.1700000000000.1",
    "fb.1.1700000000000.1.extra.parts.here",
    "fb.1.1700000000000",
    "fb..",
    "fb.1.1700000000000.<script>alert(1)</script>",
    "fb.1.1700000000000.' OR '1'='1",
    "fb.1.1700000000000.\u202e\u200b",
    "fb.1.1700000000000.AbC_dEf-123",
    "FB.1.1700000000000.1",
    "fb.1.NaN.1",
    "fb.1.1e13.1",
    "fb.1.１７００００００００００００.1",
    "x" * 4096,
    "fb.1.1700000000000.1\r\nSet-Cookie: a=b",
    "null",
    "[]",
    "{}",
]

COOKIE_HEADERS = [
    '_fbp="fb.1.1700000000000.\\000"',
    '_fbc="fb.1.1700000000000.\\000"',
    '_fbp="fb.1.1700000000000.\\377\\376"',
    "_fbp=fb.1.1700000000000.\udcff",
    "_fbp=; _fbc=",
    "_fbp",
    "=; =; =",
    "_fbp=a; _fbp=b; _fbp=c",
    ";;;;;;;",
    "_fbc=fb.1.1700000000000.abc; _fbp=" + "x" * 8000,
    '_fbp="unterminated',
    "_fbp=\x00\x01\x02",
    "_fbp=%00; _fbc=%ZZ",
    "sessionid=' OR 1=1 --; _fbp=fb.1.1700000000000.1",
    "_fbp=<script>alert(1)</script>",
    "_fbp=\u202efb.1.1700000000000.1",
    "shop_consent=granted\x00; _fbp=fb.1.1700000000000.1",
    "$Version=1; _fbp=fb.1.1700000000000.1; $Path=/",
    "a=" + "b;" * 2000,
    "_fbc=fb.1.1700000000000." + "%" * 100,
]

EMAILS = [
    "Corpus.Plain@Example.org",
    "corpus.missing-at.example.org",
    "corpus.double@@example.org",
    "@corpus-nolocal.example.org",
    "corpus-nodomain@",
    "corpus.spaces in@example.org",
    " corpus.trim@example.org ",
    "corpus.trailing.dot@example.org.",
    "corpus..dots@example.org",
    '"corpus quoted"@example.org',
    "corpus+tag@example.org",
    "corpus.ünïcode@exämple.org",
    "корпус.почта@пример.рф",
    "corpus\x00nul@example.org",
    "corpus\ud800surrogate@example.org",
    "corpus\u200bzero@example.org",
    "corpus\u202ertl@example.org",
    "corpus.injection'--@example.org",
    "<script>corpus.html</script>@example.org",
    "corpus.long" + "x" * 300 + "@example.org",
    "corpus.huge" + "y" * MEGABYTE + "@example.org",
    "corpus.newline\n@example.org",
    "corpus.ip@[192.168.0.1]",
    "corpus.comment(c)@example.org",
    "mailto:corpus.mailto@example.org",
    "CORPUS.UPPER@EXAMPLE.ORG",
    "corpus.fullwidth＠example.org",
    "corpus.tab\t@example.org",
    "corpus.a@b",
    "corpus.nul.end@example.org\x00",
    "corpus.many@example.org, corpus.other@example.org",
    "corpus.semicolon@example.org;DROP TABLE django_capi_outboxevent",
    "0cc175b9c0f1b6a831c399e269772661",  # an MD5: looks hashed, is not SHA-256
    # 64 characters, not hex. ("A" * 64 is hex: a caller's SHA-256, which Meta's SDK and
    # normalize pass on as it is, meta-capi.md §9.1.)
    "G" * 64,
]

PHONES = [
    "+1 (425) 123-4567",
    "+44 20 7946 0958",
    "+33 1 42 68 53 00",
    "+49 30 901820",
    "+81 3-3224-5000",
    "+86 10 6552 9000",
    "+91 22 2778 4000",
    "+55 11 3061 0000",
    "+7 495 697-03-49",
    "+61 2 9374 4000",
    "+27 21 403 2911",
    "+234 1 463 0001",
    "+971 4 330 0000",
    "+966 11 488 3800",
    "+52 55 5091 7000",
    "+39 06 6982",
    "+34 913 98 37 00",
    "+82 2-2100-2114",
    "+20 2 2795 1234",
    "+972 2-670-5555",
    "+90 312 419 0000",
    "+380 44 256 3333",
    "+62 21 344 1008",
    "+63 2 8527 0000",
    "+64 4 471 9999",
    "0044 20 7946 0958",
    "(425) 123-4567 ext. 89",
    "425.123.4567",
    "+1-800-FLOWERS",
    "+000 000 0000",
    "+999 123456789",
    "12",
    "+" + "9" * 300,
    "phone: unknown",
    "+١٢٣٤٥٦٧٨٩٠١",  # Arabic-Indic digits
    "+１ ４２５ １２３ ４５６７",  # fullwidth digits
    "+1 425 123 4567\x00",
    "+1 425 \ud800 123 4567",
    "+1 425 123 4567\u202e",
    "tel:+14251234567",
]

NAMES = [
    "Corpusname",
    "Jean-Corpus d'Arc",
    "Çörpüsñämé",
    "Корпусимя",
    "山田コーパス",
    "كوربوس",
    "קורפוס",
    "Corpus\u200bZero",
    "Corpus\u202eRtl",
    "Corpus\x00Nul",
    "Corpus\ud800Surrogate",
    "Robert'); DROP TABLE students;--",
    "<b>Corpusbold</b>",
    "Corpus" + "z" * MEGABYTE,
    "Corpus\n\r\t\x07\x1bControl",
]

DATES = [
    "1990-02-30",
    "1990-13-01",
    "0000-00-00",
    "9999-12-31",
    "1899-01-01",
    "19900102",
    "02/01/1990",
    "1990/01/02",
    "yesterday",
    "",
    "1990-01-02T00:00:00+25:00",
    "\x00",
    dt.date(1, 1, 1),
    dt.date(9999, 12, 31),
    dt.datetime(1990, 1, 2, tzinfo=dt.UTC),
    dt.datetime(2000, 1, 1),  # naive
    dt.datetime.max,
    dt.datetime.min,
    -1,
    0,
    10**20,
    1.5e300,
    "1700000000000",  # milliseconds as text
    "2026-02-29",
    "３１/１２/１９９０",
]

CURRENCIES = [
    "",
    "eur",
    "EURO",
    "€",
    "XXX",
    "ZZZ",
    "US$",
    "BTC",
    "e u",
    "EUR\x00",
    "EU\ud800",
    "ЕUR",  # Cyrillic Е
    "ＥＵＲ",
    "E" * 1000,
    123,
    None,
    ["EUR"],
    {"code": "EUR"},
    "<script>",
    "'; --",
]

NUMBERS = [
    math.nan,
    math.inf,
    -math.inf,
    Decimal("NaN"),
    Decimal("sNaN"),
    Decimal("Infinity"),
    Decimal("-Infinity"),
    Decimal("1E+999999"),
    Decimal("-0"),
    10**5000,
    -(10**5000),
    10**100,
    -1,
    -0.01,
    0,
    2**63,
    -(2**63) - 1,
    1e308,
    5e-324,
    True,
    False,
    "12.50",
    "12,50",
    "1e309",
    "NaN",
    "-inf",
    "١٢",
    "",
    None,
    complex(1, 1),
    Decimal("123456789012345678901234567890.123456789"),
]

TEXTS = [
    "\x00",
    "a\x00b",
    "\ud800",
    "\udfff",
    "a\udcffb",
    "\x01\x02\x03\x04\x05\x06\x07\x08\x0b\x0c\x0e\x1f\x7f",
    "\x80\x9f",
    "\r\n\r\n",
    "\u202eevil\u202c",
    "\u200b\u200c\u200d\u2060\ufeff",
    "\u2028\u2029",
    "مرحبا Hello שלום 你好 Привет",
    "Ｆｕｌｌｗｉｄｔｈ",
    "e\u0301\u0301\u0301\u0301\u0301\u0301",  # stacked combining marks
    "\U0001f4a9\U0001f600",
    "\uffff\ufffe",
    "' OR '1'='1",
    "'; DROP TABLE django_capi_outboxevent; --",
    "1; SELECT pg_sleep(10)",
    "\\x00\\u0000",
    "%00%ff%fe",
    "<script>alert(1)</script>",
    "</script><script>alert(1)</script>",
    "<!--<script>",
    '"><img src=x onerror=alert(1)>',
    "javascript:alert(1)",
    "${7*7}{{7*7}}{% debug %}",
    "{{ request.META }}",
    "\\u2028\\u2029",
    "`${alert(1)}`",
    "../../../../etc/passwd",
    "%s%s%s%n",
    "a" * MEGABYTE,
    "\x00" * 1000,
    "\ud800" * 1000,
    " ",
    "",
    "null",
    "undefined",
    "NaN",
]

STRUCTURES = [
    _deep_dict(5000),  # past any recursion limit, wherever it is walked from
    _deep_list(5000),
    _deep_dict(50),
    _cyclic_dict(),
    _cyclic_list(),
    {1: "int key", None: "none key"},
    {("tuple",): "tuple key"},
    {"\x00key": "nul key"},
    {"\ud800": "surrogate key"},
    {"k" * 10_000: "huge key"},
    {"set": {1, 2, 3}},
    {"bytes": b"\x00\xff"},
    {"object": object()},
    {"frozen": frozenset({"a"})},
    ["list", "instead", "of", "dict"],
    list(range(100_000)),
    {f"key{i}": i for i in range(10_000)},
    b"raw bytes",
    "a string, not a mapping",
]

CORPUS: list[tuple[str, Any]] = [
    *(("url", value) for value in URLS),
    *(("host", value) for value in HOSTS),
    *(("cookie", value) for value in COOKIE_VALUES),
    *(("cookie_header", value) for value in COOKIE_HEADERS),
    *(("email", value) for value in EMAILS),
    *(("phone", value) for value in PHONES),
    *(("name", value) for value in NAMES),
    *(("date", value) for value in DATES),
    *(("currency", value) for value in CURRENCIES),
    *(("number", value) for value in NUMBERS),
    *(("text", value) for value in TEXTS),
    *(("structure", value) for value in STRUCTURES),
]
