"""Resource routes (avx_twisted.resources): twisted.web resources answering through a real
``h1.ServerProtocol`` over a ``StringTransport``; no sockets. Timers and the pull producer's
turns run on the factory's ``MemoryReactorClock``."""

from __future__ import annotations

import ast
import json
import os
import tempfile
from pathlib import Path
from typing import Any, List, Optional

import httptools
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IPushProducer
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock, StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web import static
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Site
from zope.interface import implementer

from avx_twisted.h1 import Fields, IRequestHandler, ServerFactory, ServerLimits, ServerRequest
from avx_twisted.resources import ResourceResponder, load_resource

LIMITS = ServerLimits(body_high_water=16, idle_timeout_s=30.0)
RID = b"rid-1"


# -- resources under test ---------------------------------------------------------------------


class Hello(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"Content-Type", b"text/plain")
        return b"hello " + b",".join(request.args.get(b"name", [b"world"]))


class Where(Resource):
    """A leaf that says where traversal left it."""

    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"Content-Type", b"application/json")
        seen = {
            "uri": request.uri.decode(),
            "path": request.path.decode(),
            "prepath": [p.decode() for p in request.prepath],
            "postpath": [p.decode() for p in request.postpath],
            "site": request.site is not None and request.site.resource is not None,
            "header": (request.getHeader(b"x-thing") or b"").decode(),
            "client": request.getClientAddress().host,
            "host": request.getHost().port,
            "secure": request.isSecure(),
            "cookie": (request.getCookie(b"k") or b"").decode(),
        }
        return json.dumps(seen).encode()


class Echo(Resource):
    isLeaf = True

    def render_POST(self, request: Any) -> bytes:
        body = request.content.read()
        args = {k.decode(): [v.decode() for v in vs] for k, vs in request.args.items()}
        return json.dumps({"body": body.decode(), "args": args}).encode()


class Later(Resource):
    """NOT_DONE_YET: answers a second later, in two writes and no Content-Length."""

    isLeaf = True

    def __init__(self, clock: Any) -> None:
        super().__init__()
        self.clock = clock

    def render_GET(self, request: Any) -> Any:
        def answer() -> None:
            request.write(b"late ")
            request.write(b"answer")
            request.finish()

        self.clock.callLater(1, answer)
        return NOT_DONE_YET


class Keep(Resource):
    """NOT_DONE_YET, never answered: the test holds the request and its notifyFinish."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: List[Any] = []
        self.finished: List[Deferred[None]] = []

    def render_GET(self, request: Any) -> Any:
        self.requests.append(request)
        self.finished.append(request.notifyFinish())
        return NOT_DONE_YET


class Boom(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        raise ZeroDivisionError("secret detail")

    def render_POST(self, request: Any) -> bytes:
        request.write(b"half an answer")
        raise ZeroDivisionError("too late for a 500")


class Shaped(Resource):
    """Status, reason, cookies and framing fields a resource should not be able to send."""

    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        request.setResponseCode(201, b"Made It")
        request.addCookie(b"session", b"abc")
        request.setHeader(b"Connection", b"keep-alive, x-secret")
        request.setHeader(b"X-Custom", b"yes")
        return b"made"


@implementer(IPushProducer)
class Ticker:
    """A push producer writing one chunk per ``tick()`` unless paused."""

    def __init__(self, request: Any) -> None:
        self.request = request
        self.paused = False
        self.stopped = False
        request.registerProducer(self, True)

    def tick(self) -> None:
        if not self.paused and not self.stopped:
            self.request.write(b"tick")

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        self.stopped = True


class Ticking(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.tickers: List[Ticker] = []

    def render_GET(self, request: Any) -> Any:
        self.tickers.append(Ticker(request))
        return NOT_DONE_YET


class BrokenFile(Resource):
    """A pull producer that fails on its second read (after the head went out, or not)."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.stopped: List[bool] = []

    def render_GET(self, request: Any) -> Any:
        resource = self
        first = request.args.get(b"first", [b""])[0]

        class Producer:
            reads = 0

            def resumeProducing(self) -> None:
                self.reads += 1
                if self.reads == 1 and first:
                    request.write(first)
                    return
                raise OSError("disk on fire")

            def stopProducing(self) -> None:
                resource.stopped.append(True)

        request.registerProducer(Producer(), False)
        return NOT_DONE_YET


