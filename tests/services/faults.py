"""``python -m tests.services.faults <role> ...``: ``layerkit`` with a bug planted in each loop a
process depends on, for tests of what happens when one dies (``/healthz`` must fail).

Well-formed messages cannot kill a loop (malformed ones are checked and dropped), so the faults
are triggered by well-formed messages only a test sends: a heartbeat from the peer channel
:data:`DIE`, on either process's own channel, and a request for :data:`DIE_PATH` on the work
channel.
"""

from __future__ import annotations

from typing import Any

from layer.messages import Message
from services import cli, instance, worker
from services import messages as msg
from services.protocol_server import ProtocolServer

DIE = "fault.die!now"  # a heartbeat from this "peer" raises inside the routing loop
DIE_PATH = "/die"  # a request for this path raises inside the worker's runner


class Fault(RuntimeError):
    pass


def _planted(route: Any) -> Any:
    def planted(self: object, message: Message) -> None:
        if message[msg.TYPE] == msg.HEARTBEAT and DIE in message.values():
            raise Fault("a bug planted by tests/services/faults.py")
        route(self, message)

    return planted


class _Instance(instance.Instance):
    __slots__ = ()

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        if self.scope.get("path") == DIE_PATH:
            raise Fault("a bug planted by tests/services/faults.py")


ProtocolServer._route = _planted(ProtocolServer._route)  # type: ignore[method-assign]
worker.Worker._route = _planted(worker.Worker._route)  # type: ignore[method-assign]
worker.Instance = _Instance  # type: ignore[misc]

if __name__ == "__main__":
    cli.main()
