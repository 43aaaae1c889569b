"""Model references of study.score/evaluate, Ray storage on S3, and a detector as an MLflow pyfunc model."""

from __future__ import annotations

import pickle
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from study.cluster.block import read_study_block
from study.cluster.storage import ray_storage
from study.config import ConfigError, StudyConfig, load_config
from study.evaluate import model_name
from study.score import resolve_model
from study.tracking.models import aliases, model_uri, reference_name, registered_model_name
from trainables.checkpoint import BestRecord, model_record
from trainables.families import create_family
from trainables.inference import ModelError, score_slices

RUN = uuid.uuid4().hex


@pytest.mark.parametrize(
    ("text", "uri"),
    [
        (RUN, f"runs:/{RUN}/model"),
        (f"runs:/{RUN}/model", f"runs:/{RUN}/model"),
        (f"runs:/{RUN}", f"runs:/{RUN}/model"),
        (f"runs:/{RUN}/", f"runs:/{RUN}/model"),
        (f"runs:/{RUN}/model/artifacts/model.pt", f"runs:/{RUN}/model/artifacts/model.pt"),
        ("models:/lesion-detector@champion", "models:/lesion-detector@champion"),
        ("models:/smoke-detector@best_val_slice_auroc", "models:/smoke-detector@best_val_slice_auroc"),
        ("models:/smoke-detector/3", "models:/smoke-detector/3"),
        ("checkpoints/trial_1", None),
        ("model.pt", None),
        (RUN[:-1], None),  # 31 hex digits: a path, not a run id
    ],
)
def test_model_references(text: str, uri: str | None) -> None:
    assert model_uri(text) == uri


@pytest.mark.parametrize(
    "text", ["runs:/not-a-run/model", "runs:/", "models:/", "models:/name", "models:/name@", "models:/a@b c"]
)
def test_malformed_references_are_named(text: str) -> None:
    with pytest.raises(ModelError, match="expected"):
        model_uri(text)


def test_a_malformed_reference_exits_score_with_its_name(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="models:/only-a-name"):
        resolve_model("models:/only-a-name", "sqlite:///x.db", tmp_path)
    with pytest.raises(ModelError, match="nor a run id"):
        resolve_model(str(tmp_path / "absent"), "sqlite:///x.db", tmp_path)


def test_output_folder_names() -> None:
    assert reference_name(f"runs:/{RUN}/model") == RUN
    assert model_name(f"runs:/{RUN}/model") == RUN
    assert model_name(RUN) == RUN
    assert model_name("models:/smoke-detector@champion") == "smoke-detector@champion"
    assert model_name("models:/smoke-detector/3") == "smoke-detector-v3"


def test_aliases_and_registered_name(tmp_path: Path) -> None:
    assert aliases(0, "val_pixel_auroc") == ["champion", "best_val_pixel_auroc"]
    assert aliases(1, "val_slice_auroc") == ["best_val_slice_auroc"]
    assert registered_model_name(StudyConfig(name="gpu")) == "gpu-detector"
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"name": "gpu", "mlflow": {"registered_model": "brain-lesions"}}))
    assert registered_model_name(load_config(path)) == "brain-lesions"


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("mlflow", {"registered_model": "a/b"}, "mlflow.registered_model"),
        ("mlflow", {"registered_model": "name@alias"}, "mlflow.registered_model"),
        ("ray_storage", "s3:///prefix", "ray_storage"),
    ],
)
def test_bad_model_name_or_storage_is_named(tmp_path: Path, key: str, value: object, expected: str) -> None:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({key: value}))
    with pytest.raises(ConfigError, match=rf"{path}: key '{expected}'"):
        load_config(path)


def test_local_storage_is_the_study_folder(tmp_path: Path) -> None:
    config = StudyConfig(name="s", results_dir=str(tmp_path))
    storage = ray_storage(config)
    assert storage.filesystem is None and storage.path("train") == f"{tmp_path / 's'}/train"
    assert storage.uri(storage.path("train")) == f"{tmp_path / 's'}/train"


