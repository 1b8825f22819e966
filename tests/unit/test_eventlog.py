"""The event log: text or JSON lines, stderr or a file reopened by SIGUSR1, twistd's rules."""

from __future__ import annotations

import io
import json
import os
import tempfile

from twisted.logger import Logger, LogPublisher
from twisted.trial.unittest import SynchronousTestCase

from avx_twisted import eventlog
from avx_twisted.eventlog import (
    EventLog,
    json_line,
    reopen_event_log,
    twistd_observer,
    twistd_target,
    use_for_twistd,
)


def emit(observer, level="info", **fields):
    publisher = LogPublisher(observer)
    log = Logger(namespace="avx_twisted.test", observer=publisher)
    getattr(log, level)("listening on {port}", **fields)


class FormatTests(SynchronousTestCase):
    def test_json_line_has_time_level_namespace_message_and_fields(self):
        out = io.StringIO()
        emit(EventLog("stderr", "json", stream=out), "warn", port=8080, where=object())
        record = json.loads(out.getvalue())
        self.assertEqual(record["level"], "warn")
        self.assertEqual(record["namespace"], "avx_twisted.test")
        self.assertEqual(record["message"], "listening on 8080")
        self.assertEqual(record["port"], 8080)
        self.assertNotIn("where", record)  # only plain values
        self.assertRegex(record["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
        self.assertEqual(out.getvalue().count("\n"), 1)

    def test_a_failure_carries_its_error_and_traceback(self):
        from twisted.python.failure import Failure

        failure = Failure(ZeroDivisionError("division by zero"))
        line = json_line({"log_format": "boom", "log_failure": failure, "log_level": None})
        record = json.loads(line)
        self.assertEqual(record["error"], "ZeroDivisionError: division by zero")
        self.assertIn("Traceback", record["traceback"])

    def test_text_lines_are_twistds_with_a_worker_label(self):
        out = io.StringIO()
        emit(EventLog("stderr", "text", worker=1, stream=out), port=1)
        line = out.getvalue()
        self.assertRegex(line, r"^\S+ \[worker 1\] \[avx_twisted.test#info\] listening on 1\n$")

    def test_json_lines_of_a_worker_say_which(self):
        out = io.StringIO()
        emit(EventLog("stderr", "json", worker=3, stream=out), port=1)
        self.assertEqual(json.loads(out.getvalue())["worker"], 3)

    def test_level_filters(self):
        out = io.StringIO()
        log = EventLog("stderr", "text", level="warn", stream=out)
        emit(log, "info", port=1)
        self.assertEqual(out.getvalue(), "")
        emit(log, "error", port=2)
        self.assertIn("listening on 2", out.getvalue())


class FileTests(SynchronousTestCase):
    def setUp(self):
        self.addCleanup(eventlog._installed.clear)

    def test_reopen_after_a_move(self):
        path = os.path.join(tempfile.mkdtemp(), "events.log")
        log = EventLog(path, "json").install()
        emit(log, port=1)
        os.rename(path, path + ".1")
        self.assertTrue(reopen_event_log())
        emit(log, port=2)
        with open(path + ".1") as f:
            self.assertIn("listening on 1", f.read())
        with open(path) as f:
            text = f.read()
        self.assertIn("listening on 2", text)
        self.assertNotIn("listening on 1", text)

    def test_streams_are_not_reopened(self):
        EventLog("stderr", "text", stream=io.StringIO()).install()
        self.assertFalse(reopen_event_log())

    def test_no_size_based_rotation(self):
        path = os.path.join(tempfile.mkdtemp(), "events.log")
        log = EventLog(path, "text")
        for _ in range(20000):  # ~1.5 MB, over LogFile's default 1 MB rotation
            emit(log, port=12345)
        self.assertFalse(os.path.exists(path + ".1"))


class TwistdTests(SynchronousTestCase):
    def test_targets_follow_twistd_except_stderr_by_default(self):
        self.assertEqual(twistd_target(None, nodaemon=True), "stderr")
        self.assertEqual(twistd_target("", nodaemon=True), "stderr")
        self.assertEqual(twistd_target("-", nodaemon=True), "stdout")
        self.assertEqual(twistd_target(None, nodaemon=False), "twistd.log")
        self.assertEqual(twistd_target("/var/log/x.log", nodaemon=True), "/var/log/x.log")

    def test_the_observer_twistd_resolves(self):
        self.addCleanup(eventlog._settings_clear)
        from twisted.python.reflect import namedAny

        name = use_for_twistd("stderr", "json", "warn")
        self.assertIs(namedAny(name), twistd_observer)
        observer = twistd_observer()
        self.assertIsInstance(observer, EventLog)
        self.assertIs(eventlog._installed[0], observer)
