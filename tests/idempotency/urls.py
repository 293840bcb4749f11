from django.urls import path

from config.urls import urlpatterns as project_urlpatterns
from tests.idempotency import views

urlpatterns = [
    path("t/things", views.ThingCreateApi.as_view()),
    path("t/public-things", views.PublicThingCreateApi.as_view()),
    path("t/optional-things", views.OptionalThingCreateApi.as_view()),
    *project_urlpatterns,
]