def test_s3_storage_uses_the_endpoint_and_keeps_no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "secret-" + uuid.uuid4().hex
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIATESTKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    storage = ray_storage(StudyConfig(name="gpu", ray_storage="s3://brain-mri/ray/"))
    assert storage.root == "brain-mri/ray/gpu" and storage.path("tune", "gpu") == "brain-mri/ray/gpu/tune/gpu"
    assert storage.uri(storage.path("train")) == "s3://brain-mri/ray/gpu/train"
    assert storage.filesystem.type_name == "s3"
    state = pickle.dumps(storage)  # as Tune keeps it in its experiment state and ships it to trials
    assert secret.encode() not in state and b"AKIATESTKEY" not in state
    assert b"127.0.0.1:9000" in state  # the endpoint travels; each process finds its own keys


def test_cluster_block_names_ray_storage(tmp_path: Path) -> None:
    block = {
        "storage": {"endpoint_url": "http://127.0.0.1:9000"},
        "data": {"healthy": "s3://b/hcp/", "lesion": "s3://b/brats/"},
        "cache_dir": str(tmp_path),
        "ray_storage": "s3://b/ray",
    }
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump({"metadata": {"study": block}}))
    study = read_study_block(path)
    assert study.ray_storage == "s3://b/ray"
    storage = ray_storage(StudyConfig(name="x", ray_storage=study.ray_storage), study)
    assert storage.root == "b/ray/x" and b"127.0.0.1:9000" in pickle.dumps(storage.filesystem)
    block["ray_storage"] = "/shared/ray"  # a file system every node mounts (NFS) is accepted as it is
    path.write_text(yaml.safe_dump({"metadata": {"study": block}}))
    assert read_study_block(path).ray_storage == "/shared/ray"
    block["ray_storage"] = "ray"  # a relative folder would be each node's own
    path.write_text(yaml.safe_dump({"metadata": {"study": block}}))
    with pytest.raises(ConfigError, match="metadata.study.ray_storage"):
        read_study_block(path)


def test_detector_as_pyfunc_model(tmp_path: Path) -> None:
    """save_detector_model writes an MLflow model whose predict gives the detector's own maps."""
    import mlflow.pyfunc

    from trainables.mlflow_model import save_detector_model

    torch.manual_seed(0)
    family = create_family("ae", {"latent_dim": 8, "width": 4})
    nets = family.build(32)
    weights = {k: net.state_dict() for k, net in nets.items()}
    record = model_record(family, 32, {"image_size": 32}, weights, BestRecord(epoch=1, metrics={"val_x": 0.5}))
    torch.save(record, tmp_path / "model.pt")
    about = save_detector_model(tmp_path / "model.pt", tmp_path / "mlmodel")
    assert about == {"family": "ae", "image_size": 32, "epoch": 1}
    assert (tmp_path / "mlmodel" / "artifacts" / "model.pt").read_bytes() == (tmp_path / "model.pt").read_bytes()
    assert not list((tmp_path / "mlmodel").glob("*.pkl"))  # models from code: nothing pickled
    model = mlflow.pyfunc.load_model(str(tmp_path / "mlmodel"))
    inputs = model.metadata.get_input_schema().inputs[0]
    assert inputs.type == np.dtype(np.float32) and inputs.shape == (-1, 1, 32, 32)
    batch = np.random.default_rng(0).standard_normal((3, 1, 32, 32)).astype(np.float32)
    maps = model.predict(batch)
    assert maps.shape == (3, 1, 32, 32) and maps.dtype == np.float32
    np.testing.assert_allclose(maps[:, 0], score_slices(family, nets.eval(), batch[:, 0]), rtol=1e-5, atol=1e-6)
    with pytest.raises(Exception, match="shape"):
        model.predict(batch[:, :, :16, :16])
