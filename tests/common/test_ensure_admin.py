import io

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _no_admin_variables(monkeypatch):
    # The command reads settings (config/settings), never the process environment.
    monkeypatch.delenv("ADMIN_USERNAME", raising=False)
    monkeypatch.delenv("ADMIN_PASSWORD", raising=False)


def run_ensure_admin() -> str:
    out = io.StringIO()
    call_command("ensure_admin", stdout=out)
    return out.getvalue()


def test_creates_the_configured_admin_once(settings):
    settings.ADMIN_USERNAME = "root"
    settings.ADMIN_PASSWORD = "chosen-password-1"

    first = run_ensure_admin()
    second = run_ensure_admin()

    user = get_user_model().objects.get(username="root")
    assert user.is_superuser and user.check_password("chosen-password-1")
    assert "admin user created: root / chosen-password-1" in first
    assert "already present, nothing to do" in second
    assert get_user_model().objects.filter(is_superuser=True).count() == 1


def test_without_a_password_one_is_generated_and_printed(settings):
    settings.ADMIN_PASSWORD = ""

    output = run_ensure_admin()

    password = output.split("admin user created: admin / ", 1)[1].split(" ", 1)[0]
    assert len(password) >= 12
    assert get_user_model().objects.get(username="admin").check_password(password)
