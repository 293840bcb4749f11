"""`config.settings.local` is what `scripts/run` serves with: it must start with nothing configured
and still never answer with Django's DEBUG pages.

Each case runs the real WSGI application (config/wsgi.py, what gunicorn serves) in a fresh
process with a clean environment, as on a fresh machine.
"""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONFIGURATION = {"DEBUG", "SECRET_KEY", "PAYMENT_WEBHOOK_SECRET", "DATABASE_URL", "REDIS_URL"}
CONFIGURATION |= {"CELERY_BROKER_URL", "DJANGO_SETTINGS_MODULE", "ALLOWED_HOSTS", "GATEHOUSE_VAR_DIR"}

PROBE = r"""
import io, json, sys
from config.wsgi import application
from django.conf import settings

def call(path, host):
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": "", "SERVER_NAME": "127.0.0.1",
               "SERVER_PORT": "8000", "HTTP_HOST": host, "wsgi.url_scheme": "http",
               "wsgi.input": io.BytesIO(), "wsgi.errors": sys.stderr}
    seen = {}
    start = lambda status, headers: seen.update(status=status, headers=dict(headers))
    body = b"".join(application(environ, start))
    return {"status": int(seen["status"][:3]), "content_type": seen["headers"].get("Content-Type"),
            "body": body.decode("utf-8", "replace")}

print(json.dumps({
    "debug": settings.DEBUG,
    "secret_key": settings.SECRET_KEY,
    "payment_secret": settings.PAYMENT_WEBHOOK_SECRET,
    "not_found": call("/no-such-thing", "127.0.0.1:8000"),
    "bad_host": call("/healthz", "evil.example"),
    "gateway_root": call("/gw", "127.0.0.1:8000"),
    "gateway_path": call("/gw/users/1", "127.0.0.1:8000"),
}))
"""


def run_local_profile(tmp_path: Path, **variables: str) -> dict:
    env = {key: value for key, value in os.environ.items() if key not in CONFIGURATION}
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings.local",
        GATEHOUSE_VAR_DIR=str(tmp_path / "var"),
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",  # not the checkout's db.sqlite3
        PYTHONPATH=str(ROOT),
        **variables,
    )
    done = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def assert_problem(answer: dict, status: int) -> None:
    assert answer["status"] == status, answer["body"][:300]
    assert answer["content_type"] == "application/problem+json", answer["body"][:300]
    for leak in ("Traceback", "urlpatterns", "URLconf", "ALLOWED_HOSTS", "<html"):
        assert leak not in answer["body"]


def test_run_profile_with_nothing_configured(tmp_path):
    # when the run command's settings start twice on a fresh machine
    first = run_local_profile(tmp_path)
    second = run_local_profile(tmp_path)

    # then DEBUG is off, and the secret key is generated once, kept private and reused
    assert first["debug"] is False
    key_file = tmp_path / "var" / "secret_key"
    assert first["secret_key"] == second["secret_key"] == key_file.read_text().strip()
    assert len(first["secret_key"]) >= 50
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    # no well-known dev secret without DEBUG: payment intake stays closed (503) until configured
    assert first["payment_secret"] == ""
    # and errors are problem+json
    assert_problem(first["not_found"], 404)
    assert_problem(first["bad_host"], 400)
    # `/gw` is served by the ASGI entrance only (config/asgi.py): the WSGI app knows no such path
    assert_problem(first["gateway_root"], 404)
    assert_problem(first["gateway_path"], 404)


def test_debug_profile_keeps_dev_values_and_still_answers_problem_json(tmp_path):
    answer = run_local_profile(tmp_path, DEBUG="true")

    assert answer["debug"] is True
    assert answer["payment_secret"] == "dev-payment-secret"
    assert_problem(answer["not_found"], 404)
    assert_problem(answer["bad_host"], 400)
    assert_problem(answer["gateway_path"], 404)


def test_a_configured_secret_key_is_used_and_nothing_is_written(tmp_path):
    answer = run_local_profile(tmp_path, SECRET_KEY="k" * 60)

    assert answer["secret_key"] == "k" * 60
    assert not (tmp_path / "var" / "secret_key").exists()


def test_the_run_commands_set_up_a_fresh_database_and_check_names_a_closed_route(tmp_path):
    # the database steps of scripts/run, on a fresh SQLite file (migrate runs the database checks
    # before any table exists; a check that reads routes must not stop it)
    env = {key: value for key, value in os.environ.items() if key not in CONFIGURATION}
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings.local",
        GATEHOUSE_VAR_DIR=str(tmp_path / "var"),
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        PYTHONPATH=str(ROOT),
    )

    def manage(*args: str) -> subprocess.CompletedProcess:
        done = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return done

    manage("migrate", "--noinput")
    manage("load_routes", "demo/routes.json")
    assert "gateway.W001" not in manage("check", "--database", "default").stderr
    # a route's policies written around validation: check names it, and migrate still runs
    manage("shell", "-c", "from gateway.models import Route; Route.objects.update(policies={'cors': 1})")
    warned = manage("check", "--database", "default").stderr
    assert "gateway.W001" in warned and "503 route-misconfigured" in warned
    assert "gateway.W001" in manage("migrate", "--noinput").stderr