def tree(clock: Any, file_path: str) -> Resource:
    root = Resource()
    root.putChild(b"hello", Hello())
    root.putChild(b"where", Where())
    sub = Resource()
    sub.putChild(b"deep", Where())
    root.putChild(b"sub", sub)
    root.putChild(b"echo", Echo())
    root.putChild(b"later", Later(clock))
    root.putChild(b"keep", Keep())
    root.putChild(b"boom", Boom())
    root.putChild(b"shaped", Shaped())
    root.putChild(b"ticking", Ticking())
    root.putChild(b"broken", BrokenFile())
    root.putChild(b"file", static.File(file_path, defaultType="application/octet-stream"))
    return root


class Holder:
    """For load_resource: a dotted attribute, a factory and things that are not resources."""

    root = Hello()
    number = 3

    @staticmethod
    def make() -> Resource:
        return Hello()

    @staticmethod
    def not_a_resource() -> str:
        return "nope"

    @staticmethod
    def raising() -> Resource:
        raise RuntimeError("factory broke\nsecond line")


class FakeKlein:
    """What load_resource meets in a klein app: ``app.resource`` is a bound method."""

    def resource(self) -> Resource:
        return Hello()


ROOT = Hello()
APP = FakeKlein()


# -- the connection ---------------------------------------------------------------------------


class Ctx:
    def __init__(self, client_ip: str = "10.0.0.2") -> None:
        self.request_id = RID
        self.client_ip = client_ip
        self.error: Optional[str] = None


@implementer(IRequestHandler)
class Handler:
    """The gateway's part: the request ID field, a context, a finish hook, then serve."""

    def __init__(self, responder: ResourceResponder) -> None:
        self.responder = responder
        self.strip = b""
        self.client_ip = "10.0.0.2"
        self.contexts: List[Ctx] = []
        self.done: List[Optional[Failure]] = []

    def handle(self, request: ServerRequest) -> None:
        request.response_fields.add(b"X-Request-ID", RID)
        request.on_done = lambda req, failure: self.done.append(failure)
        ctx = Ctx(self.client_ip)
        self.contexts.append(ctx)
        target = request.target
        if self.strip and target.startswith(self.strip):
            target = target[len(self.strip) :] or b"/"
        self.responder.serve(request, ctx, target)

    def refused(self, request: ServerRequest, status: int, message: str) -> None:
        request.respond(status, [], message.encode("ascii"))


class Response:
    def __init__(self) -> None:
        self.status = 0
        self.reason = b""
        self.fields = Fields()
        self.body = b""
        self.complete = False

    def header(self, name: bytes) -> Optional[bytes]:
        return self.fields.get(name)

    def json(self) -> Any:
        return json.loads(self.body)


def read_responses(data: bytes, head: bool = False) -> List[Response]:
    responses: List[Response] = []

    class Callbacks:
        def on_message_begin(self) -> None:
            responses.append(Response())

        def on_status(self, reason: bytes) -> None:
            responses[-1].reason += reason

        def on_header(self, name: bytes, value: bytes) -> None:
            responses[-1].fields.add(name, value)

        def on_headers_complete(self) -> Optional[int]:
            responses[-1].status = parser.get_status_code()
            return 1 if head else None  # a HEAD answer has no body whatever it declares

        def on_body(self, body: bytes) -> None:
            responses[-1].body += body

        def on_message_complete(self) -> None:
            responses[-1].complete = True

    parser = httptools.HttpResponseParser(Callbacks())
    if data:
        parser.feed_data(data)
    return responses


def get(path: bytes, *fields: bytes, method: bytes = b"GET") -> bytes:
    lines = b"".join(f + b"\r\n" for f in (b"Host: example.com",) + fields)
    return method + b" " + path + b" HTTP/1.1\r\n" + lines + b"\r\n"


