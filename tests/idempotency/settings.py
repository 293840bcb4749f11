"""Settings for server subprocesses in idempotency tests: the project plus the test-only views."""

from config.settings.test import *  # noqa: F401,F403

ROOT_URLCONF = "tests.idempotency.urls"
