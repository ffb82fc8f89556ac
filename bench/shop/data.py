"""Deterministic, varied customers and carts: the same orders for django-capi and the SDK."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

FIRST = ["Mary", "José", "Zoë", "John", "Anna-Lena", "Li", "Olivia", "Noah", "Émile", "Ava"]
LAST = ["Smith", "García", "O'Brien", "Müller", "Nguyen", "Rossi", "Kowalski", "Dubois"]
PLACES = [
    ("New York", "NY", "10001"),
    ("San Francisco", "California", "94103-1234"),
    ("Austin", "TX", "73301"),
    ("Seattle", "Washington", "98101"),
    ("Boston", "MA", "02108"),
]
PRODUCTS = [(f"SKU-{n:04d}", Decimal(f"{5 + n % 40}.{n % 100:02d}")) for n in range(200)]
USER_AGENT = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)


def order_columns(n: int, *, status: str = "paid") -> dict[str, Any]:
    """The columns of the n-th order of the bench shop (a US customer paying 1-3 products)."""
    first, last = FIRST[n % len(FIRST)], LAST[n % len(LAST)]
    city, state, zip_code = PLACES[n % len(PLACES)]
    items = []
    for k in range(1 + n % 3):
        sku, price = PRODUCTS[(n * 7 + k * 13) % len(PRODUCTS)]
        items.append({"id": sku, "quantity": 1 + (n + k) % 2, "price": str(price)})
    total = sum(Decimal(item["price"]) * item["quantity"] for item in items)
    return {
        "customer_id": f"cust-{n % 5000}",
        "email": f" {first.replace(' ', '')}.{last}{n}@Example.COM ".replace("'", ""),
        "phone": f"(415) 555-{n % 10000:04d}",
        "first_name": first,
        "last_name": last,
        "city": city,
        "state": state,
        "zip_code": zip_code,
        "country": "US",
        "status": status,
        "total": total,
        "currency": "USD",
        "items": items,
        "ip": f"203.0.{n % 256}.{n % 253 + 1}",
        "user_agent": USER_AGENT,
        "fbp": f"fb.1.1700000000000.{1000000000 + n}",
        "fbc": f"fb.1.1700000000000.IwAR{n:08d}" if n % 3 == 0 else "",
    }


def typical_customer(n: int = 0) -> dict[str, str]:
    """Raw ``user_data`` of one customer as a shop holds it (before normalization)."""
    columns = order_columns(n)
    return {
        "em": columns["email"],
        "ph": columns["phone"],
        "fn": columns["first_name"],
        "ln": columns["last_name"],
        "ct": columns["city"],
        "st": columns["state"],
        "zp": columns["zip_code"],
        "country": columns["country"],
        "external_id": columns["customer_id"],
    }
