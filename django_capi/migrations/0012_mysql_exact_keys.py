"""Exact comparison of the outbox's identity columns on MySQL and MariaDB.

Their default collations (``utf8mb4_general_ci``, ``utf8mb4_unicode_ci``, ``utf8mb4_0900_ai_ci``)
ignore case and accents, and the PAD SPACE ones (even ``utf8mb4_bin``) ignore trailing spaces,
so the unique key (pixel, event name, event id) took ``Order-1`` and ``order-1``, or ``x`` and
``x ``, for one event: ``INSERT IGNORE`` then dropped the second as a duplicate that Meta, which
compares ids exactly, would have counted. The key columns, the source object's id (the admin's
exact search) and every ``pixel_id`` (compared with each other across tables: one collation for
all of them, or MySQL refuses the comparison) get a binary NO PAD collation of their own
character set: ``*_nopad_bin`` on MariaDB, ``utf8mb4_0900_bin`` on MySQL 8.

Only the database changes, not the models: a collation name is vendor-specific, and SQLite and
PostgreSQL already compare these columns byte by byte. A later migration that alters one of
these columns would restore the table's default collation; the system check
``django_capi.W008`` says so. The reverse gives the columns back the table's default.
"""

from django.db import migrations

#: The columns compared for identity, per model.
COLUMNS = {
    "OutboxEvent": ("pixel_id", "event_name", "event_id", "source_id"),
    "DeliveryAttempt": ("pixel_id",),
    "PixelState": ("pixel_id",),
}


def exact_collation(cursor, charset):
    """The first collation of ``charset`` that compares bytes without padding, or its plain
    ``_bin`` one (exact but for trailing spaces) on a server that has none."""
    candidates = [f"{charset}_nopad_bin", "utf8mb4_0900_bin", f"{charset}_bin"]
    cursor.execute(
        "SELECT COLLATION_NAME FROM information_schema.COLLATIONS "
        "WHERE CHARACTER_SET_NAME = %s AND COLLATION_NAME IN (%s, %s, %s)",
        [charset, *candidates],
    )
    available = {name for (name,) in cursor.fetchall()}
    return next((name for name in candidates if name in available), None)


def _fields(apps, schema_editor):
    for model_name, names in COLUMNS.items():
        model = apps.get_model("django_capi", model_name)
        for name in names:
            yield model, model._meta.get_field(name)


def _with_collation(field, collation):
    clone = field.clone()
    clone.db_collation = collation
    clone.set_attributes_from_name(field.name)
    clone.model = field.model
    return clone


def make_exact(apps, schema_editor):
    connection = schema_editor.connection
    if connection.vendor != "mysql":
        return  # SQLite and PostgreSQL compare these columns exactly already
    for model, field in _fields(apps, schema_editor):
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT CHARACTER_SET_NAME FROM information_schema.COLUMNS "
                "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s AND COLUMN_NAME = %s",
                [model._meta.db_table, field.column],
            )
            (charset,) = cursor.fetchone()
            collation = exact_collation(cursor, charset)
        if collation is not None:
            schema_editor.alter_field(model, field, _with_collation(field, collation))


def restore_default(apps, schema_editor):
    if schema_editor.connection.vendor != "mysql":
        return
    for model, field in _fields(apps, schema_editor):
        # A MODIFY without COLLATE takes the table's default, as the column was created.
        schema_editor.alter_field(model, _with_collation(field, "binary"), field)


class Migration(migrations.Migration):
    dependencies = [("django_capi", "0011_outbox_fewer_indexes")]

    # DDL: MySQL has no transactional DDL, and Django refuses it inside the transaction that
    # RunPython would otherwise be wrapped in there.
    operations = [migrations.RunPython(make_exact, restore_default, atomic=False, elidable=False)]