def post(path: bytes, body: bytes, *fields: bytes) -> bytes:
    return get(path, b"Content-Length: %d" % len(body), *fields, method=b"POST") + body


class SocketLikeTransport(StringTransport):
    """A StringTransport whose write buffer pauses its producer past ``limit`` bytes until the
    test drains it, as a TCP transport's does (``FileDescriptor.bufferSize``)."""

    limit = 256 * 1024

    def __init__(self) -> None:
        super().__init__()
        self.drained = 0
        self.most_buffered = 0
        self.producer_paused = False

    def write(self, data: bytes) -> None:
        super().write(data)
        buffered = len(self.value()) - self.drained
        self.most_buffered = max(self.most_buffered, buffered)
        if buffered > self.limit and self.producer is not None and not self.producer_paused:
            self.producer_paused = True
            self.producer.pauseProducing()

    def drain(self) -> None:
        self.drained = len(self.value())
        if self.producer is not None and self.producer_paused:
            self.producer_paused = False
            self.producer.resumeProducing()


class ResourceTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        handle, self.file_path = tempfile.mkstemp()
        os.close(handle)
        self.addCleanup(os.unlink, self.file_path)
        self.file_data = bytes(range(256)) * 4096 * 4  # 4 MiB
        Path(self.file_path).write_bytes(self.file_data)
        self.root = tree(self.clock, self.file_path)
        self.responder = ResourceResponder(self.root, self.clock)
        self.handler = Handler(self.responder)
        self.factory = ServerFactory(self.handler, self.clock, LIMITS)
        self.transport = SocketLikeTransport()
        self.protocol = self.factory.buildProtocol(IPv4Address("TCP", "10.0.0.2", 5000))
        self.protocol.makeConnection(self.transport)

    def send(self, *reads: bytes) -> None:
        for data in reads:
            self.protocol.dataReceived(data)

    def response(self, head: bool = False) -> Response:
        responses = read_responses(self.transport.value(), head)
        self.assertEqual(len(responses), 1, self.transport.value()[:500])
        return responses[0]

    def run_pulls(self, turns: int = 1) -> None:
        """Run the reactor turns that are due (the pull producer's)."""
        for _ in range(turns):
            self.clock.advance(0)

    def drain_all(self) -> None:
        """The client reads everything, as fast as it comes."""
        for _ in range(10000):
            self.run_pulls()
            if self.transport.producer is None:
                return
            self.transport.drain()
        self.fail("the answer never ended")

    def lose(self, reason: Exception) -> None:
        self.protocol.connectionLost(Failure(reason))


# -- tests ------------------------------------------------------------------------------------


