from django.apps import AppConfig


class AdminSiteConfig(AppConfig):
    """The staff site: Gatehouse branding, second-precise times and the health dashboard."""

    name = "adminsite"
    verbose_name = "Staff site"

    def ready(self) -> None:
        from django.contrib import admin

        admin.site.site_header = "Gatehouse"
        admin.site.site_title = "Gatehouse admin"
        admin.site.index_title = "Routes, orders and events"
        # "View site" of the stock admin points at "/", which is the gateway's JSON 404 here.
        admin.site.site_url = "/admin/dashboard/"
