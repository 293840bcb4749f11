"""schemathesis, every check, against the project under its production server (/api/schema).

Bounded (examples per operation, fixed seed) so a run stays well under two minutes; the tokens
is real (the test token service). /internal (the token service's push endpoints) runs with the
internal token; its cross-field rules (user_id or all: true; expires_at or ttl) are in its schema.
"""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.django_db(transaction=True)

ST = Path(sys.executable).with_name("st")
CONFIG = Path(__file__).with_name("schemathesis.toml")
MAX_EXAMPLES = "30"


def _run(schema_url: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(ST),
            "--config-file",
            str(CONFIG),
            "run",
            schema_url,
            "--checks",
            "all",
            "--max-examples",
            MAX_EXAMPLES,
            "--seed",
            "20261207",
            "--workers",
            "1",
            "--request-timeout",
            "10",
            "--no-color",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=150,
        cwd=cwd,  # its cache directory stays out of the checkout
    )


INTERNAL_TOKEN = "schemathesis-internal-token"


def test_api_passes_every_schemathesis_check(token_service, gateway_process_factory, tmp_path):
    base = gateway_process_factory({**token_service.env, "GATEWAY_INTERNAL_TOKEN": INTERNAL_TOKEN})
    token = token_service.token(sub="schemathesis", tenant_id="t-st", expires_in=900)
    schema = tmp_path / "schema.json"
    schema.write_bytes(urllib.request.urlopen(f"{base}/api/schema?format=json", timeout=10).read())

    api = _run(
        str(schema),
        "--url",
        base,
        "--include-path-regex",
        "^/api/",
        "-H",
        f"Authorization: Bearer {token}",
        cwd=tmp_path,
    )
    assert api.returncode == 0, api.stdout[-20000:] + api.stderr[-5000:]

    internal = _run(
        str(schema),
        "--url",
        base,
        "--include-path-regex",
        "^/internal/",
        "-H",
        f"Authorization: Bearer {INTERNAL_TOKEN}",
        cwd=tmp_path,
    )
    assert internal.returncode == 0, internal.stdout[-20000:] + internal.stderr[-5000:]