class LoadResourceTests(SynchronousTestCase):
    def test_an_iresource_attribute(self) -> None:
        self.assertIs(load_resource("tests.unit.test_resources:ROOT"), ROOT)

    def test_a_dotted_attribute(self) -> None:
        self.assertIs(load_resource("tests.unit.test_resources:Holder.root"), Holder.root)

    def test_a_zero_argument_callable_is_called(self) -> None:
        self.assertIsInstance(load_resource("tests.unit.test_resources:Holder.make"), Hello)

    def test_a_resource_class_is_instantiated(self) -> None:
        made = load_resource("twisted.web.resource:Resource")
        self.assertTrue(IResource.providedBy(made))

    def test_a_klein_style_bound_resource_method(self) -> None:
        self.assertIsInstance(load_resource("tests.unit.test_resources:APP.resource"), Hello)

    def test_reasons(self) -> None:
        cases = [
            ("nocolon", "is not of the form 'package.module:attribute'"),
            (":attr", "is not of the form 'package.module:attribute'"),
            ("mod:", "is not of the form 'package.module:attribute'"),
            ("mod:a b", "is not of the form 'package.module:attribute'"),
            ("mod..x:a", "is not of the form 'package.module:attribute'"),
            ("no_such_module_xyz:root", "cannot be imported: No module named 'no_such_module_xyz'"),
            (
                "tests.unit.test_resources:Nothing",
                "names nothing: tests.unit.test_resources has no attribute 'Nothing'",
            ),
            (
                "tests.unit.test_resources:Holder.missing",
                "names nothing: tests.unit.test_resources.Holder has no attribute 'missing'",
            ),
            (
                "tests.unit.test_resources:Holder.number",
                "is a int, not an IResource nor a callable returning one",
            ),
            (
                "tests.unit.test_resources:Holder.not_a_resource",
                "returned a str when called, not an IResource",
            ),
            (
                "tests.unit.test_resources:Holder.raising",
                "failed when called: RuntimeError: factory broke",
            ),
            (
                "twisted.web.static:Data",
                "failed when called: TypeError: ",
            ),
        ]
        for spec, reason in cases:
            with self.assertRaises(ValueError, msg=spec) as caught:
                load_resource(spec)
            message = str(caught.exception)
            self.assertTrue(message.startswith(reason), (spec, message))
            self.assertNotIn("\n", message)

    def test_a_module_failing_on_import(self) -> None:
        with tempfile.TemporaryDirectory() as folder:
            Path(folder, "avx_broken_module_for_test.py").write_text("1 / 0\n")
            import sys

            sys.path.insert(0, folder)
            self.addCleanup(sys.path.remove, folder)
            self.addCleanup(sys.modules.pop, "avx_broken_module_for_test", None)
            with self.assertRaises(ValueError) as caught:
                load_resource("avx_broken_module_for_test:root")
        self.assertEqual(
            str(caught.exception), "failed on import: ZeroDivisionError: division by zero"
        )

    def test_imports_nothing_of_the_gateway_above_the_core_but_errors(self) -> None:
        source = Path(__file__).resolve().parents[2] / "avx_twisted" / "resources.py"
        found = set()
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                found.add(node.module)
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("avx"):
                found.add(node.module)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("avx"))
        self.assertEqual(found, {"errors", "h1"})


class TraversalTests(ResourceTestCase):
    def test_a_child_answers_with_status_fields_and_body(self) -> None:
        self.send(get(b"/hello"))
        response = self.response()
        self.assertEqual(response.status, 200)
        self.assertEqual(response.body, b"hello world")
        self.assertEqual(response.header(b"content-type"), b"text/plain")
        self.assertEqual(response.header(b"content-length"), b"11")
        self.assertIsNone(response.header(b"transfer-encoding"))
        self.assertIsNotNone(response.header(b"date"))
        self.assertIsNone(response.header(b"server"))  # not twisted.web's version string
        self.assertEqual(self.handler.done, [None])

    def test_the_gateway_response_fields_are_on_the_answer(self) -> None:
        self.send(get(b"/hello"))
        self.assertEqual(self.response().fields.get_all(b"x-request-id"), [RID])

    def test_query_args(self) -> None:
        self.send(get(b"/hello?name=a&name=b"))
        self.assertEqual(self.response().body, b"hello a,b")

    def test_a_leaf_gets_the_rest_of_the_path(self) -> None:
        self.send(get(b"/where/x/y%20z?q=1", b"X-Thing: thing", b"Cookie: k=v"))
        seen = self.response().json()
        self.assertEqual(seen["uri"], "/where/x/y%20z?q=1")
        self.assertEqual(seen["prepath"], ["where"])
        self.assertEqual(seen["postpath"], ["x", "y z"])
        self.assertTrue(seen["site"])
        self.assertEqual(seen["header"], "thing")
        self.assertEqual(seen["cookie"], "v")
        self.assertEqual(seen["client"], "10.0.0.2")
        self.assertFalse(seen["secure"])

    def test_nested_children(self) -> None:
        self.send(get(b"/sub/deep/leaf"))
        seen = self.response().json()
        self.assertEqual((seen["prepath"], seen["postpath"]), (["sub", "deep"], ["leaf"]))

    def test_the_resource_sees_the_target_after_strip_path(self) -> None:
        self.handler.strip = b"/api"
        self.send(get(b"/api/where/x?q=1"))
        seen = self.response().json()
        self.assertEqual((seen["uri"], seen["path"]), ("/where/x?q=1", "/where/x"))
        self.assertEqual((seen["prepath"], seen["postpath"]), (["where"], ["x"]))

    def test_the_client_address_is_the_one_the_gateway_resolved(self) -> None:
        self.handler.client_ip = "203.0.113.9"
        self.send(get(b"/where"))
        self.assertEqual(self.response().json()["client"], "203.0.113.9")

    def test_an_unknown_child_is_twisted_webs_404(self) -> None:
        self.send(get(b"/nowhere"))
        self.assertEqual(self.response().status, 404)

    def test_an_unsupported_method_is_twisted_webs_405(self) -> None:
        self.send(get(b"/echo"))
        response = self.response()
        self.assertEqual(response.status, 405)
        self.assertEqual(response.header(b"allow"), b"HEAD, POST")

    def test_head_of_a_get_resource(self) -> None:
        self.send(get(b"/hello", method=b"HEAD"))
        response = self.response(head=True)
        self.assertEqual(response.status, 200)
        self.assertEqual(response.header(b"content-length"), b"11")
        self.assertTrue(self.transport.value().endswith(b"\r\n\r\n"))
        self.assertNotIn(b"hello world", self.transport.value())

    def test_status_reason_and_cookies_pass_framing_fields_do_not(self) -> None:
        self.send(get(b"/shaped"))
        response = self.response()
        self.assertEqual((response.status, response.reason), (201, b"Made It"))
        self.assertEqual(response.header(b"set-cookie"), b"session=abc")
        self.assertEqual(response.header(b"x-custom"), b"yes")
        self.assertIsNone(response.header(b"connection"))
        self.assertEqual(response.body, b"made")

    def test_keep_alive_serves_the_next_request(self) -> None:
        self.send(get(b"/hello"), get(b"/hello?name=again"))
        responses = read_responses(self.transport.value())
        self.assertEqual([r.body for r in responses], [b"hello world", b"hello again"])


