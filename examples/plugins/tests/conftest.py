"""Import ``avx_example_plugins`` from this source tree: the distribution need not be installed
to run its tests (``pytest examples/plugins/tests`` in the gateway's repository, or ``pytest``
in ``examples/plugins``)."""

from __future__ import annotations

import sys
from pathlib import Path

DIST = str(Path(__file__).resolve().parents[1])
if DIST not in sys.path:
    sys.path.insert(0, DIST)
