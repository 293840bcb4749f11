from django.apps import AppConfig


class SagasConfig(AppConfig):
    name = "sagas"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from common.metrics import register_scrape_collector
        from sagas import definitions, placement  # noqa: F401  (registers the saga types)
        from sagas.metrics import collect_sagas

        register_scrape_collector(collect_sagas)
        from gateway.services.invalidation import invalidation_subscribe

        invalidation_subscribe("routes", placement.inventory_targets_forget, start_listener=False)
