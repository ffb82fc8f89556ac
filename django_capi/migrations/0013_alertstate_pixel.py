"""Alerts per pixel: ``AlertState`` keeps its pixel in a column of its own, one row per
(kind, pixel).

The rows written before this migration name no pixel: the one "backlog" and "failure_rate"
rows judged the whole outbox, not any one pixel's events, so they cannot be handed to one
and are deleted. An incident still going on is raised again, for its pixel, by the next
check. Going back deletes the per-pixel rows for the same reason: the old schema keeps one
row per kind and the old code raises what is still going on.

Dropping ``kind``'s own uniqueness comes first and restoring it last, so that going back
restores it only once the per-pixel rows, which share their kinds, are gone.
"""

from django.db import migrations, models


def forget_alerts_without_pixel(apps, schema_editor):
    alert_state = apps.get_model("django_capi", "AlertState")
    alert_state.objects.using(schema_editor.connection.alias).filter(pixel_id="").delete()


def forget_alerts_per_pixel(apps, schema_editor):
    alert_state = apps.get_model("django_capi", "AlertState")
    alert_state.objects.using(schema_editor.connection.alias).all().delete()


class Migration(migrations.Migration):
    dependencies = [
        ("django_capi", "0012_mysql_exact_keys"),
    ]

    operations = [
        migrations.AlterField(
            model_name="alertstate",
            name="kind",
            field=models.CharField(max_length=32, verbose_name="kind"),
        ),
        migrations.AddField(
            model_name="alertstate",
            name="pixel_id",
            field=models.CharField(default="", max_length=32, verbose_name="pixel"),
            preserve_default=False,
        ),
        migrations.RunPython(forget_alerts_without_pixel, forget_alerts_per_pixel, elidable=False),
        migrations.AddConstraint(
            model_name="alertstate",
            constraint=models.UniqueConstraint(
                fields=("kind", "pixel_id"), name="capi_alert_unique_kind_pixel"
            ),
        ),
    ]
