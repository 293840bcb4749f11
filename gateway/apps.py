from django.apps import AppConfig


class GatewayConfig(AppConfig):
    name = "gateway"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from common.metrics import register_scrape_collector
        from gateway import checks, schema  # noqa: F401  (system checks; OpenAPI auth extensions)
        from gateway.caching.registry import caches_subscribe
        from gateway.metrics import collect_cache_keys
        from gateway.services import jwks, rbac, revocation  # noqa: F401  (register their caches)

        caches_subscribe()
        register_scrape_collector(collect_cache_keys)

        from gateway.routing import resolver
        from gateway.services.invalidation import invalidation_subscribe

        invalidation_subscribe("routes", resolver.changed)
        from gateway.policies.registry import default_policies_check

        default_policies_check()
