from django.contrib import admin
from django.urls import path

from adminsite.views import dashboard_view

urlpatterns = [
    path("", admin.site.admin_view(dashboard_view), name="admin-dashboard"),
]
