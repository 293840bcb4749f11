"""WEB_GC_THRESHOLDS: parsed strictly, refused by the server command before any worker starts,
applied (freeze + thresholds) in a worker process."""

from __future__ import annotations

import subprocess
import sys

import pytest

from config.server.gc_tuning import parse_thresholds
from tests.support.servers import server_command


@pytest.mark.parametrize(
    ("value", "expected"),
    [("50000,20,100", (50000, 20, 100)), (" 700,10,10 ", (700, 10, 10)), ("", None), ("  ", None)],
)
def test_thresholds_parse(value, expected):
    assert parse_thresholds(value) == expected


@pytest.mark.parametrize("value", ["50000", "1,2", "1,2,3,4", "a,b,c", "0,10,10", "-1,10,10"])
def test_bad_thresholds_are_refused(value):
    with pytest.raises(ValueError, match="WEB_GC_THRESHOLDS"):
        parse_thresholds(value)


def test_gc_tune_freezes_start_up_and_sets_the_thresholds():
    code = (
        "import gc; from config.server.gc_tuning import gc_tune;"
        "before = gc.get_freeze_count();"
        "assert gc_tune('12345,6,7') == (12345, 6, 7);"
        "assert gc.get_threshold() == (12345, 6, 7), gc.get_threshold();"
        "assert gc.get_freeze_count() > before;"
        "print('ok')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_the_server_command_refuses_bad_thresholds_before_starting(tmp_path):
    import os

    env = {**os.environ, "WEB_GC_THRESHOLDS": "lots"}
    result = subprocess.run(server_command(1), env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "WEB_GC_THRESHOLDS must be three positive integers" in result.stderr
