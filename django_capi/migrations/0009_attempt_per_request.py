"""One DeliveryAttempt per request instead of one per event and request.

The history written so far is kept: each old row (one event in one request) becomes a
request record of its own, linked to its event with the outcome it had.
"""

import django.db.models.deletion
from django.db import migrations, models

OUTCOMES = [
    ("delivered", "Delivered"),
    ("retry", "Will retry"),
    ("rate_limited", "Rate limited"),
    ("token_invalid", "Token or permission error"),
    ("rejected", "Rejected"),
    ("bisected", "Batch rejected; split to find the bad event"),
    ("failed", "Failed"),
]


def link_old_attempts(apps, schema_editor):
    """Set-based, so an outbox with millions of attempts migrates in two statements."""
    quote = schema_editor.quote_name
    attempt = apps.get_model("django_capi", "DeliveryAttempt")._meta.db_table
    link = apps.get_model("django_capi", "AttemptEvent")._meta.db_table
    outbox = apps.get_model("django_capi", "OutboxEvent")._meta.db_table
    # The models' own table names, quoted: nothing in these statements comes from input.
    # A cursor, not schema_editor.execute(): that one is for DDL, and refuses any statement
    # inside the migration's transaction on MySQL/MariaDB, which cannot roll DDL back.
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {quote(link)} (attempt_id, event_id, outcome) "  # noqa: S608
            f"SELECT id, event_id, outcome FROM {quote(attempt)}"
        )
        cursor.execute(
            f"UPDATE {quote(attempt)} SET pixel_id = "  # noqa: S608
            f"(SELECT o.pixel_id FROM {quote(outbox)} o WHERE o.id = {quote(attempt)}.event_id)"
        )


class Migration(migrations.Migration):
    dependencies = [
        ("django_capi", "0008_attempt_messages"),
    ]

    operations = [
        migrations.CreateModel(
            name="AttemptEvent",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                (
                    "outcome",
                    models.CharField(choices=OUTCOMES, max_length=16, verbose_name="outcome"),
                ),
                (
                    "attempt",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="links",
                        to="django_capi.deliveryattempt",
                    ),
                ),
                (
                    "event",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="+",
                        to="django_capi.outboxevent",
                    ),
                ),
            ],
            options={
                "verbose_name": "event of a delivery attempt",
                "verbose_name_plural": "events of delivery attempts",
            },
        ),
        migrations.AddField(
            model_name="deliveryattempt",
            name="pixel_id",
            field=models.CharField(blank=True, max_length=32, verbose_name="pixel"),
        ),
        migrations.AddField(
            model_name="outboxevent",
            name="last_attempt",
            field=models.ForeignKey(
                blank=True,
                db_constraint=False,
                db_index=False,
                editable=False,
                null=True,
                on_delete=django.db.models.deletion.DO_NOTHING,
                related_name="+",
                to="django_capi.deliveryattempt",
                verbose_name="last request",
            ),
        ),
        migrations.RunPython(link_old_attempts, migrations.RunPython.noop, elidable=True),
        migrations.RemoveIndex(model_name="deliveryattempt", name="capi_attempt_event"),
        migrations.RemoveField(model_name="deliveryattempt", name="event"),
    ]
