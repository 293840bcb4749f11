"""System checks that read the database (`manage.py check --database default`)."""

from __future__ import annotations

from typing import Any

from django.core import checks
from django.db import DatabaseError, connections


@checks.register(checks.Tags.database)
def route_policies_check(app_configs: Any = None, databases: Any = None, **_: Any) -> list[checks.Warning]:
    """Routes whose stored policies do not validate (written around admin and load_routes, or
    stored before a rule was tightened): the gateway closes them (503 route-misconfigured).

    A warning, not an error: `migrate` runs the database checks first, and an error would stop
    the very migration that may be needed. Before the table exists there is nothing to read."""
    if not databases or "default" not in databases:
        return []
    from gateway.models import Route
    from gateway.policies.registry import stored_policies_errors

    try:
        if Route._meta.db_table not in connections["default"].introspection.table_names():
            return []
        routes = list(Route.objects.only("id", "path", "policies").order_by("id"))
    except DatabaseError:
        return []  # the database checks of other apps say it is unreachable
    warnings = []
    for route in routes:
        problems = stored_policies_errors(route.policies)
        if problems:
            warnings.append(
                checks.Warning(
                    f"route #{route.id} ({route.path}): its policies are not valid: {'; '.join(problems)}",
                    hint="The gateway answers 503 route-misconfigured on it until the policies are "
                    "corrected in admin or with load_routes.",
                    obj=route,
                    id="gateway.W001",
                )
            )
    return warnings
