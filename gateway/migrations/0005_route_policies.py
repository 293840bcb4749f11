from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("gateway", "0004_invalidation_event")]

    operations = [
        migrations.AddField(
            model_name="route",
            name="policies",
            field=models.JSONField(
                blank=True,
                default=dict,
                help_text="Rate limit, CORS, IP rules, header transforms (docs/gateway-policies.md), e.g. "
                '{"rate_limit": {"limit": 100, "window_seconds": 60, "key": "user"}}',
            ),
        ),
    ]
