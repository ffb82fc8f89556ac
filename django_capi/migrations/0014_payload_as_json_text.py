"""The payload kept as the text written (``json`` on PostgreSQL, was ``jsonb``), and which match
keys each row has in a column of its own (``match_keys``), for the health page.

On PostgreSQL changing the column's type rewrites the table under an exclusive lock, and
filling ``match_keys`` updates every row: on a large outbox run it when the shop is quiet,
or purge delivered rows first (``capi_purge``). Stop processes running older code first:
they read the payload as ``jsonb`` text and fail on ``json``. Other databases keep JSON as
text already; there only ``match_keys`` is added and filled.
"""

from django.db import migrations, models
from django.db.models import Case, Value, When

import django_capi.models

# The keys and their order as this migration fills them (constants.MATCH_KEYS, append-only).
MATCH_KEYS = ("em", "ph", "external_id", "fbc", "fbp", "client_ip_address", "client_user_agent")


def fill_match_keys(apps, schema_editor):
    outbox_event = apps.get_model("django_capi", "OutboxEvent")
    bits = [
        Case(When(payload__user_data__has_key=key, then=Value(1 << bit)), default=Value(0))
        for bit, key in enumerate(MATCH_KEYS)
    ]
    total = bits[0]
    for bit in bits[1:]:
        total = total + bit
    outbox_event.objects.using(schema_editor.connection.alias).update(match_keys=total)


class Migration(migrations.Migration):
    dependencies = [
        ("django_capi", "0013_alertstate_pixel"),
    ]

    operations = [
        migrations.AddField(
            model_name="outboxevent",
            name="match_keys",
            field=models.PositiveSmallIntegerField(
                db_default=0, default=0, editable=False, verbose_name="match keys"
            ),
        ),
        # While the payload is still jsonb: PostgreSQL's has_key (``?``) needs it.
        migrations.RunPython(fill_match_keys, migrations.RunPython.noop, elidable=True),
        migrations.AlterField(
            model_name="outboxevent",
            name="payload",
            field=django_capi.models.PayloadField(blank=True, default=dict, verbose_name="payload"),
        ),
    ]
