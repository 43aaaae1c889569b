"""A trained detector in MLflow's model format (pyfunc): float32 slices (N,1,H,W) in, pixel anomaly maps out.

The MLflow model folder holds the detector's self-contained model.pt as its artifact ``model.pt``
(``artifacts/model.pt``); ``predict`` returns float32 maps (N,1,H,W) of the slices, preprocessed as the
detector's training slices were. The pyfunc class is loaded from code (MLflow's "models from code":
``mlflow_model_code.py`` is copied into the folder), so loading the model unpickles no Python object, and
the weights are read with ``torch.load(weights_only=True)``. The package that holds ``trainables`` (this
project) must be importable where the model is loaded.
"""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import torch
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec

from trainables.checkpoint import load_model

MODEL_ARTIFACT = "model.pt"  # the detector's name among the MLflow model's artifacts
CODE = Path(__file__).with_name("mlflow_model_code.py")
REQUIREMENTS = ("mlflow", "torch", "numpy", "nibabel", "scipy", "scikit-learn", "matplotlib")  # what predict imports


class DetectorModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper of a model.pt: ``predict`` maps a float32 batch (N,1,H,W) to anomaly maps (N,1,H,W)."""

    def load_context(self, context: Any) -> None:
        self.family, self.nets, self.record = load_model(context.artifacts[MODEL_ARTIFACT])

    def predict(self, context, model_input, params=None):  # no type hints: MLflow would read them as a schema
        from trainables.inference import score_slices  # nibabel and matplotlib only once a prediction is asked

        x = np.asarray(model_input, dtype=np.float32)
        size = self.record["image_size"]
        if x.ndim != 4 or x.shape[1:] != (1, size, size):
            raise ValueError(f"expected float32 slices of shape (N, 1, {size}, {size}), got {x.shape}")
        return score_slices(self.family, self.nets, x[:, 0])[:, None]


def signature(image_size: int) -> ModelSignature:
    """Slices (N,1,S,S) float32 in, anomaly maps of the same shape out."""
    spec = TensorSpec(np.dtype(np.float32), (-1, 1, image_size, image_size))
    return ModelSignature(inputs=Schema([spec]), outputs=Schema([spec]))


def _model_arguments(model_pt: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(what the detector records of itself, the pyfunc arguments shared by save_model and log_model)."""
    record = torch.load(model_pt, map_location="cpu", weights_only=True)
    about = {"family": record["family"], "image_size": record["image_size"], "epoch": record["epoch"]}
    size = record["image_size"]
    arguments = {
        "python_model": str(CODE),
        "artifacts": {MODEL_ARTIFACT: str(model_pt)},
        "signature": signature(size),
        "input_example": np.zeros((1, 1, size, size), np.float32),  # checked on save
        "pip_requirements": [f"{name}=={version(name)}" for name in REQUIREMENTS],  # pinned: no inference run
        "metadata": {**about, "needs": "the lesion-study package (trainables) importable"},
    }
    return about, arguments


def save_detector_model(model_pt: Path, dest: Path) -> dict[str, Any]:
    """Write the MLflow model of ``model_pt`` into the new folder ``dest``; return what it records of the detector."""
    about, arguments = _model_arguments(model_pt)
    mlflow.pyfunc.save_model(str(dest), **arguments)
    return about


def log_detector_model(model_pt: Path, name: str, tags: dict[str, str] | None = None) -> Any:
    """Log ``model_pt`` as an MLflow 3 logged model ``name`` of the active run (fluent API); return its ModelInfo."""
    about, arguments = _model_arguments(model_pt)
    return mlflow.pyfunc.log_model(name=name, tags={**about, **(tags or {})}, **arguments)
