import io

import pytest
import yaml
from django.core.management import call_command

pytestmark = pytest.mark.django_db


def test_openapi_schema_is_valid_and_generated_without_warnings():
    # --fail-on-warn turns every drf-spectacular guess (an undescribed body, a colliding
    # component name) into a failure, so a new endpoint cannot silently publish a wrong schema.
    out = io.StringIO()
    call_command("spectacular", "--validate", "--fail-on-warn", stdout=out)

    schema = yaml.safe_load(out.getvalue())
    components = schema["components"]["schemas"]
    # nested InputSerializer/OutputSerializer classes are named after their view, not "Input"
    assert {"OrderCreateInput", "OrderOutput", "RevocationCreateInput"} <= set(components)
    assert "Input" not in components
    assert schema["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert schema["paths"]["/internal/revocations"]["post"]["security"] == [{"internalToken": []}]
