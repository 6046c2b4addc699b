"""The vendored files are upstream's, unchanged: every difference lives in conftest.py."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.layer.channels_redis_suite.conftest import SHA256


@pytest.mark.parametrize("name", sorted(SHA256))
def test_vendored_file_is_upstreams(name: str) -> None:
    data = (Path(__file__).parent / name).read_bytes()
    assert hashlib.sha256(data).hexdigest() == SHA256[name]
