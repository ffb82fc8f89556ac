"""Room for the drain's updates on PostgreSQL: fewer indexes and half-full pages.

A claim writes only unindexed columns (the lease and the attempt count), so PostgreSQL can
update each row in place, a HOT update with no index entry, but only if the new version fits
on the row's page. Rows are about 2 kB (the payload), so a full page has no room and every
claim would rewrite each row elsewhere plus an entry in every index. ``fillfactor = 50``
leaves half of each page for those versions; the write-back's new version then also lands on
the same page once the claim's old one is pruned, so the table does not bloat with updates.
Only new pages are filled to 50 %: existing rows keep their pages.

Every index of the table costs each checkout INSERT and each write-back an insertion, so the
outbox keeps none that nothing reads: ``capi_outbox_source`` (``source_type``, ``source_id``)
goes, and the ``source_type`` foreign key gets no index of its own. The rows of one object
are found through ``capi_outbox_source_id`` (an object's id matches a handful of rows);
deleting a content type, which sets its rows' ``source_type`` to NULL, scans the table
instead, and that happens when a model is removed from a project, not in a shop's day.
"""

import django.db.models.deletion
from django.db import migrations, models


def _set_fillfactor(schema_editor, outbox, value):
    if schema_editor.connection.vendor != "postgresql":
        return  # no such storage parameter elsewhere; SQLite and MySQL are unaffected
    table = schema_editor.quote_name(outbox._meta.db_table)
    setting = f"SET (fillfactor = {int(value)})" if value else "RESET (fillfactor)"
    schema_editor.execute(f"ALTER TABLE {table} {setting}")


def leave_room(apps, schema_editor):
    _set_fillfactor(schema_editor, apps.get_model("django_capi", "OutboxEvent"), 50)


def fill_pages(apps, schema_editor):
    _set_fillfactor(schema_editor, apps.get_model("django_capi", "OutboxEvent"), None)


def keep_fk_index(apps, schema_editor):
    """Nothing to do forwards; see drop_fk_index."""


def drop_fk_index(apps, schema_editor):
    # MySQL/MariaDB: InnoDB needs an index for the source_type foreign key, so removing
    # capi_outbox_source made Django add one on source_type_id alone. Once capi_outbox_source
    # is back it is redundant, and the reversed AlterField below would create another index
    # under the same name (error 1061): drop it first.
    if schema_editor.connection.vendor != "mysql":
        return
    outbox = apps.get_model("django_capi", "OutboxEvent")
    table = outbox._meta.db_table
    with schema_editor.connection.cursor() as cursor:
        constraints = schema_editor.connection.introspection.get_constraints(cursor, table)
    for name, constraint in constraints.items():
        if constraint["index"] and constraint["columns"] == ["source_type_id"]:
            quote = schema_editor.quote_name
            schema_editor.execute(f"DROP INDEX {quote(name)} ON {quote(table)}")


class Migration(migrations.Migration):
    dependencies = [
        ("contenttypes", "0002_remove_content_type_name"),
        ("django_capi", "0009_attempt_per_request"),
    ]

    operations = [
        migrations.AlterField(
            model_name="outboxevent",
            name="source_type",
            field=models.ForeignKey(
                blank=True,
                db_index=False,
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="+",
                to="contenttypes.contenttype",
            ),
        ),
        # DDL on MySQL, which cannot run it in the transaction RunPython would be wrapped in.
        migrations.RunPython(keep_fk_index, drop_fk_index, atomic=False, elidable=False),
        migrations.RemoveIndex(model_name="outboxevent", name="capi_outbox_source"),
        migrations.RunPython(leave_room, fill_pages, elidable=False),
    ]
