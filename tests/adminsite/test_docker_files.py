"""The Docker files give a stack that comes up healthy from nothing (no engine here: parsed).

What `docker compose config` would check structurally, asserted on the parsed file: every app
service waits for healthy PostgreSQL and Redis and for the one-shot `migrate`; healthchecks on
db, redis, web and worker; the bootstrap (migrations, demo routes, admin user); the settings the
orders API needs; and a build context that leaves the host's state out.
"""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())  # merge keys (<<) resolved


def test_app_services_start_after_a_successful_migrate_and_healthy_stores():
    services = compose()["services"]

    for name in ("web", "worker", "beat"):
        depends = services[name]["depends_on"]
        assert depends["migrate"] == {"condition": "service_completed_successfully"}, name
        assert depends["db"] == {"condition": "service_healthy"}, name
        assert depends["redis"] == {"condition": "service_healthy"}, name
    assert services["migrate"]["depends_on"] == {
        "db": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
    }
    assert services["migrate"]["restart"] == "no"


def test_db_redis_web_and_worker_have_healthchecks():
    services = compose()["services"]

    assert "pg_isready" in services["db"]["healthcheck"]["test"]
    assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert "/healthz" in " ".join(services["web"]["healthcheck"]["test"])
    assert "inspect ping" in " ".join(services["worker"]["healthcheck"]["test"])


def test_migrate_bootstraps_schema_demo_routes_and_an_admin_user():
    script = " ".join(compose()["services"]["migrate"]["command"])

    assert script.index("migrate --noinput") < script.index("load_routes") < script.index("ensure_admin")
    assert "http://upstream:8001" in script
    assert (ROOT / "demo" / "routes.json").read_text().count("http://127.0.0.1:8001") == 1
    assert "upstream" in compose()["services"]


def test_web_runs_scripts_serve_and_has_the_settings_the_orders_api_needs():
    services = compose()["services"]
    environment = services["web"]["environment"]
    dockerfile = (ROOT / "Dockerfile").read_text()

    assert "command" not in services["web"]  # the image's CMD
    assert 'CMD ["bash", "scripts/serve"]' in dockerfile
    assert environment["BIND"] == "0.0.0.0:8000"
    for name in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "SECRET_KEY", "PAYMENT_WEBHOOK_SECRET"):
        assert environment[name], name
    assert "JWT_JWKS_URL" in environment  # unset: dev tokens; set: a real token service
    assert environment == {**services["worker"]["environment"], "BIND": "0.0.0.0:8000"}


def test_build_context_leaves_host_state_out():
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }

    for entry in (".venv", "db.sqlite3", "var/", ".git", "**/__pycache__"):
        assert entry in ignored, entry
