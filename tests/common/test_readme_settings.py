"""The README's settings table names every environment variable config/settings reads, and the
product contract it links to is in the repository."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# env("X", …), env.int("X", …), env.bool(\n    "X", …): the name is the first string argument.
_ENV_READ = re.compile(r"\benv(?:\.[a-z]+)?\(\s*[\"']([A-Z][A-Z0-9_]*)[\"']")


def _settings_reads() -> set[str]:
    names: set[str] = set()
    for path in (ROOT / "config" / "settings").glob("*.py"):
        if path.name == "test.py":
            continue
        names |= set(_ENV_READ.findall(path.read_text()))
    return names


def _readme_table_names() -> set[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return {name for row in rows for name in re.findall(r"`([A-Z][A-Z0-9_]*)`", row.split("|")[1])}


def test_the_pattern_finds_the_settings_reads():
    reads = _settings_reads()
    assert {
        "BIND",
        "WEB_WORKERS",
        "JWT_JWKS_URL",
        "ORDER_SESSION_DURATION_MINUTES",
        "JWT_DEV_KEY_ENABLED",
    } <= reads


def test_every_setting_read_is_in_the_readme_table():
    missing = _settings_reads() - _readme_table_names()
    assert not missing, f"add to the README settings table: {sorted(missing)}"


def test_the_readme_links_the_spec_inside_the_repository():
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)#]+)", readme)
    assert "docs/SPEC.md" in links
    for link in links:
        if not link.startswith("http"):
            assert (ROOT / link).exists(), f"broken link in README: {link}"
    assert "product contract" in (ROOT / "docs" / "SPEC.md").read_text().splitlines()[0]
