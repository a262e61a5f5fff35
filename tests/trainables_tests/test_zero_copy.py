"""ImageData travels as numpy arrays: out of band under pickle protocol 5, so Ray's object
store hands every process on a node views of one shared buffer instead of a copy each."""

from __future__ import annotations

import dataclasses
import pickle
import warnings
from pathlib import Path

import pytest
import torch

from trainables.config import TrialConfig
from trainables.data import TENSOR_FIELDS, DataOptions, ImageData, limit_train, load_dataset
from trainables.engine import fit


@pytest.fixture(scope="module", params=["digits", "digits-multilabel"])
def data(request) -> ImageData:
    return load_dataset(request.param, DataOptions(split_seed=0))


def synthetic(n: int = 300, size: int = 32) -> ImageData:
    """Big enough (900 KB) for Ray to keep it in the shared object store, not inline."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    y = torch.arange(n) % 2
    return ImageData("synthetic", ("a", "b"), x[:200], y[:200], x[200:], y[200:])


def assert_same_data(a: ImageData, b: ImageData) -> None:
    assert (a.name, a.classes, a.multilabel) == (b.name, b.classes, b.multilabel)
    for field in TENSOR_FIELDS:
        x, y = getattr(a, field), getattr(b, field)
        assert isinstance(y, torch.Tensor)
        assert (x.dtype, x.shape) == (y.dtype, y.shape), field
        assert torch.equal(x, y), field


def read_only_round_trip(data: ImageData) -> ImageData:
    """Unpickled as Ray's object store does it: protocol 5, buffers out of band, read-only."""
    buffers: list[pickle.PickleBuffer] = []
    payload = pickle.dumps(data, protocol=5, buffer_callback=buffers.append)
    frozen = [memoryview(b).toreadonly() for b in buffers]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the non-writable warning must not reach the trial
        return pickle.loads(payload, buffers=frozen)


def test_a_pickle_round_trip_keeps_values_dtypes_and_shapes(data):
    assert_same_data(data, pickle.loads(pickle.dumps(data)))
    assert_same_data(data, read_only_round_trip(data))


def test_the_tensors_travel_out_of_band_and_come_back_as_views(data):
    buffers: list[pickle.PickleBuffer] = []
    payload = pickle.dumps(data, protocol=5, buffer_callback=buffers.append)
    # A pickled tensor carries its bytes inside the payload; an array hands them over instead.
    assert len(buffers) == len(TENSOR_FIELDS)
    assert len(payload) < 2000
    back = pickle.loads(payload, buffers=buffers)
    for field in TENSOR_FIELDS:
        assert getattr(back, field).data_ptr() == getattr(data, field).data_ptr(), field


def test_a_non_contiguous_tensor_round_trips():
    base = synthetic()
    view = dataclasses.replace(base, train_x=base.train_x.transpose(2, 3))
    back = read_only_round_trip(view)
    assert torch.equal(back.train_x, view.train_x)


def test_limit_train_works_on_read_only_data(data):
    shared = read_only_round_trip(data)
    assert_same_data(limit_train(data, 100, seed=1), limit_train(shared, 100, seed=1))


def test_training_never_writes_into_the_data():
    """Shared tensors are read-only memory in spirit: a write would change every trial's data."""
    full = load_dataset("digits", DataOptions(split_seed=0))
    data = dataclasses.replace(full, train_x=full.train_x[:120], train_y=full.train_y[:120])
    before = {f: getattr(data, f).clone() for f in TENSOR_FIELDS}
    cfg = TrialConfig(backbone="smallcnn", batch_size=32, max_epochs=1, augment=True)
    list(fit(cfg, data, torch.device("cpu")))
    for field in TENSOR_FIELDS:
        assert torch.equal(getattr(data, field), before[field]), field


@pytest.fixture
def local_ray():
    import ray

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def _shared_mapping(address: int) -> str | None:
    """The /proc/self/maps line of a shared mapping holding ``address``, if any."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        span, perms = line.split()[:2]
        low, high = (int(v, 16) for v in span.split("-"))
        if low <= address < high:
            return line if perms.endswith("s") else None
    return None


@pytest.mark.slow
def test_ray_get_gives_views_of_the_object_store(local_ray):
    data = synthetic()
    ref = local_ray.put(data)
    first, second = local_ray.get(ref), local_ray.get(ref)
    assert_same_data(data, first)
    for field in ("train_x", "val_x"):
        a, b = getattr(first, field), getattr(second, field)
        # Two gets, one buffer: no copy was made for either.
        assert a.data_ptr() == b.data_ptr() != getattr(data, field).data_ptr()
        if Path("/proc/self/maps").exists():
            assert _shared_mapping(a.data_ptr()) is not None
