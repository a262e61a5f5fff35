"""Which Ray a sweep given no ``--address`` runs on, decided as ``ray.init()`` decides: the
cluster ``RAY_ADDRESS`` names, else the one ``ray start`` last started on this machine (as on
every node of ``ray up cluster.yaml``), whose address it leaves in a file in Ray's temp folder.
Unlike ``ray.init()``, a cluster named only by that file must answer: a cluster that died
without ``ray stop`` (a crash, a killed ``ray start --block``) leaves the file behind, and
``ray.init()`` then waits for its GCS forever. Light: imported by ``sweep.local_ray`` as
``tune.py`` starts, before torch.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

RAY_ADDRESS_VARIABLE = "RAY_ADDRESS"
LOCAL = "local"  # ray.init's address for a Ray of its own, whatever RAY_ADDRESS or the file say
# A live GCS on the node or its head answers in milliseconds; an address file left by a head
# that is gone (its packets dropped) costs this long before a sweep starts a Ray of its own.
PROBE_TIMEOUT_S = 3.0
# A gRPC (HTTP/2) client's first bytes, an empty SETTINGS frame included: a gRPC server such
# as Ray's GCS answers with its own SETTINGS frame (type 4) at once.
_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
_HTTP2_SETTINGS = 4
_OWN = f"`ray stop` it, or pass --address {LOCAL}, for a Ray of the sweep's own"


@dataclass(frozen=True)
class FoundCluster:
    """A running Ray cluster a sweep without ``--address`` joins."""

    address: str  # what ray.init is given, as ``--address`` would be
    where: str  # how it was found, for the user

    def notice(self) -> str:
        return f"{self.where}: the sweep runs on it ({_OWN})"


def running_cluster(*, timeout: float = PROBE_TIMEOUT_S) -> FoundCluster | None:
    """The cluster ``ray.init()`` would join; None where a sweep starts its own Ray. A
    ``RAY_ADDRESS`` is the user's choice, joined as ``--address`` would be (an unreachable one
    is refused in one line); the address file counts only while its GCS answers."""
    named = os.environ.get(RAY_ADDRESS_VARIABLE, "")
    if named == LOCAL:
        return None
    if named:
        return FoundCluster(named, f"{RAY_ADDRESS_VARIABLE} names a Ray cluster ({named})")
    from ray._private.services import find_bootstrap_address, parse_address

    written = find_bootstrap_address(None)  # what ray.init() reads
    parsed = parse_address(written) if written else None
    if parsed is None or not parsed[1].isdigit():
        return None
    if not gcs_answers(parsed[0], int(parsed[1]), timeout=timeout):
        return None  # left by a cluster that has stopped
    return FoundCluster(
        "auto", f"`ray start` made this machine part of a running Ray cluster ({written})"
    )


def gcs_reply(host: str, port: int, *, timeout: float) -> bytes:
    """The first bytes the server at ``host:port`` sends to a gRPC client's preface (Ray's
    GCS: a SETTINGS frame's header); raises ``OSError`` when none listens or it times out."""
    with socket.create_connection((host, port), timeout=timeout) as connection:
        connection.sendall(_HTTP2_PREFACE)
        reply = b""
        while len(reply) < 4 and (chunk := connection.recv(9)):  # a frame header's type
            reply += chunk
    return reply


def speaks_grpc(reply: bytes) -> bool:
    """Whether ``reply`` comes from a gRPC server, as Ray's GCS is (not, say, Redis on 6379 or
    the dashboard's HTTP port). Over TLS the plain preface gets no frame: answering is all."""
    if os.environ.get("RAY_USE_TLS", "0").lower() in {"1", "true"}:
        return True
    return len(reply) >= 4 and reply[3] == _HTTP2_SETTINGS


def gcs_answers(host: str, port: int, *, timeout: float) -> bool:
    try:
        return speaks_grpc(gcs_reply(host, port, timeout=timeout))
    except OSError:
        return False
