"""One driver per sweep (``sweep.lease``): the lease of a live driver refuses a second one in
one line naming it; the lease of a driver that died is taken over."""

import json
import os
import socket
import time
from dataclasses import replace

import pytest
from mlflow.tracking import MlflowClient

from sweep import lease
from sweep.lease import STALE_S, Holder, Lease
from sweep.plan import UsageError
from trainables import contract
from trainables.edge import tracking


@pytest.fixture
def parent(tmp_path) -> tuple[str, str]:
    """A store holding a sweep's parent run, with no lease on it: its URI and run id."""
    tracking.seed_local_store(tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("focal")
    run = client.create_run(experiment, run_name="sweep-a")
    return uri, run.info.run_id


def _hold(uri: str, run_id: str, holder: Holder) -> None:
    tracking.set_tags(uri, run_id, {contract.LEASE_TAG: holder.to_tag()})


def _holder(uri: str, run_id: str) -> Holder | None:
    return Holder.from_tags(MlflowClient(uri).get_run(run_id).data.tags)


def _refusal(run_id: str, who: str) -> str:
    return (
        f"sweep sweep-a (run {run_id}) is driven by {who}; a second driver would run its "
        "trials twice: stop that one first, or let it finish"
    )


def test_another_hosts_driver_holds_the_sweep_until_its_heartbeat_is_stale(parent):
    uri, run_id = parent
    elsewhere = Holder("node-7", 4242, 1.0, "theirs", time.time() - 5)
    _hold(uri, run_id, elsewhere)
    with pytest.raises(UsageError) as refused:
        Lease.take(uri, run_id)
    assert str(refused.value) == _refusal(run_id, "pid 4242 on host node-7 (heartbeat 5 s ago)")
    assert _holder(uri, run_id) == elsewhere  # untouched
    _hold(uri, run_id, replace(elsewhere, beat=time.time() - STALE_S - 1))  # it died
    taken = Lease.take(uri, run_id)
    try:
        mine = _holder(uri, run_id)
        assert (mine.host, mine.pid, mine.token) == (
            socket.gethostname(),
            os.getpid(),
            taken.holder.token,
        )
    finally:
        taken.release()
    assert contract.LEASE_TAG not in MlflowClient(uri).get_run(run_id).data.tags


def test_on_this_host_the_drivers_process_decides_not_its_heartbeat(parent):
    uri, run_id = parent
    me = Holder.me()
    _hold(uri, run_id, replace(me, token="old", beat=0.0))  # this process: alive, whatever the beat
    with pytest.raises(UsageError, match=f"is driven by pid {os.getpid()} on host"):
        Lease.take(uri, run_id)
    # The same pid, but a process started at another time: the pid was reused.
    _hold(uri, run_id, replace(me, token="old", started=me.started - 1000))
    Lease.take(uri, run_id).release()


def test_the_heartbeat_renews_the_lease_until_it_is_released(parent):
    uri, run_id = parent
    me = replace(Holder.me(), beat=0.0)
    _hold(uri, run_id, me)
    held = Lease(uri, run_id, me, heartbeat_s=0.05)
    deadline = time.monotonic() + 10
    while _holder(uri, run_id).beat == 0.0:
        assert time.monotonic() < deadline, "no heartbeat"
        time.sleep(0.05)
    assert time.time() - _holder(uri, run_id).beat < 5
    held.release()
    assert _holder(uri, run_id) is None


def test_of_two_drivers_taking_a_lease_at_once_the_later_write_keeps_it(parent, monkeypatch):
    uri, run_id = parent
    rival = Holder("node-7", 99, 1.0, "rival", time.time())

    def rival_writes_meanwhile(seconds: float) -> None:  # while this driver lets it settle
        _hold(uri, run_id, rival)

    monkeypatch.setattr(lease, "SETTLE_S", 0.0)
    monkeypatch.setattr(lease.time, "sleep", rival_writes_meanwhile)
    with pytest.raises(UsageError, match="is driven by pid 99 on host node-7"):
        Lease.take(uri, run_id)
    assert _holder(uri, run_id) == rival


def test_a_tag_no_driver_of_this_version_wrote_holds_nothing(parent):
    uri, run_id = parent
    tracking.set_tags(uri, run_id, {contract.LEASE_TAG: json.dumps({"pid": 1})})
    assert _holder(uri, run_id) is None
    Lease.take(uri, run_id).release()
