"""HTTP/1.1 on the wire through the protocol server, whose transport writes once per loop turn
and which relays body-less requests from callbacks, others in uvicorn tasks (services/plain.py).

Raw sockets (responses parsed with h11, the parser httpx uses), so the bytes themselves are
checked: pipelined requests, HEAD, ``Connection: close`` and HTTP/1.0 each depend on held bytes
reaching the socket at the right moment (before the next response, before the close), and on
each request's answer being written by whichever path relays it, in order.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import h11
import pytest

from tests.services.conftest import Served, StackFactory, serve

pytestmark = pytest.mark.timeout(60)

Response = tuple[int, dict[bytes, bytes], bytes]


@pytest.fixture
def combined(stacks: StackFactory, tmp_path: Path) -> Served:
    return serve(stacks, "inmemory", tmp_path / "events.log")


def _request(method: str, target: str, *headers: tuple[str, str]) -> h11.Request:
    return h11.Request(method=method, target=target, headers=[("Host", "kit"), *headers])


def _events(request: h11.Request, body: bytes) -> list[h11.Request | h11.Data | h11.EndOfMessage]:
    return [request, *([h11.Data(data=body)] if body else []), h11.EndOfMessage()]


def _exchange(
    served: Served, requests: list[h11.Request], bodies: dict[int, bytes] | None = None
) -> list[Response]:
    """Send every request (``bodies``: by index) in one write (pipelined), then read the
    responses in order."""
    bodies = bodies or {}
    with socket.create_connection(("127.0.0.1", served.front.port), timeout=10) as sock:
        raw = b""
        for index, request in enumerate(requests):
            writer = h11.Connection(h11.CLIENT)
            for event in _events(request, bodies.get(index, b"")):
                raw += writer.send(event) or b""
        sock.sendall(raw)
        reader = h11.Connection(h11.CLIENT)
        responses: list[Response] = []
        for index, request in enumerate(requests):
            for event in _events(request, bodies.get(index, b"")):
                reader.send(event)  # only tracks the state: the bytes went out above
            status, headers, body = 0, {}, b""
            while True:
                event = reader.next_event()
                if event is h11.NEED_DATA:
                    reader.receive_data(sock.recv(65536))
                elif isinstance(event, h11.Response):
                    status, headers = event.status_code, dict(event.headers)
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
            responses.append((status, headers, body))
            if reader.our_state is h11.MUST_CLOSE:
                assert sock.recv(65536) == b"", "the server must close after this response"
                break
            reader.start_next_cycle()
        return responses


def test_pipelined_requests_are_answered_in_order(combined: Served) -> None:
    paths = ["/json", "/status", "/nowhere", "/json"]
    responses = _exchange(combined, [_request("GET", path) for path in paths])
    assert [status for status, _, _ in responses] == [200, 200, 404, 200]
    assert json.loads(responses[0][2]) == {"message": "hello, world"}
    assert json.loads(responses[1][2])["role"] == "combined"
    assert responses[3][2] == responses[0][2]


def test_pipelined_requests_keep_their_order_whichever_path_relays_them(combined: Served) -> None:
    requests = [
        _request("GET", "/sleep?s=0.3"),  # slow: the worker sends k.pick, a task takes it over
        _request("GET", "/json"),  # body-less, answered whole: relayed from callbacks
        _request("GET", "/stream?n=2"),  # streamed answer: a task takes it over
        _request("POST", "/echo-body", ("Content-Length", "3")),  # a body: a task from the start
        _request("POST", "/echo-body", ("Content-Length", "0")),  # body-less POST
        _request("GET", "/nowhere"),
    ]
    responses = _exchange(combined, requests, {3: b"abc"})
    assert [status for status, _, _ in responses] == [200, 200, 200, 200, 200, 404]
    assert [body for _, _, body in responses[:5]] == [
        b"slept",
        b'{"message":"hello, world"}',
        b"0\n1\nend\n",
        b"abc",
        b"",
    ]


def test_clients_leaving_before_their_answer_cost_nothing_else(combined: Served) -> None:
    for target in ("/json", "/sleep?s=0.3"):  # answered whole; announced by k.pick first
        writer = h11.Connection(h11.CLIENT)
        with socket.create_connection(("127.0.0.1", combined.front.port), timeout=10) as sock:
            sock.sendall(writer.send(_request("GET", target)) or b"")
    deadline = time.monotonic() + 10  # the slow one's task sees the client gone: 499
    while combined.front.metric("kit_requests_total", role="protocol", status="499") < 1:
        assert time.monotonic() < deadline, "the abandoned slow request was never settled"
        time.sleep(0.1)
    assert combined.front.metric("kit_inflight_connections", role="protocol") == 0
    (status, _, body), *_ = _exchange(combined, [_request("GET", "/json")])
    assert status == 200 and body == b'{"message":"hello, world"}'


def test_head_sends_headers_only_and_keeps_the_connection(combined: Served) -> None:
    head, get = _exchange(combined, [_request("HEAD", "/json"), _request("GET", "/json")])
    assert head[0] == 404 and head[2] == b""  # the demo routes GET only; uvicorn drops the body
    assert head[1][b"content-type"] == b"application/json"
    assert get[0] == 200 and json.loads(get[2]) == {"message": "hello, world"}


def test_connection_close_gets_the_whole_response_then_eof(combined: Served) -> None:
    closing = _request("GET", "/json", ("Connection", "close"))
    responses = _exchange(combined, [closing, _request("GET", "/json")])
    assert len(responses) == 1  # the server closed: the pipelined second request is not served
    assert json.loads(responses[0][2]) == {"message": "hello, world"}


def test_http_1_0_is_answered_then_closed(combined: Served) -> None:
    with socket.create_connection(("127.0.0.1", combined.front.port), timeout=10) as sock:
        sock.sendall(b"GET /json HTTP/1.0\r\n\r\n")
        raw = b""
        while chunk := sock.recv(65536):  # until the server closes
            raw += chunk
    assert raw.startswith(b"HTTP/1.1 200 ")
    assert b'{"message":"hello, world"}' in raw
