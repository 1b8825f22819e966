"""twistd with the ``bench-noop`` plugin (bench/noop_plugin.py) registered in-process, for the
plugin row of bench/run.py; nothing is installed into the venv.

    .venv/bin/python bench/twistd_with_plugin.py --pidfile= -n avx-gateway --config FILE

Takes exactly twistd's arguments. Only for ``workers = 1``: worker processes would not inherit
the registration.
"""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = str(Path(__file__).resolve().parent)
sys.path.insert(0, BENCH)

from noop_plugin import NAME, NoopPlugin  # noqa: E402

# bench/'s other modules (configs, memory, render, ...) must not shadow anything the gateway
# imports: bench/ leaves the path again once the plugin is imported.
sys.path[:] = [p for p in sys.path if p not in (BENCH, "")]

from avx_twisted import plugins  # noqa: E402

plugins.register(NAME, NoopPlugin)

if __name__ == "__main__":
    from twisted.scripts.twistd import run

    sys.argv[0] = "twistd"
    run()
