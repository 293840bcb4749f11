import os

from django.conf import settings


def test_settings_and_environment_agree_on_the_redis_database():
    # Server subprocesses read the environment; the test process reads settings: they must match,
    # or a test and the gateway process it started would use different Redis databases.
    assert os.environ["REDIS_URL"] == settings.REDIS_URL
    assert settings.CACHES["default"]["LOCATION"] == os.environ["REDIS_URL"]
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker:
        assert os.environ["GATEHOUSE_REDIS_DB_FOR_WORKER"] == worker
