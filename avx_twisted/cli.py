"""The ``avx-gateway`` command: ``run``, ``demo``, ``check``, ``version``, ``schema``, ``hash``.

``run`` and ``demo`` run ``twistd -n avx-gateway`` in this process (the same plugin, options and
checks as ``twistd avx-gateway``, which keeps working); ``check`` runs every start-up check.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from typing import Sequence

DEFAULT_CONFIG = os.environ.get("AVX_GATEWAY_CONFIG", "config/gateway.toml")


def demo_config() -> str:
    """The path of the demo configuration shipped in the package."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo.toml")


def twistd_argv(
    config: str, demo: bool = False, logfile: str | None = None, pidfile: str = ""
) -> list[str]:
    """The twistd command line ``run`` executes."""
    argv = ["twistd", "-n", f"--pidfile={pidfile}"]
    if logfile:
        argv.append(f"--logfile={logfile}")
    argv += ["avx-gateway", "--config", config]
    if demo:
        argv.append("--demo")
    return argv


def _run_twistd(argv: list[str]) -> int:
    from twisted.scripts.twistd import run

    sys.argv = argv
    try:
        run()
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="avx-gateway", description="An API gateway and reverse proxy on Twisted."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    run = commands.add_parser("run", help="run the gateway in the foreground")
    run.add_argument("-c", "--config", default=DEFAULT_CONFIG, help="the TOML configuration")
    run.add_argument("--demo", action="store_true", help="also run the built-in echo upstream")
    run.add_argument("--logfile", help="write the event log to this file (default: stderr)")
    run.add_argument("--pidfile", default="", help="write the process id to this file")
    commands.add_parser("demo", help="run the built-in demo (gateway + echo upstream)")
    check = commands.add_parser("check", help="run every start-up check on a configuration")
    check.add_argument("-c", "--config", default=DEFAULT_CONFIG, help="the TOML configuration")
    commands.add_parser("version", help="print the version")
    commands.add_parser("schema", help="print the JSON Schema of the configuration")
    digest = commands.add_parser(
        "hash", help="print the SHA-256 of an API key or admin token (for the config)"
    )
    digest.add_argument("secret", nargs="?", help="the secret (default: read from stdin)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``avx-gateway`` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.command == "run":
        return _run_twistd(twistd_argv(args.config, args.demo, args.logfile, args.pidfile))
    if args.command == "demo":
        return _run_twistd(twistd_argv(demo_config(), demo=True))
    if args.command == "check":
        from .tap import load_checked, ok_line

        try:
            config = load_checked(args.config, build=True)
        except SystemExit as e:
            return e.code if isinstance(e.code, int) else 2
        sys.stdout.write(ok_line(args.config, config))
        return 0
    if args.command == "version":
        from .tap import version_text

        sys.stdout.write(version_text())
        return 0
    if args.command == "schema":
        from .config_schema import build_schema

        sys.stdout.write(json.dumps(build_schema(), indent=2) + "\n")
        return 0
    secret = args.secret if args.secret is not None else sys.stdin.readline().rstrip("\r\n")
    if not secret:
        sys.stderr.write("avx-gateway hash: the secret is empty\n")
        return 2
    sys.stdout.write(hashlib.sha256(secret.encode()).hexdigest() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