class BodyTests(ResourceTestCase):
    def test_a_post_body_reaches_request_content(self) -> None:
        self.send(post(b"/echo", b"some body", b"Content-Type: text/plain"))
        self.assertEqual(self.response().json(), {"body": "some body", "args": {}})

    def test_a_form_body_is_parsed_into_args(self) -> None:
        form = b"a=1&b=two"
        self.send(post(b"/echo?c=3", form, b"Content-Type: application/x-www-form-urlencoded"))
        self.assertEqual(self.response().json()["args"], {"a": ["1"], "b": ["two"], "c": ["3"]})

    def test_a_body_arriving_later_is_read_whole_first(self) -> None:
        head = get(b"/echo", b"Transfer-Encoding: chunked", method=b"POST")
        self.send(head, b"5\r\nhello\r\n")
        self.assertEqual(self.transport.value(), b"")
        self.send(b"6\r\n world\r\n", b"0\r\n\r\n")
        self.assertEqual(self.response().json()["body"], "hello world")

    def test_a_body_over_the_limit_gets_the_gateways_413(self) -> None:
        head = get(b"/echo", b"Transfer-Encoding: chunked", method=b"POST")
        self.send(head)
        self.protocol._queue[0].body.limit = 8  # what the route's BodyLimit sets
        self.send(b"10\r\n" + b"x" * 16 + b"\r\n")
        response = self.response()
        self.assertEqual(response.status, 413)
        self.assertEqual(response.json()["request_id"], RID.decode())


