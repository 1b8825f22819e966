"""The official JSON-Schema-Test-Suite, draft 2020-12, through ``avx_twisted.validation``.

Every required case (``tests/draft2020-12/*.json``, not ``optional/``; vendored in
``tests/support/json_schema_suite``) is written to a temporary directory, compiled with
:func:`load_schema` and each of its instances validated: the valid/invalid verdict must match.

Excluded, and checked to be refused at load instead: the cases whose schema needs a document the
suite serves from ``http://localhost:1234`` (its ``remotes/`` directory) -- a remote ``$ref`` or a
remote custom metaschema. The gateway never fetches remote references, by design.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any, Callable

from twisted.trial.unittest import SynchronousTestCase

from avx_twisted._configmodel import ConfigError
from avx_twisted.validation import load_schema

SUITE_DIR = os.path.join(
    os.path.dirname(os.path.dirname(__file__)),
    *("support", "json_schema_suite", "tests", "draft2020-12"),
)

_REMOTE_REF = "needs a remote $ref to the suite's localhost:1234 server (never fetched)"
_REMOTE_META = "custom metaschema served from localhost:1234 (remote $schema, never fetched)"

EXCLUDED: dict[tuple[str, str], str] = {
    ("dynamicRef.json", "strict-tree schema, guards against misspelled properties"): _REMOTE_REF,
    ("dynamicRef.json", "tests for implementation dynamic anchor and reference link"): _REMOTE_REF,
    ("dynamicRef.json", "$ref and $dynamicAnchor are independent of order - $defs first"): (
        _REMOTE_REF
    ),
    ("dynamicRef.json", "$ref and $dynamicAnchor are independent of order - $ref first"): (
        _REMOTE_REF
    ),
    ("dynamicRef.json", "$ref to $dynamicRef finds detached $dynamicAnchor"): _REMOTE_REF,
    ("vocabulary.json", "schema that uses custom metaschema with with no validation vocabulary"): (
        _REMOTE_META
    ),
    ("vocabulary.json", "ignore unrecognized optional vocabulary"): _REMOTE_META,
}
"""(file, case description) -> why it cannot run here; each is checked to be refused at load."""

EXCLUDED_FILES: dict[str, str] = {
    "refRemote.json": "every case is a remote $ref to the suite's localhost:1234 server",
}
"""Whole files excluded, with the reason."""


def _suite_files() -> list[str]:
    return sorted(name for name in os.listdir(SUITE_DIR) if name.endswith(".json"))


def _cases(name: str) -> list[dict[str, Any]]:
    with open(os.path.join(SUITE_DIR, name), encoding="utf-8") as f:
        cases: list[dict[str, Any]] = json.load(f)
    return cases


def _is_excluded(name: str, description: str) -> bool:
    return name in EXCLUDED_FILES or (name, description) in EXCLUDED


def _count() -> tuple[int, int, int, int]:
    """(cases run, their instances, cases excluded, their instances) over the whole suite."""
    run = run_tests = excluded = excluded_tests = 0
    for name in _suite_files():
        for case in _cases(name):
            if _is_excluded(name, case["description"]):
                excluded += 1
                excluded_tests += len(case["tests"])
            else:
                run += 1
                run_tests += len(case["tests"])
    return run, run_tests, excluded, excluded_tests


class JsonSchemaSuiteTests(SynchronousTestCase):
    """One test method per suite file (added below); each runs all the file's cases."""

    def _write_schema(self, schema: Any) -> str:
        directory = tempfile.mkdtemp(prefix="avx-schema-suite-")
        self.addCleanup(shutil.rmtree, directory)
        path = os.path.join(directory, "schema.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(schema, f)
        return path

    def _run_file(self, name: str) -> None:
        mismatches = []
        for case in _cases(name):
            description = case["description"]
            path = self._write_schema(case["schema"])
            if _is_excluded(name, description):
                # Excluded because we refuse it at load: check that we do, naming the key.
                with self.assertRaises(ConfigError) as raised:
                    load_schema(path, "routes.validate.request_schema")
                self.assertIn("localhost:1234", str(raised.exception))
                continue
            compiled = load_schema(path, "routes.validate.request_schema")
            for test in case["tests"]:
                valid = not compiled.validate(test["data"])
                if valid != test["valid"]:
                    mismatches.append(
                        f"{description} / {test['description']}: "
                        f"expected {'valid' if test['valid'] else 'invalid'}"
                    )
        self.assertEqual(mismatches, [])

    def test_counts(self) -> None:
        """The suite is all there and the exclusion list is short and not stale."""
        names = _suite_files()
        self.assertEqual(len(names), 46)
        self.assertNotIn("optional", names)
        for (name, description), _ in EXCLUDED.items():
            self.assertIn(description, [c["description"] for c in _cases(name)])
        # 368 cases with 1257 instances: 346 cases (1208 instances) run, 22 (49) excluded.
        self.assertEqual(_count(), (346, 1208, 22, 49))


def _make_test(name: str) -> Callable[[JsonSchemaSuiteTests], None]:
    def test(self: JsonSchemaSuiteTests) -> None:
        self._run_file(name)

    test.__doc__ = f"draft2020-12/{name}: every verdict matches the suite"
    return test


for _name in _suite_files():
    _method = "test_" + _name[: -len(".json")].replace("-", "_")
    setattr(JsonSchemaSuiteTests, _method, _make_test(_name))
del _name, _method
