"""Which Ray a sweep given no --address runs on (``sweep.ray_address``): ``RAY_ADDRESS`` as
set; the address file `ray start` leaves in Ray's temp folder only while a GCS answers there,
so the file of a cluster that died, or another server on its port, gets a Ray of the sweep's
own. No Ray starts here: the GCS is a socket that answers as one does."""

import contextlib
import socket
import threading

import pytest

from sweep import local_ray
from sweep.local_ray import LocalRay, LocalRayOptions, local_ray_settings
from sweep.ray_address import FoundCluster, running_cluster
from tests.mlflow_server import free_port

SETTINGS_FRAME = bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])  # what a gRPC server such as a GCS sends
STARTED = "`ray start` made this machine part of a running Ray cluster"


@pytest.fixture
def address_file(tmp_path, monkeypatch):
    """Where `ray start` writes its address, in a temp folder of this test's own."""
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    (tmp_path / "ray").mkdir()
    return tmp_path / "ray" / "ray_current_cluster"


@contextlib.contextmanager
def _server(reply: bytes):
    """A server on 127.0.0.1 that reads a client's first bytes and sends ``reply``."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        with contextlib.suppress(OSError):  # closed: the test is over
            while True:
                connection, _ = listener.accept()
                with connection:
                    connection.recv(64)
                    connection.sendall(reply)

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


def test_a_cluster_whose_gcs_answers_is_joined(address_file):
    with _server(SETTINGS_FRAME) as port:
        address_file.write_text(f"127.0.0.1:{port}\n")
        found = running_cluster()
    assert found == FoundCluster("auto", f"{STARTED} (127.0.0.1:{port})")
    assert found.notice() == (
        f"{STARTED} (127.0.0.1:{port}): the sweep runs on it (`ray stop` it, or pass "
        "--address local, for a Ray of the sweep's own)"
    )


def test_a_dead_cluster_s_address_file_is_passed_over(address_file):
    address_file.write_text(f"127.0.0.1:{free_port()}")
    assert running_cluster() is None


@pytest.mark.parametrize("reply", [b"-ERR unknown command 'PRI'\r\n", b""])
def test_another_server_on_the_port_is_not_a_cluster(address_file, reply):
    with _server(reply) as port:  # e.g. Redis on 6379, Ray's default port
        address_file.write_text(f"127.0.0.1:{port}")
        assert running_cluster() is None


def test_no_address_file_is_no_cluster(address_file):
    assert running_cluster() is None


def test_ray_address_is_joined_as_set_and_local_means_none(address_file, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.9:6379")  # not dialled: refused later if dead
    found = running_cluster()
    assert found == FoundCluster("10.0.0.9:6379", "RAY_ADDRESS names a Ray cluster (10.0.0.9:6379)")
    monkeypatch.setenv("RAY_ADDRESS", "local")
    with _server(SETTINGS_FRAME) as port:
        address_file.write_text(f"127.0.0.1:{port}")
        assert running_cluster() is None


def test_a_local_ray_is_one_of_its_own_whatever_the_address_file_says():
    assert local_ray_settings(LocalRayOptions(num_cpus=2))["address"] == "local"


def test_the_early_ray_stands_aside_for_a_running_cluster(monkeypatch):
    import ray

    inits = []
    monkeypatch.setattr(ray, "init", lambda **kwargs: inits.append(kwargs))
    monkeypatch.setattr(local_ray, "running_cluster", lambda: FoundCluster("auto", "found"))
    early = LocalRay(LocalRayOptions())
    early._run()  # what ``LocalRay.start`` runs on its thread
    assert inits == []
    assert early.take() is False
    assert early.taken is False  # the sweep joins the cluster; nothing of this to shut down