class NotDoneYetTests(ResourceTestCase):
    def test_not_done_yet_finishes_later_in_the_cores_framing(self) -> None:
        self.send(get(b"/later"))
        self.assertEqual(self.transport.value(), b"")
        self.clock.advance(1)
        response = self.response()
        self.assertTrue(response.complete)
        self.assertEqual(response.body, b"late answer")
        self.assertEqual(response.fields.get_all(b"transfer-encoding"), [b"chunked"])
        self.assertIn(b"5\r\nlate \r\n6\r\nanswer\r\n0\r\n\r\n", self.transport.value())
        self.assertEqual(self.handler.done, [None])

    def test_not_done_yet_for_http_1_0_is_close_delimited(self) -> None:
        self.send(b"GET /later HTTP/1.0\r\n\r\n")
        self.clock.advance(1)
        data = self.transport.value()
        self.assertTrue(data.endswith(b"\r\n\r\nlate answer"), data)
        self.assertNotIn(b"chunked", data)
        self.assertTrue(self.transport.disconnecting)

    def test_notify_finish_fires_when_the_answer_is_complete(self) -> None:
        keep = self.root.children[b"keep"]
        self.send(get(b"/keep"))
        request = keep.requests[0]
        self.assertNoResult(keep.finished[0])
        request.write(b"done")
        request.finish()
        self.assertIsNone(self.successResultOf(keep.finished[0]))
        self.assertEqual(self.response().body, b"done")

    def test_a_client_going_away_fails_notify_finish(self) -> None:
        keep = self.root.children[b"keep"]
        self.send(get(b"/keep"))
        self.lose(ConnectionLost())
        self.failureResultOf(keep.finished[0], ConnectionLost)
        self.assertEqual(len(self.handler.done), 1)
        self.assertIsNotNone(self.handler.done[0])
        # Writes after that are dropped; finishing says the connection is gone.
        keep.requests[0].write(b"nobody listens")
        self.assertRaises(RuntimeError, keep.requests[0].finish)
        self.assertEqual(self.transport.value(), b"")

    def test_a_resource_closing_its_connection_cuts_the_answer_off(self) -> None:
        keep = self.root.children[b"keep"]
        self.send(get(b"/keep"))
        keep.requests[0].write(b"partial")
        keep.requests[0].loseConnection()
        self.assertTrue(self.transport.disconnecting)
        self.failureResultOf(keep.finished[0], ConnectionAbortedError)

    def test_a_short_body_aborts(self) -> None:
        keep = self.root.children[b"keep"]
        self.send(get(b"/keep"))
        request = keep.requests[0]
        request.setHeader(b"Content-Length", b"10")
        request.write(b"short")
        request.finish()
        self.assertTrue(self.transport.disconnecting)
        self.failureResultOf(keep.finished[0], ConnectionAbortedError)


class FailureTests(ResourceTestCase):
    def test_an_exception_is_the_gateways_json_500_and_logged(self) -> None:
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.send(get(b"/boom"))
        response = self.response()
        self.assertEqual(response.status, 500)
        self.assertEqual(response.header(b"content-type"), b"application/json")
        self.assertEqual(
            response.json(), {"error": "internal error", "status": 500, "request_id": "rid-1"}
        )
        self.assertNotIn(b"secret detail", self.transport.value())
        self.assertNotIn(b"Traceback", self.transport.value())
        self.assertEqual(self.handler.contexts[0].error, "internal error")
        failures = [e for e in logged if "log_failure" in e]
        self.assertEqual(len(failures), 1)
        self.assertEqual(failures[0]["request_id"], "rid-1")
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_an_exception_after_the_head_went_out_aborts(self) -> None:
        self.send(post(b"/boom", b""))
        self.assertTrue(self.transport.disconnecting)
        self.assertNotIn(b"too late", self.transport.value())
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_a_bad_content_length_from_a_resource_is_a_500(self) -> None:
        keep = self.root.children[b"keep"]
        self.send(get(b"/keep"))
        keep.requests[0].setHeader(b"Content-Length", b"ten")
        keep.requests[0].write(b"x")
        self.assertEqual(self.response().status, 500)
        self.assertIsNone(self.successResultOf(keep.finished[0]))


