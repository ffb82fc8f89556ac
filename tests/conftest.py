from collections.abc import Iterator

import pytest
from django.db import connection

from django_capi import registry


@pytest.fixture
def isolated_registry() -> Iterator[None]:
    """Let a test register its own ModelEvents without leaking them into other tests."""
    with registry.isolated():
        yield


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # PostgreSQL-only tests run in the PostgreSQL pass (`make test-postgres`), row-lock tests
    # there and on MariaDB (`make test-matrix`); on any other database they fail loudly
    # instead of silently passing or skipping.
    for item in items:
        if item.get_closest_marker("postgres"):
            item.fixturenames.append("require_postgres")
        if item.get_closest_marker("rowlocks"):
            item.fixturenames.append("require_row_locks")


@pytest.fixture
def require_postgres() -> None:
    assert connection.vendor == "postgresql", "this test needs DATABASE_URL=postgres://…"


@pytest.fixture
def require_row_locks() -> None:
    assert connection.vendor in ("postgresql", "mysql"), (
        "this test needs a database with row locks: DATABASE_URL=postgres://… or mysql://…"
    )


@pytest.fixture(scope="session", autouse=True)
def _no_stray_connections(django_db_setup, django_db_blocker):
    """Processes the tests start (drainers, a killed one, a Celery worker) may leave a
    PostgreSQL session behind for a moment; end them, so the test databases can be dropped."""
    yield
    from django.db import connections

    with django_db_blocker.unblock():
        for alias in connections:
            db = connections[alias]
            if (
                db.vendor != "postgresql"
                or db.settings_dict["NAME"] != db.settings_dict["TEST"]["NAME"]
            ):
                # Only the test databases this run made: a run that needs no second alias
                # (one module, say) never creates its database, and connecting to it fails.
                continue
            with db.cursor() as cursor:
                cursor.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
