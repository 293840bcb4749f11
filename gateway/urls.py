from django.urls import include, path, re_path

from gateway.views import gateway_view

app_name = "gateway"
# `/gw` and everything below it. Under the production server config/wsgi.py sends these paths
# to the lean WSGI entrance before Django's URL resolver; this pattern serves the same handler
# to the test client and to any server running the plain Django application.
urlpatterns = [
    re_path(r"^gw(?:/(?P<path>.*))?$", gateway_view, name="proxy"),
    path("internal/", include("gateway.internal_apis")),  # token service / IAM pushes (auth)
]
