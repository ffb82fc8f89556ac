import copy
from collections.abc import Iterator

import pytest
from django.db import connection

from django_capi import registry


@pytest.fixture
def isolated_registry() -> Iterator[None]:
    """Let a test register its own ModelEvents without leaking them into other tests."""
    saved = copy.copy(registry._registry)
    registry._registry.clear()
    registry._registry.update({model: list(events) for model, events in saved.items()})
    yield
    registry._registry.clear()
    registry._registry.update(saved)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # PostgreSQL-only tests run in the PostgreSQL pass (`make test-postgres`); on any other
    # database they fail loudly instead of silently passing or skipping.
    for item in items:
        if item.get_closest_marker("postgres"):
            item.fixturenames.append("require_postgres")


@pytest.fixture
def require_postgres() -> None:
    assert connection.vendor == "postgresql", "this test needs DATABASE_URL=postgres://…"
