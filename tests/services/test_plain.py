"""Which requests the protocol server relays without a task: those that cannot have a body."""

from __future__ import annotations

import pytest

from services.plain import bodyless


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([], True),
        ([(b"host", b"kit"), (b"accept", b"*/*")], True),
        ([(b"content-length", b"0")], True),
        ([(b"content-length", b"3")], False),
        ([(b"host", b"kit"), (b"transfer-encoding", b"chunked")], False),
    ],
)
def test_only_requests_without_a_body_are_bodyless(
    headers: list[tuple[bytes, bytes]], expected: bool
) -> None:
    assert bodyless(headers) is expected
