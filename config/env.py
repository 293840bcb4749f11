"""The one place that reads the process environment (12-factor)."""

from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
# A local .env is convenient in development; production passes real variables.
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)
