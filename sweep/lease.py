"""One driver per sweep: a lease on the sweep's parent run.

A second ``--resume`` of a sweep whose driver is alive (or a job submission retried while
the first still runs) would restore the same Ray Tune experiment and drive the same trials
twice. The driver of a sweep says so in a tag of its parent run (``contract.LEASE_TAG``):
its host, its pid and when that process started, and a heartbeat it renews every
``HEARTBEAT_S`` on a thread. Another driver is refused while that one lives: on the same
host while its process runs (the pid with the same start time, as pids are reused), from
another host while its heartbeat is younger than ``STALE_S``. A driver that died is taken
over. The tag lives in the tracking store because every driver of a sweep reaches it,
whatever its storage path (S3 has no locks) and whichever node it runs on.

MLflow has no compare-and-set: a driver that takes a lease reads it back ``SETTLE_S``
after writing it. Of two that wrote at once, the one whose write came last keeps it and the
other is refused; a driver checks the tag just before it writes, so one that writes later
than that finds the first's lease and is refused before writing."""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, replace
from typing import Any

from sweep.plan import UsageError
from trainables import contract
from trainables.edge import tracking

HEARTBEAT_S = 10.0
# A heartbeat this old means its driver died (or lost the store for that long): taken over.
STALE_S = 60.0
SETTLE_S = 0.5  # a lease just written is read back after this long
SAME_START_S = 1.0  # two start times of one pid this close are one process


@dataclass(frozen=True)
class Holder:
    """The driver that holds a sweep's lease, as its tag says."""

    host: str
    pid: int
    started: float  # when its process started, seconds since the epoch
    token: str  # this driver's own, so that it knows its lease from another's
    beat: float  # its last heartbeat, seconds since the epoch

    @classmethod
    def me(cls) -> Holder:
        pid = os.getpid()
        return cls(socket.gethostname(), pid, _started(pid) or 0.0, uuid.uuid4().hex, time.time())

    def to_tag(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> Holder | None:
        """The holder a parent run's tags name; None for none (or a tag this cannot read,
        which no live driver of this version wrote)."""
        try:
            return cls(**json.loads(tags[contract.LEASE_TAG]))
        except (KeyError, TypeError, ValueError):
            return None

    def alive(self) -> bool:
        """On this host: its process runs. Elsewhere: its heartbeat is recent."""
        if self.host == socket.gethostname():
            started = _started(self.pid)
            return started is not None and abs(started - self.started) < SAME_START_S
        return time.time() - self.beat < STALE_S

    def describe(self) -> str:
        return f"pid {self.pid} on host {self.host} (heartbeat {time.time() - self.beat:.0f} s ago)"


def _started(pid: int) -> float | None:
    """When process ``pid`` of this host started; None when none runs (a zombie, killed and
    not yet reaped by its parent, has ended)."""
    import psutil

    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return process.create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def refuse_if_held(run: Any) -> None:
    """Refuse, in one line, to drive the sweep of parent run ``run`` (MLflow's ``Run``) while
    a live driver holds it."""
    holder = Holder.from_tags(run.data.tags)
    if holder is not None and holder.alive():
        raise _held(run, holder)


def _held(run: Any, holder: Holder) -> UsageError:
    return UsageError(
        f"sweep {run.info.run_name} (run {run.info.run_id}) is driven by {holder.describe()}; "
        "a second driver would run its trials twice: stop that one first, or let it finish"
    )


class Lease:
    """The lease this driver holds on a sweep, renewed on a thread until ``release``."""

    def __init__(
        self, uri: str, run_id: str, holder: Holder, heartbeat_s: float = HEARTBEAT_S
    ) -> None:
        """``holder``: this driver, as the run's tag already names it."""
        self.uri = uri
        self.run_id = run_id
        self.holder = holder
        self.heartbeat_s = heartbeat_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="sweep-lease", daemon=True)
        self._thread.start()

    @classmethod
    def take(cls, uri: str, run_id: str) -> Lease:
        """The lease of an existing sweep: refused (``UsageError``) while a live driver holds
        it, or when another driver took it at the same moment."""
        client = tracking.client(uri)
        refuse_if_held(client.get_run(run_id))
        me = Holder.me()
        tracking.set_tags(uri, run_id, {contract.LEASE_TAG: me.to_tag()})
        time.sleep(SETTLE_S)
        run = client.get_run(run_id)
        current = Holder.from_tags(run.data.tags)
        if current is not None and current.token != me.token:
            raise _held(run, current)  # another driver wrote after this one
        return cls(uri, run_id, me)

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                if not self._renew():
                    return
            except Exception:  # the store is unreachable for now: the next beat tries again
                continue

    def _renew(self) -> bool:
        """A new heartbeat, while the lease is still this driver's."""
        current = Holder.from_tags(tracking.client(self.uri).get_run(self.run_id).data.tags)
        if current is not None and current.token != self.holder.token:
            print(
                f"tune.py: warning: sweep run {self.run_id} is now driven by "
                f"{current.describe()}: this driver's heartbeat lapsed",
                file=sys.stderr,
                flush=True,
            )
            return False
        self.holder = replace(self.holder, beat=time.time())
        tracking.set_tags(self.uri, self.run_id, {contract.LEASE_TAG: self.holder.to_tag()})
        return True

    def release(self) -> None:
        """Stop renewing, and remove the tag while it is still this driver's."""
        self._stop.set()
        self._thread.join()
        client = tracking.client(self.uri)
        current = Holder.from_tags(client.get_run(self.run_id).data.tags)
        if current is not None and current.token == self.holder.token:
            client.delete_tag(self.run_id, contract.LEASE_TAG)