class ProducerTests(ResourceTestCase):
    def test_a_file_with_its_content_length(self) -> None:
        self.send(get(b"/file"))
        self.drain_all()
        response = self.response()
        self.assertEqual(response.status, 200)
        self.assertEqual(response.header(b"content-length"), b"%d" % len(self.file_data))
        self.assertEqual(response.header(b"accept-ranges"), b"bytes")
        self.assertIsNone(response.header(b"transfer-encoding"))
        self.assertTrue(response.complete)
        self.assertEqual(response.body, self.file_data)
        self.assertIsNone(self.transport.producer)
        self.assertEqual(self.handler.done, [None])

    def test_head_of_a_file(self) -> None:
        self.send(get(b"/file", method=b"HEAD"))
        self.run_pulls()
        response = self.response(head=True)
        self.assertEqual(response.header(b"content-length"), b"%d" % len(self.file_data))
        self.assertTrue(self.transport.value().endswith(b"\r\n\r\n"))

    def test_a_range_of_a_file_is_206(self) -> None:
        self.send(get(b"/file", b"Range: bytes=10-19"))
        self.run_pulls()
        response = self.response()
        self.assertEqual(response.status, 206)
        self.assertEqual(response.header(b"content-range"), b"bytes 10-19/%d" % len(self.file_data))
        self.assertEqual(response.header(b"content-length"), b"10")
        self.assertEqual(response.body, self.file_data[10:20])

    def test_a_file_waits_while_the_client_connection_is_paused(self) -> None:
        self.send(get(b"/file"))
        producer = self.transport.producer
        self.assertIsNotNone(producer)  # registered by the render, nothing read yet
        producer.pauseProducing()
        self.run_pulls(50)
        self.assertEqual(self.transport.value(), b"")
        producer.resumeProducing()
        self.drain_all()
        self.assertEqual(self.response().body, self.file_data)

    def test_a_file_goes_at_the_pace_of_the_client_connection(self) -> None:
        self.send(get(b"/file"))
        self.run_pulls(50)
        sent = len(self.transport.value())
        self.assertTrue(self.transport.limit < sent < len(self.file_data), sent)
        self.run_pulls(50)
        self.assertEqual(len(self.transport.value()), sent)  # paused: not one more pull
        self.drain_all()
        self.assertEqual(self.response().body, self.file_data)
        # Never more than the buffer's limit and one read of the file waiting to go out.
        self.assertLessEqual(self.transport.most_buffered, self.transport.limit + 65536 + 1024)

    def test_a_client_going_away_stops_the_file(self) -> None:
        self.send(get(b"/file"))
        self.run_pulls(50)
        sent = len(self.transport.value())
        self.transport.drain()
        self.lose(ConnectionDone())
        self.run_pulls(50)
        self.assertEqual(len(self.transport.value()), sent)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertIsNotNone(self.handler.done[0])

    def test_a_push_producer_is_paused_by_the_client_connection(self) -> None:
        ticking = self.root.children[b"ticking"]
        self.send(get(b"/ticking"))
        ticker = ticking.tickers[0]
        ticker.tick()
        self.transport.producer.pauseProducing()
        self.assertTrue(ticker.paused)
        self.transport.producer.resumeProducing()
        self.assertFalse(ticker.paused)
        ticker.tick()
        ticker.request.unregisterProducer()
        self.assertIsNone(self.transport.producer)
        ticker.request.finish()
        self.assertEqual(self.response().body, b"ticktick")

    def test_a_push_producer_is_stopped_when_the_client_goes(self) -> None:
        ticking = self.root.children[b"ticking"]
        self.send(get(b"/ticking"))
        self.lose(ConnectionLost())
        self.assertTrue(ticking.tickers[0].stopped)

    def test_a_failing_pull_producer_before_the_head_is_a_500(self) -> None:
        broken = self.root.children[b"broken"]
        self.send(get(b"/broken"))
        self.run_pulls()
        self.assertEqual(self.response().status, 500)
        self.assertEqual(broken.stopped, [True])
        self.assertIsNone(self.transport.producer)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        # The connection serves the next request (no producer left registered on it).
        self.transport.clear()
        self.send(get(b"/hello"))
        self.assertEqual(self.response().body, b"hello world")

    def test_a_failing_pull_producer_after_the_head_aborts(self) -> None:
        broken = self.root.children[b"broken"]
        self.send(get(b"/broken?first=some"))
        self.run_pulls()
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(broken.stopped, [True])
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)


class SiteTests(SynchronousTestCase):
    def test_the_site_wraps_the_resource_and_never_listens(self) -> None:
        clock = MemoryReactorClock()
        root = Resource()
        responder = ResourceResponder(root, clock)
        self.assertIsInstance(responder.site, Site)
        self.assertIs(responder.site.resource, root)
        self.assertEqual(clock.getDelayedCalls(), [])
