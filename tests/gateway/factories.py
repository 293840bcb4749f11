"""factory_boy factories for the gateway's models.

Creating a route, service or target through these factories invalidates the route caches at
once (this process and, through Redis pub/sub, every gateway process of a transactional test),
as an admin save would after its commit.
"""

from __future__ import annotations

import factory

from gateway.models import Route, Service, ServiceTarget
from tests.support.gateway_server import routes_changed


def _routes_changed() -> None:
    from gateway.routing import route_cache_invalidate_now

    route_cache_invalidate_now()
    routes_changed()  # a server-process client waits until the server sees it


class _InvalidatingFactory(factory.django.DjangoModelFactory):
    class Meta:
        abstract = True

    @classmethod
    def _after_postgeneration(cls, instance, create, results=None):  # noqa: ANN001
        super()._after_postgeneration(instance, create, results)
        if create:
            _routes_changed()


class ServiceFactory(_InvalidatingFactory):
    """`ServiceFactory(targets=[server.url])`; without `targets`, one target on a discard port."""

    class Meta:
        model = Service
        django_get_or_create = ("name",)
        skip_postgeneration_save = True

    name = factory.Sequence(lambda n: f"service-{n}.test")
    enabled = True

    @factory.post_generation
    def targets(self, create, extracted, **kwargs):  # noqa: ANN001
        if not create:
            return
        urls = extracted if extracted is not None else ["http://127.0.0.1:9"]
        for url in urls:
            ServiceTarget.objects.get_or_create(service=self, url=url)


class ServiceTargetFactory(_InvalidatingFactory):
    class Meta:
        model = ServiceTarget

    service = factory.SubFactory(ServiceFactory, targets=[])
    url = factory.Sequence(lambda n: f"http://127.0.0.1:{20000 + n}")
    enabled = True


class RouteFactory(_InvalidatingFactory):
    """`RouteFactory(path="/users/{user_id}", methods=["GET"], service=service, auth_required=False)`."""

    class Meta:
        model = Route

    methods = factory.LazyFunction(lambda: ["GET"])
    path = factory.Sequence(lambda n: f"/resource-{n}/**")
    service = factory.SubFactory(ServiceFactory)
    auth_required = True
    enabled = True
