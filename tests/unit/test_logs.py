"""Access log writer, request IDs and the log level filter."""

from __future__ import annotations

import json
import os
import tempfile

from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel, LogPublisher
from twisted.trial.unittest import SynchronousTestCase

from avx_twisted.logs import AccessLogWriter, access_logger, apply_level, request_id


class RequestIdTests(SynchronousTestCase):
    def test_sane_client_id_is_kept(self):
        self.assertEqual(request_id([b"abc-123_x.y:z"]), b"abc-123_x.y:z")

    def test_insane_or_missing_ids_are_replaced(self):
        for incoming in (None, [], [b""], [b"a b"], [b"x" * 129], [b"\xff"]):
            rid = request_id(incoming)
            self.assertEqual(len(rid), 32, incoming)
            int(rid, 16)

    def test_generated_ids_differ(self):
        self.assertNotEqual(request_id(None), request_id(None))


class AccessLogWriterTests(SynchronousTestCase):
    def test_events_become_json_lines_in_order(self):
        fd, path = tempfile.mkstemp()
        os.close(fd)
        self.addCleanup(os.remove, path)
        writer = AccessLogWriter(path, "json", clock=Clock())
        writer.start()
        log = access_logger(writer)
        for i in range(3):
            log.info("access", time=1.0, request_id=str(i), status=200, route="r")
        writer.stop()
        with open(path) as f:
            lines = [json.loads(line) for line in f]
        self.assertEqual([line["request_id"] for line in lines], ["0", "1", "2"])
        self.assertEqual(lines[0]["status"], 200)

    def test_queue_is_bounded_and_overflow_is_counted(self):
        writer = AccessLogWriter("-", "json", max_queue=5, clock=Clock())  # not started
        log = access_logger(writer)
        for _ in range(8):
            log.info("access", time=1.0)
        self.assertEqual(len(writer.pending), 5)
        self.assertEqual(writer.dropped, 3)

    def test_reopen_writes_on_in_a_new_file_after_a_move(self):
        directory = tempfile.mkdtemp()
        path = os.path.join(directory, "access.log")
        writer = AccessLogWriter(path, "json", clock=Clock())
        writer.start()
        log = access_logger(writer)
        log.info("access", time=1.0, request_id="before")
        writer.flush()
        os.rename(path, path + ".1")  # logrotate
        writer.reopen()
        log.info("access", time=1.0, request_id="after")
        writer.stop()
        with open(path + ".1") as f:
            self.assertEqual([json.loads(line)["request_id"] for line in f], ["before"])
        with open(path) as f:
            self.assertEqual([json.loads(line)["request_id"] for line in f], ["after"])

    def test_a_full_disk_drops_lines_and_never_kills_the_writer_or_its_stop(self):
        if not os.path.exists("/dev/full"):
            self.skipTest("needs /dev/full (Linux)")
        writer = AccessLogWriter("/dev/full", "json", clock=Clock())
        writer.start()
        log = access_logger(writer)
        for batch in range(3):
            log.info("access", time=1.0, request_id=str(batch))
            writer.flush()
        writer.stop()  # the final flush and the close fail too: nothing raised
        self.assertEqual(writer.dropped, 3)
        self.assertIsNone(writer._file)

    def test_reopen_of_stdout_or_a_stopped_writer_does_nothing(self):
        writer = AccessLogWriter("-", "json", clock=Clock())
        writer.reopen()
        self.assertEqual(writer.queue.qsize(), 0)

    def test_drops_are_reported_to_the_hook(self):
        writer = AccessLogWriter("-", "json", max_queue=1, clock=Clock())
        dropped = []
        writer.on_drop = dropped.append
        log = access_logger(writer)
        for _ in range(3):
            log.info("access", time=1.0)
        self.assertEqual(dropped, [1, 1])

    def test_events_reach_the_thread_in_batches(self):
        clock = Clock()
        writer = AccessLogWriter("-", "json", clock=clock, flush_s=0.1)
        writer._thread = object()  # pretend started: only the hand-over is under test
        log = access_logger(writer)
        for _ in range(3):
            log.info("access", time=1.0)
        self.assertEqual(writer.queue.qsize(), 0)
        clock.advance(0.1)
        self.assertEqual(writer.queue.qsize(), 1)
        self.assertEqual(len(writer.queue.get()), 3)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_access_events_reach_no_other_observer(self):
        writer = AccessLogWriter("-", "json", clock=Clock())
        seen = []
        from twisted.logger import globalLogPublisher

        globalLogPublisher.addObserver(seen.append)
        self.addCleanup(globalLogPublisher.removeObserver, seen.append)
        access_logger(writer).info("access", time=1.0)
        self.assertEqual(seen, [])
        self.assertEqual(len(writer.pending), 1)


class LevelTests(SynchronousTestCase):
    def test_apply_level_filters_existing_observers(self):
        publisher = LogPublisher()
        seen = []
        publisher.addObserver(seen.append)
        self.assertTrue(apply_level(publisher, "warn"))
        log = Logger(observer=publisher)
        log.info("quiet")
        log.warn("loud")
        self.assertEqual([e["log_level"] for e in seen], [LogLevel.warn])
