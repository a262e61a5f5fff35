"""The sweep's data as an MLflow dataset input: name, digest, schema and class counts."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from trainables.contract import (
    DATASET_CONTEXT,
)
from trainables.edge.tracking._store import client

if TYPE_CHECKING:
    from trainables.data import ImageData


@dataclass(frozen=True)
class DatasetRecord:
    """A sweep's data as an MLflow dataset: computed once on the driver, logged by every run."""

    name: str
    digest: str  # of the pixels and labels of every split: another split, another digest
    source: str  # the --dataset spec as given
    schema: str  # JSON: the images' and labels' tensor specs
    profile: str  # JSON: images and class counts per split
    split_seed: int = 0  # of the train/val split hashed

    def entity(self):
        from mlflow.entities import Dataset

        return Dataset(
            name=self.name,
            digest=self.digest,
            source_type="local",
            source=json.dumps({"uri": self.source}),
            schema=self.schema,
            profile=self.profile,
        )

    def for_split(self, data: ImageData) -> DatasetRecord:
        """The record of ``data`` split again (a confirmation run of --confirm-splits): the
        same images pooled otherwise, so the digest follows from this one and the seed,
        without hashing the pixels again in every trial."""
        if data.split_seed == self.split_seed:
            return self
        digest = hashlib.sha256(f"{self.digest} split {data.split_seed}".encode())
        return dataclasses.replace(
            self,
            digest=digest.hexdigest()[:16],
            profile=json.dumps(_profile(data)),
            split_seed=data.split_seed,
        )


def dataset_record(data: ImageData, spec: str) -> DatasetRecord:
    from trainables.data import TENSOR_FIELDS

    digest = hashlib.sha256(json.dumps([data.name, list(data.classes)]).encode())
    for field in TENSOR_FIELDS:
        values = np.ascontiguousarray(getattr(data, field).numpy())
        digest.update(f"{field}{values.dtype}{values.shape}".encode())
        digest.update(values.reshape(-1).view(np.uint8))  # a view: the pixels are not copied
    return DatasetRecord(
        name=data.name,
        digest=digest.hexdigest()[:16],
        source=spec,
        schema=json.dumps({"mlflow_tensorspec": _tensor_specs(data)}),
        profile=json.dumps(_profile(data)),
        split_seed=data.split_seed,
    )


def _tensor_specs(data: ImageData) -> dict[str, str]:
    from mlflow.types.schema import Schema, TensorSpec

    def spec(tensor, name: str) -> str:
        shape = (-1, *tensor.shape[1:])
        return Schema([TensorSpec(np.dtype(str(tensor.numpy().dtype)), shape, name)]).to_json()

    return {"features": spec(data.train_x, "image"), "targets": spec(data.train_y, "label")}


def _profile(data: ImageData) -> dict[str, Any]:
    """Flat, as the UI's dataset panel lists a profile's entries one per line."""
    from trainables.data import SPLITS

    profile: dict[str, Any] = {
        "classes": len(data.classes),
        "multilabel": data.multilabel,
        "split_seed": data.split_seed,
    }
    for split in SPLITS:
        counts = data.class_counts(split).tolist()
        profile[f"{split}_images"] = int(getattr(data, f"{split}_y").shape[0])
        profile[f"{split}_class_counts"] = dict(zip(data.classes, counts, strict=True))
    return profile


def log_dataset(uri: str, run_id: str, record: DatasetRecord) -> None:
    from mlflow.entities import DatasetInput, InputTag

    context = InputTag("mlflow.data.context", DATASET_CONTEXT)
    client(uri).log_inputs(run_id, datasets=[DatasetInput(record.entity(), tags=[context])])
