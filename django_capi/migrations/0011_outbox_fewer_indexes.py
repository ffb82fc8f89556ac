"""Fewer index entries per checkout INSERT and per delivered write-back.

Every index of the outbox costs each checkout INSERT an entry, and each write-back that
changes ``status`` (never a HOT update on PostgreSQL) an entry in every index whose condition
the new version meets. Two indexes held every row:

- ``capi_outbox_event_id``: the unique constraint now leads with ``event_id`` (event id,
  pixel, event name), so it answers every lookup by event id, alone or with its pixel;
- ``capi_outbox_status_created`` (status, created_at): each status has a partial index of its
  own rows instead (pending: ``capi_outbox_due``; delivered; failed; and, added here,
  ``capi_outbox_failed_cancelled`` by (status, created_at), few rows), which the counts per
  status and the admin's status filter read.

MySQL and MariaDB ignore index conditions, so there ``capi_outbox_failed_cancelled`` is an index of
every row by (status, created_at): the same index as the one removed, which finds the pending
rows there. It is created before the old one goes, and the new unique constraint before
``capi_outbox_event_id`` goes, so no lookup is ever left without an index (MySQL cannot run
them in one transaction).
"""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("contenttypes", "0002_remove_content_type_name"),
        ("django_capi", "0010_outbox_hot_updates"),
    ]

    operations = [
        migrations.AddIndex(
            model_name="outboxevent",
            index=models.Index(
                condition=models.Q(("status__in", ["failed", "cancelled"])),
                fields=["status", "created_at"],
                name="capi_outbox_failed_cancelled",
            ),
        ),
        migrations.RemoveIndex(model_name="outboxevent", name="capi_outbox_status_created"),
        # The same name: the old constraint must go before the new one can be created.
        migrations.RemoveConstraint(model_name="outboxevent", name="capi_outbox_unique_event"),
        migrations.AddConstraint(
            model_name="outboxevent",
            constraint=models.UniqueConstraint(
                fields=("event_id", "pixel_id", "event_name"), name="capi_outbox_unique_event"
            ),
        ),
        migrations.RemoveIndex(model_name="outboxevent", name="capi_outbox_event_id"),
    ]
