"""What a backup of the test database would hold, for tests that look for leaked data."""

from django.db import connection


def dump_database() -> str:
    """Every value of every table of the default database, as text, one row a line."""
    lines = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names(cursor):
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")  # noqa: S608
            lines.extend(repr(row) for row in cursor.fetchall())
    return "\n".join(lines)
