from django.apps import AppConfig


class OutboxConfig(AppConfig):
    name = "outbox"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from common.metrics import register_scrape_collector
        from outbox.metrics import collect_backlog

        register_scrape_collector(collect_backlog)
