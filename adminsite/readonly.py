"""Change pages that only show a record: no Save buttons, and a POST changes nothing."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect


class ReadOnlyChangeMixin(admin.ModelAdmin):
    """For records changed only through the list's actions (services with compare-and-set).

    The stock page would show Save and, on POST, write every field of the instance it loaded,
    over a status the sweep or the relay may have changed in between.
    """

    read_only_message = "This page only shows the record: use the actions of the list to change it."

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        if request.method == "POST":
            self.message_user(request, self.read_only_message, messages.WARNING)
            return HttpResponseRedirect(request.path)
        context = {
            "show_save": False,
            "show_save_and_continue": False,
            "show_save_and_add_another": False,
            **(extra_context or {}),
        }
        return super().change_view(request, object_id, form_url, context)
