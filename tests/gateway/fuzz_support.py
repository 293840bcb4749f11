"""Shared settings of the property tests (`tests/gateway/test_fuzz_*.py`).

Bounded so the suite stays fast: `FUZZ_EXAMPLES` (default 200) examples per property, no
example database written to disk (no generated files in the tree), no deadline (the CI machine
is shared and noisy). `FUZZ_EXAMPLES=20000 scripts/test -n 1 tests/gateway -k fuzz` for a long run.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "200")),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
