"""Settings for benchmarks/gateway.py: production settings plus the benchmark-only contenders."""

from config.settings.production import *  # noqa: F401,F403

ROOT_URLCONF = "benchmarks.urls"
LOGGING["root"]["level"] = "WARNING"  # noqa: F405  (a log line per request would measure the logger)
INSTALLED_APPS = [*INSTALLED_APPS, "revproxy"]  # noqa: F405  (its AppConfig fills settings.REVPROXY)
