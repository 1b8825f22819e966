"""The examples in ``examples/`` run and pass their own ``--self-test``.

Each example starts its echo upstreams and a gateway on ephemeral 127.0.0.1 ports, sends real
requests through it and exits 0 after printing "self-test ok"; here each runs as its own process,
exactly as a user would start it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ["basic_gateway.py", "with_auth.py", "load_balancing.py"]


@pytest.mark.parametrize("example", EXAMPLES)
def test_example_self_test_passes(example: str) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / example), "--self-test"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 0, output
    assert "self-test ok" in result.stdout, output
