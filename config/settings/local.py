"""Development: embedded defaults (SQLite, local memory, filesystem broker) unless configured."""

from config.env import env
from config.settings.base import *  # noqa: F401,F403
from config.settings.base import SECRET_KEY as _SECRET_KEY

DEBUG = env.bool("DEBUG", default=True)
SECRET_KEY = _SECRET_KEY or "dev-only-insecure-key-do-not-use-in-production"
PAYMENT_WEBHOOK_SECRET = env("PAYMENT_WEBHOOK_SECRET", default="dev-payment-secret")
