"""The wire format (services/messages.py): docs/architecture.md's message table says what the
module defines, every builder's message passes the check of the channel it travels on, and the
check's fast path and its explanation never disagree."""

from __future__ import annotations

import enum
import itertools
import re
import time
from typing import Any

import pytest

from services import messages as msg
from services import wire
from tests.services.procs import ROOT

BOTH = {"protocol → worker", "worker → reply"}


def documented() -> dict[str, tuple[set[str], set[str]]]:
    """type -> (directions, keys) as the Messages table of docs/architecture.md has them."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text.split("\n## Messages\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `k.")]
    table: dict[str, tuple[set[str], set[str]]] = {}
    for row in rows:
        kinds, directions, keys, _ = (cell.strip() for cell in row.strip("|").split("|"))
        names = re.findall(r"`(k\.\w+)`", kinds)
        ways = directions.split(" / ") if len(names) > 1 else [directions]
        assert len(ways) == len(names), row
        for name, way in zip(names, ways, strict=True):
            assert name not in table, f"{name} has two rows"
            table[name] = (BOTH if way == "both" else {way}, set(re.findall(r"`(\w+)`", keys)))
    return table


def defined() -> dict[str, tuple[set[str], set[str]]]:
    """The same, from services/messages.py (a type may have a spec per direction)."""
    table: dict[str, tuple[set[str], set[str]]] = {}
    for spec in msg.SPECS:
        ways, keys = table.setdefault(spec.kind, (set(), set()))
        ways.update(BOTH if spec.direction == "both" else {spec.direction})
        keys.update(field.key for field in spec.fields)
    return table


def test_the_docs_message_table_matches_the_module() -> None:
    docs, module = documented(), defined()
    assert sorted(docs) == sorted(module)
    for kind in module:
        assert docs[kind] == module[kind], kind


def test_only_the_module_spells_the_short_keys() -> None:
    """No ``message["st"]``-style literal of a wire key outside services/messages.py."""
    keys = {field.key for spec in msg.SPECS for field in spec.fields} - {"code"}
    alternatives = "|".join(sorted(keys))
    pattern = re.compile(rf"""\[\s*["']({alternatives})["']\s*\]|["']({alternatives})["']\s*:""")
    found = []
    for path in sorted((ROOT / "services").rglob("*.py")):
        if path.name == "messages.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert found == []


SCOPE = list(
    wire.export_scope(
        {"type": "http", "asgi": {}, "http_version": "1.1", "scheme": "http",
         "server": ("h", 1), "client": ("c", 2), "root_path": "", "method": "GET",
         "path": "/", "raw_path": b"/", "query_string": b"", "headers": []}
    )
)  # fmt: skip
WS_SCOPE = ["websocket", *SCOPE[1:7], "/", b"/", b"", [], []]
WORKER, REPLY = "worker.a!b", "proto.a!c"
GOOD: list[tuple[dict[str, Any], msg.Channel]] = [
    (msg.http_open("a.1", REPLY, SCOPE, b"x", True, time.time()), msg.WORK),
    (msg.ws_open("a.1", REPLY, WS_SCOPE, time.time()), msg.WORK),
    (msg.http_open("a.1", REPLY, {"type": "http", "client": None}, b"", False, 1), msg.WORK),
    (msg.picked("a.1", WORKER), msg.TO_PROTOCOL),
    (msg.response("a.1", WORKER, 200, [(b"a", b"b")], b"x", False), msg.TO_PROTOCOL),
    (msg.response_body("a.1", b"x", True), msg.TO_PROTOCOL),
    (msg.ws_accept("a.1", WORKER, None, None), msg.TO_PROTOCOL),
    (msg.ws_accept("a.1", WORKER, "chat", [[b"a", b"b"]]), msg.TO_PROTOCOL),
    (msg.frame(msg.WS_OUT, "a.1", "text", False), msg.TO_PROTOCOL),
    (msg.frame(msg.WS_OUT, "a.1", b"bytes", True), msg.TO_PROTOCOL),
    (msg.ws_close("a.1", 1000, ""), msg.TO_PROTOCOL),
    (msg.app_error("a.1"), msg.TO_PROTOCOL),
    (msg.app_error("a.1", 502), msg.TO_PROTOCOL),
    (msg.ack("a.1", 8), msg.TO_PROTOCOL),
    (msg.worker_heartbeat(WORKER), msg.TO_PROTOCOL),
    (msg.hello(WORKER), msg.TO_PROTOCOL),
    (msg.batch([msg.ack("a.1", 8)]), msg.TO_PROTOCOL),
    (msg.request_body("a.1", b"x", False), msg.TO_WORKER),
    (msg.frame(msg.WS_IN, "a.1", "text", False), msg.TO_WORKER),
    (msg.disconnect("a.1"), msg.TO_WORKER),
    (msg.disconnect("a.1", 1001), msg.TO_WORKER),
    (msg.ack("a.1", 8), msg.TO_WORKER),
    (msg.protocol_heartbeat(REPLY), msg.TO_WORKER),
    (msg.batch([msg.ack("a.1", 8)]), msg.TO_WORKER),
]


@pytest.mark.parametrize(
    ("message", "taking"),
    GOOD,
    ids=lambda v: str(v.get("type", "")) if isinstance(v, dict) else None,
)
def test_every_builder_passes_the_check_of_its_channel(
    message: dict[str, Any], taking: msg.Channel
) -> None:
    assert msg.check(message, taking) is message
    channels = (msg.WORK, msg.TO_WORKER, msg.TO_PROTOCOL)
    others = [t for t in channels if message["type"] not in t.specs]
    for other in others:
        with pytest.raises(msg.BadMessage) as refused:
            msg.check(message, other)
        assert refused.value.reason == "wrong_channel"


WRONG_VALUES = [None, True, 0, -1, 1.5, "", "x", b"", b"x", [], ["x"], [[b"a", b"b"]],
                [[b"a"]], ("x", 1), {}, {"type": "http"}, "proto.a!b", 200, 99999,
                {"type": "http", "client": 5}, {"type": "websocket", "server": ["h", 1]},
                [*SCOPE[:5], 5, *SCOPE[6:]], [*SCOPE[:4], ("h", 1, 2), *SCOPE[5:]],
                tuple(SCOPE), SCOPE[:11], WS_SCOPE, ["websocket", *SCOPE[1:]]]  # fmt: skip


@pytest.mark.parametrize(
    ("message", "taking"),
    GOOD,
    ids=lambda v: str(v.get("type", "")) if isinstance(v, dict) else None,
)
def test_the_fast_check_and_its_explanation_agree(
    message: dict[str, Any], taking: msg.Channel
) -> None:
    """Each field missing or replaced by each of many values: the compiled check and the
    field-by-field explanation accept and refuse exactly the same messages."""
    spec = taking.specs[message["type"]]
    keys = {field.key for field in spec.fields} | {msg.TEXT, msg.DATA}
    for key, value in itertools.product(sorted(keys), [*WRONG_VALUES, "MISSING"]):
        mutated = dict(message)
        if value == "MISSING":
            mutated.pop(key, None)
        else:
            mutated[key] = value
        problem = spec.problem(mutated)
        if problem is None:
            assert taking.check(mutated) is mutated, (key, value)
            continue
        with pytest.raises(msg.BadMessage) as refused:
            taking.check(mutated)
        assert (refused.value.reason, str(refused.value)) == problem, (key, value)
        assert refused.value.reason in msg.REASONS


def test_reasons_are_a_fixed_set() -> None:
    """Never text from a message in the counter's label."""
    for junk in (5, {}, {"type": "x" * 500}, {"type": ["k.http"]}, {"type": "k.http", "c": 1}):
        with pytest.raises(msg.BadMessage) as refused:
            msg.check(junk, msg.WORK)
        assert refused.value.reason in msg.REASONS


def test_app_values_of_subclasses_travel_as_plain_types() -> None:
    """Django's SafeString, an IntEnum status: the worker hands them on as plain str and int,
    so that even in-process (combined mode: the object itself is handed over) they pass the
    protocol server's check, which compares exact types."""

    class SafeString(str):
        pass

    class Status(enum.IntEnum):
        OK = 200

    text = wire.app_value("text", SafeString("hi"), str)
    code = wire.app_value("code", Status.OK, int)
    assert type(text) is str and text == "hi" and type(code) is int and code == 200
    assert msg.check(msg.frame(msg.WS_OUT, "a.1", text, False), msg.TO_PROTOCOL)
    assert msg.check(msg.ws_close("a.1", code, text), msg.TO_PROTOCOL)
    with pytest.raises(TypeError, match="ASGI key 'code' must be int, got str"):
        wire.app_value("code", "1000", int)
