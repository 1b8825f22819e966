"""Helm for tests: ``helm lint`` and ``helm template`` through Helm's own Go SDK.

No PyPI or npm package ships the ``helm`` binary and the machine reaches no other download, so
the tests use ``helm-python-sdk`` (import name ``helm_python``): a wheel that bundles Helm's
official Go SDK (v4) as a shared library and calls its lint and render actions, the code behind
``helm lint`` and ``helm template``. Wheels: Linux x86_64/aarch64 (glibc 2.28+), macOS, Windows;
Python 3.10+.

A test that needs it fails when it is missing but could be installed (Python 3.10+), and skips
only where it cannot be (older Pythons, e.g. Debian 12's PyPy 3.9).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

#: What ``make test`` needs in the test venv.
INSTALL = "pip install 'helm-python-sdk>=0.2.2'"

#: Severity of a lint finding, as the SDK reports it: 1 info, 2 warning, 3 error.
WARNING = 2


def sdk() -> Any:
    """The ``helm_python`` module; fails the test when it is installable but missing, else skips."""
    try:
        import helm_python
    except ImportError:
        if sys.version_info >= (3, 10):
            pytest.fail(f"helm-python-sdk is missing; install it with `{INSTALL}`")
        pytest.skip("helm-python-sdk needs Python 3.10 or later")
    return helm_python


def lint(chart: Path, values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """``helm lint --strict``: the warnings and errors (info findings are left out)."""
    report = sdk().lint(str(chart), values, strict=True)
    findings = [m for m in report["messages"] if m["severity"] >= WARNING]
    findings += [{"severity": 3, "path": "", "error": e} for e in report.get("errors") or []]
    return findings


def render(
    chart: Path, values: dict[str, Any] | None = None, name: str = "gw", namespace: str = "prod"
) -> dict[str, str]:
    """``helm template NAME CHART``: each template's path mapped to its rendered text."""
    with sdk().Chart.load(str(chart)) as loaded:
        return loaded.render(values, name=name, namespace=namespace, is_install=True)


def template(
    chart: Path, values: dict[str, Any] | None = None, name: str = "gw", namespace: str = "prod"
) -> list[dict[str, Any]]:
    """The rendered manifests as objects (NOTES.txt and empty documents left out)."""
    objects = []
    for path, text in sorted(render(chart, values, name, namespace).items()):
        if path.endswith("NOTES.txt"):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects
