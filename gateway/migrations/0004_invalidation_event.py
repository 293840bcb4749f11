from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("gateway", "0003_routes_version")]

    operations = [
        migrations.CreateModel(
            name="InvalidationEvent",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("kind", models.CharField(max_length=20)),
                ("payload", models.JSONField(default=dict)),
                ("origin", models.CharField(max_length=64)),
                ("created_at", models.DateTimeField(db_index=True)),
            ],
            options={"db_table": "gateway_invalidation_event"},
        ),
    ]
