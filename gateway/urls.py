from django.urls import include, path

app_name = "gateway"
# `/gw` itself is not a Django URL: the production server (config/asgi.py) sends it to the asyncio
# gateway (gateway/asgi.py) before Django is involved.
urlpatterns = [
    path("internal/", include("gateway.internal_apis")),  # token service / IAM pushes (auth)
]
