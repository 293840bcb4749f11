"""Development and `scripts/run`: embedded defaults (SQLite, local memory, filesystem broker).

DEBUG is off unless asked for (`DEBUG=true`): this is the profile the run command uses, and the
product answers problem+json either way (SPEC §2). Without SECRET_KEY, a random key is generated
once per checkout under var/ and reused (sessions survive restarts, nothing to configure on a
fresh machine); a well-known key is never used. The dev payment secret exists only with DEBUG on
(SPEC §1); without it payment event intake answers 503 until PAYMENT_WEBHOOK_SECRET is set.
"""

import os
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured
from django.core.management.utils import get_random_secret_key

from config.env import env
from config.settings.base import *  # noqa: F401,F403
from config.settings.base import SECRET_KEY as _SECRET_KEY
from config.settings.base import VAR_DIR


def _checkout_secret_key(path: Path) -> str:
    """The key stored at `path`, created on first use.

    The web server, worker and beat start at the same time: the key is written to a private
    temporary file and linked into place, so every process ends up with the first one written.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(get_random_secret_key())
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass  # another process was first: use its key
        finally:
            temporary.unlink()
    key = path.read_text().strip()
    if not key:
        raise ImproperlyConfigured(f"{path} is empty: delete it (a new key is generated) or set SECRET_KEY.")
    return key


DEBUG = env.bool("DEBUG", default=False)
SECRET_KEY = _SECRET_KEY or _checkout_secret_key(Path(str(VAR_DIR)) / "secret_key")
if DEBUG:
    PAYMENT_WEBHOOK_SECRET = env("PAYMENT_WEBHOOK_SECRET", default="dev-payment-secret")
