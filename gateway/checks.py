"""System checks that read the database (`manage.py check --database default`)."""

from __future__ import annotations

from typing import Any

from django.core.checks import Error, Tags, register


@register(Tags.database)
def route_policies_check(app_configs: Any = None, databases: Any = None, **_: Any) -> list[Error]:
    """Routes whose stored policies do not validate (written around admin and load_routes, or
    stored before a rule was tightened): the gateway closes them (503 route-misconfigured)."""
    if not databases or "default" not in databases:
        return []
    from gateway.models import Route
    from gateway.policies.registry import policies_errors_text

    errors = []
    for route in Route.objects.only("id", "path", "policies").order_by("id"):
        problems = policies_errors_text(route.policies)
        if problems:
            errors.append(
                Error(
                    f"route #{route.id} ({route.path}): its policies are not valid: {'; '.join(problems)}",
                    hint="The gateway answers 503 route-misconfigured on it until the policies are "
                    "corrected in admin or with load_routes.",
                    obj=route,
                    id="gateway.E001",
                )
            )
    return errors
