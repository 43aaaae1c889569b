"""Applying a trained detector: study.score maps new scans, study.evaluate scores a labelled folder.

A tiny AE is trained in-process on the healthy train slices of a tiny synthetic cohort (shared with
tests/unit/test_splits.py through pytest's session folder); a bright lesion is planted in a held-out
healthy scan, and its map must peak there, in the scan's own grid and orientation.
"""

from __future__ import annotations

import json
import shutil
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlparse

import nibabel as nib
import numpy as np
import pytest
import torch
from nibabel.orientations import axcodes2ornt, ornt_transform
from scipy import ndimage as ndi
from torch.utils.data import DataLoader

from study import evaluate as evaluate_cli
from study import score as score_cli
from trainables.checkpoint import BestRecord, TrainingProgress, model_record, save_checkpoint, state_dicts
from trainables.data.cache import SplitConfig, prepare_slice_cache
from trainables.data.dataset import SliceDataset
from trainables.data.preprocess import PreprocessConfig
from trainables.data.synthetic import CohortPaths, ensure_cohort
from trainables.families import create_family
from trainables.inference import load_detector, score_volume
from trainables.metric_names import DETECTION_METRICS
from trainables.metrics import evaluate

HEALTHY, LESION = 6, 4  # as tests/unit/test_splits.py, so one cohort serves both
STEPS = 150
CASE = "PLANTED_001"


@dataclass(frozen=True)
class Data:
    cohort: CohortPaths
    cache: Path


@dataclass(frozen=True)
class Planted:
    folder: Path  # BraTS layout: <CASE>/<CASE>_t2.nii.gz and <CASE>_seg.nii.gz
    scan: Path
    lesion: np.ndarray  # bool, in the scan's grid


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Data:
    base = tmp_path_factory.getbasetemp()
    cohort = ensure_cohort(base / f"cohort-h{HEALTHY}-l{LESION}", HEALTHY, LESION, seed=0)
    cache = prepare_slice_cache(
        cohort.healthy_dir, cohort.lesion_dir, base / "slice-cache", PreprocessConfig(), SplitConfig()
    )
    return Data(cohort, cache)


@pytest.fixture(scope="module")
def trained(data: Data, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint folder (state.pt, model.pt) of a tiny AE trained on healthy train slices."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    family = create_family("ae", {"latent_dim": 16, "width": 4, "lr": 2e-3})
    nets = family.build(32)
    opts = family.optimizers(nets)
    loader = DataLoader(SliceDataset(data.cache, "train"), batch_size=16, shuffle=True, drop_last=True)
    step = 0
    while step < STEPS:
        for batch in loader:
            family.train_step(nets, opts, batch["image"])
            step += 1
            if step == STEPS:
                break
    val = evaluate(family, nets, DataLoader(SliceDataset(data.cache, "val"), batch_size=128), torch.device("cpu"))
    best = BestRecord(epoch=1, score=val["pixel_auroc"], metrics={f"val_{k}": v for k, v in val.items()})
    model = model_record(family, 32, asdict(PreprocessConfig()), state_dicts(nets), best)
    folder = tmp_path_factory.mktemp("checkpoint")
    save_checkpoint(folder, nets=nets, opts=opts, progress=TrainingProgress(epoch=1, best=best), model=model)
    return folder


@pytest.fixture(scope="module")
def planted(data: Data, tmp_path_factory: pytest.TempPathFactory) -> Planted:
    """A held-out healthy scan with a bright sphere (radius 6 voxels) at its deepest brain voxel."""
    splits = json.loads((data.cache / "splits.json").read_text())
    subject = next(s for s in splits["test"] if (data.cohort.healthy_dir / s).is_dir())
    img = nib.load(data.cohort.healthy_dir / subject / "T1w" / "T2w_acpc_dc_restore_brain.nii.gz")
    volume = img.get_fdata(dtype=np.float32)
    brain = volume > 0
    centre = np.unravel_index(np.argmax(ndi.distance_transform_edt(brain)), brain.shape)
    grid = np.indices(brain.shape)
    lesion = sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= 6**2
    volume[lesion] = 2.0 * volume[brain].max()
    folder = tmp_path_factory.mktemp("planted")
    scan = _save(folder / CASE / f"{CASE}_t2.nii.gz", volume, img.affine)
    _save(folder / CASE / f"{CASE}_seg.nii.gz", lesion.astype(np.uint8) * 2, img.affine)
    return Planted(folder, scan, lesion)


def _save(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def _score(model: Path | str, scan: Path, out: Path, *extra: str) -> tuple[int, nib.Nifti1Image | None]:
    code = score_cli.main(
        ["--model", str(model), "--input", str(scan), "--output", str(out), "--device", "cpu", *extra]
    )
    return code, (nib.load(out) if code == 0 else None)


def _threshold_model(folder: Path) -> Path:
    """model.pt of the untrained intensity-threshold baseline."""
    family = create_family("threshold")
    path = folder / "model.pt"
    torch.save(model_record(family, 32, asdict(PreprocessConfig()), {}, BestRecord()), path)
    return path


@pytest.mark.parametrize("family", ["ae", "threshold"])
def test_score_map_peaks_inside_the_planted_lesion(
    family: str, trained: Path, planted: Planted, tmp_path: Path
) -> None:
    model = trained if family == "ae" else _threshold_model(tmp_path)
    code, out = _score(model, planted.scan, tmp_path / "map.nii.gz")
    assert code == 0
    scan = nib.load(planted.scan)
    assert out.shape == scan.shape
    np.testing.assert_allclose(out.affine, scan.affine, atol=1e-6)
    values = out.get_fdata()
    healthy = (scan.get_fdata() > 0) & ~planted.lesion
    assert values[planted.lesion].mean() > values[healthy].mean()
    assert not values[scan.get_fdata() == 0].any()  # background stays 0
    peak = np.unravel_index(np.argmax(values), values.shape)
    assert ndi.binary_dilation(planted.lesion, iterations=2)[peak], f"peak {peak} is not at the lesion"


def test_map_follows_the_input_orientation(trained: Path, planted: Planted, tmp_path: Path) -> None:
    family, nets, record = load_detector(trained)
    reference, _ = score_volume(family, nets, record, planted.scan)
    source = nib.load(planted.scan)
    for codes in ("LPS", "ALI"):  # flips only; flips and a permutation
        to_codes = ornt_transform(axcodes2ornt("RAS"), axcodes2ornt(tuple(codes)))
        scan = _save(tmp_path / f"{codes}.nii.gz", source.get_fdata(dtype=np.float32), source.affine)
        scan = _save(scan, *_reoriented(nib.load(scan), to_codes))
        if codes == "LPS":  # through the CLI, as a user would
            code, out = _score(trained, scan, tmp_path / f"{codes}_map.nii.gz")
            assert code == 0
            data, affine = out.get_fdata(), out.affine
        else:
            data, affine = score_volume(family, nets, record, scan)
        assert nib.aff2axcodes(affine) == tuple(codes)
        np.testing.assert_allclose(affine, nib.load(scan).affine, atol=1e-6)
        back = nib.Nifti1Image(np.asarray(data, np.float32), affine).as_reoriented(
            ornt_transform(axcodes2ornt(codes), axcodes2ornt("RAS"))
        )
        np.testing.assert_allclose(back.get_fdata(), reference, atol=1e-5)


def _reoriented(img: nib.Nifti1Image, transform: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    moved = img.as_reoriented(transform)
    return np.asarray(moved.dataobj, dtype=np.float32), moved.affine


def test_checkpoint_is_self_contained(trained: Path, planted: Planted, tmp_path: Path) -> None:
    record = torch.load(trained / "model.pt", map_location="cpu", weights_only=False)
    assert {"family", "hparams", "image_size", "preprocess", "nets", "val_metrics"} <= set(record)
    assert record["preprocess"] == asdict(PreprocessConfig()) and record["hparams"]["latent_dim"] == 16
    alone = tmp_path / "elsewhere" / "detector.pt"
    alone.parent.mkdir()
    shutil.copy(trained / "model.pt", alone)  # no state.pt, no cache, no config beside it
    code_dir, from_dir = _score(trained, planted.scan, tmp_path / "a.nii.gz")
    code_file, from_file = _score(alone, planted.scan, tmp_path / "b.nii.gz")
    assert code_dir == code_file == 0
    np.testing.assert_array_equal(from_dir.get_fdata(), from_file.get_fdata())


def test_mlflow_run_id(trained: Path, planted: Planted, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("score", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = client.create_run(experiment).info.run_id
    client.log_artifact(run_id, str(trained / "model.pt"), "model")  # as study.tracking logs a trial's model
    code, out = _score(run_id, planted.scan, tmp_path / "map.nii.gz", "--tracking-uri", uri)
    assert code == 0 and out.shape == nib.load(planted.scan).shape
    unknown = uuid.uuid4().hex
    assert _score(unknown, planted.scan, tmp_path / "x.nii.gz", "--tracking-uri", uri)[0] == 2
    assert unknown in capsys.readouterr().err


def test_mlflow_model_references(
    trained: Path, planted: Planted, data: Data, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """A trial's detector as an MLflow 3 logged model, registered as the champion, scored by each reference."""
    import mlflow.pyfunc
    from mlflow.tracking import MlflowClient

    from study.config import StudyConfig
    from study.tracking.models import log_model_file, register_winners
    from trainables.objective import Objective

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("score", artifact_location=(tmp_path / "artifacts").as_uri())
    run_ids = [client.create_run(experiment).info.run_id for _ in range(2)]
    model_ids = [log_model_file(client, run_id, trained / "model.pt") for run_id in run_ids]
    # once per run: a trial restarted after its final record (reported again) or resumed logs no second model
    assert log_model_file(client, run_ids[0], trained / "model.pt") == model_ids[0]
    assert len(client.search_logged_models([experiment], f"source_run_id = '{run_ids[0]}'")) == 1
    for run_id, model_id in zip(run_ids, model_ids, strict=True):
        logged = client.get_logged_model(model_id)  # an output of its run, with its signature
        assert logged.source_run_id == run_id and logged.name == "model" and logged.status == "READY"
        assert client.get_run(run_id).info.status == "RUNNING"  # the trial's callback ends the run, not the model
        mlmodel = mlflow.models.Model.load(str(Path(urlparse(logged.artifact_location).path) / "MLmodel"))
        assert mlmodel.model_id == model_id and mlmodel.signature is not None and mlmodel.saved_input_example_info
    config = StudyConfig(name="score", objectives=[Objective("val_pixel_auroc"), Objective("val_slice_auroc")])
    rows = [
        {"status": "completed", "val_pixel_auroc": 0.9, "val_slice_auroc": 0.6, "mlflow_run_id": run_ids[0]},
        {"status": "completed", "val_pixel_auroc": 0.8, "val_slice_auroc": 0.7, "mlflow_run_id": run_ids[1]},
    ]
    registered = register_winners(client, config, rows)
    assert registered == {"champion": "1", "best_val_pixel_auroc": "1", "best_val_slice_auroc": "2"}
    assert register_winners(client, config, rows) == registered  # a resumed study adds no version
    champion = client.get_model_version_by_alias("score-detector", "champion")
    assert champion.run_id == run_ids[0] and champion.source == f"models:/{model_ids[0]}"  # the logged model

    reference = _score(trained, planted.scan, tmp_path / "ref.nii.gz")[1]
    references = (run_ids[0], f"runs:/{run_ids[0]}/model", f"models:/{model_ids[0]}", "models:/score-detector@champion")
    for model in references:
        code, out = _score(model, planted.scan, tmp_path / "map.nii.gz", "--tracking-uri", uri)
        assert code == 0, model
        np.testing.assert_array_equal(out.get_fdata(), reference.get_fdata())
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # MLflow's convention where --tracking-uri is not given
    capsys.readouterr()
    code, out = _score("models:/score-detector@champion", planted.scan, tmp_path / "env.nii.gz")
    assert code == 0 and f"MLflow store {uri} (MLFLOW_TRACKING_URI)" in capsys.readouterr().err
    np.testing.assert_array_equal(out.get_fdata(), reference.get_fdata())
    argv = ["--model", "models:/score-detector@champion", "--tracking-uri", uri, "--data", str(planted.folder)]
    assert evaluate_cli.main([*argv, "--out", str(tmp_path / "eval"), "--device", "cpu"]) == 0
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["model"] == "models:/score-detector@champion"

    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model("models:/score-detector@best_val_slice_auroc")
    images = SliceDataset(data.cache, "test")[0]["image"].numpy()[None].astype(np.float32)
    maps = model.predict(images)
    family, nets, record = load_detector(trained)
    assert maps.shape == images.shape and maps.dtype == np.float32
    np.testing.assert_allclose(maps, family.score(nets, torch.from_numpy(images)).pixel_map.numpy(), atol=1e-6)


def test_bad_inputs_exit_2_naming_the_file(
    trained: Path, planted: Planted, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-such-checkpoint"
    four_d = _save(tmp_path / "4d.nii.gz", np.ones((8, 9, 10, 2), np.float32), np.eye(4))
    store = f"sqlite:///{tmp_path / 'absent.db'}"
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a detector")
    cases = [
        (missing, planted.scan, (), str(missing)),
        (uuid.uuid4().hex, planted.scan, ("--tracking-uri", store), "absent.db"),
        (garbage, planted.scan, (), str(garbage)),
        (trained, four_d, (), str(four_d)),
        (trained, tmp_path / "absent.nii.gz", (), str(tmp_path / "absent.nii.gz")),
    ]
    for model, scan, extra, named in cases:
        assert _score(model, scan, tmp_path / "map.nii.gz", *extra)[0] == 2, named
        err = capsys.readouterr().err
        assert named in err, err
    assert not (tmp_path / "absent.db").exists()  # a wrong store is not created on the way
    case = tmp_path / "bad" / "BAD_001"
    _save(case / "BAD_001_t2.nii.gz", nib.load(planted.scan).get_fdata(dtype=np.float32), np.eye(4))
    seg = _save(case / "BAD_001_seg.nii.gz", np.zeros((10, 10, 10), np.uint8), np.eye(4))
    argv = ["--model", str(trained), "--data", str(tmp_path / "bad"), "--out", str(tmp_path / "eval")]
    assert evaluate_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert str(seg) in err and "shape" in err


def test_score_folders(trained: Path, planted: Planted, tmp_path: Path) -> None:
    # a dataset layout: one map per subject; a flat folder: one map per file, named as the file
    assert (
        score_cli.main(["--model", str(trained), "--input", str(planted.folder), "--output", str(tmp_path / "a")]) == 0
    )
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [f"{CASE}.nii.gz"]
    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(planted.scan, flat / "scan1.nii.gz")
    assert score_cli.main(["--model", str(trained), "--input", str(flat), "--output", str(tmp_path / "b")]) == 0
    assert nib.load(tmp_path / "b" / "scan1.nii.gz").shape == nib.load(planted.scan).shape
    assert score_cli.main(["--model", str(trained), "--input", str(flat), "--output", str(flat)]) == 2


def test_evaluate_writes_metrics_and_figures(
    trained: Path, data: Data, planted: Planted, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eval"
    argv = ["--model", str(trained), "--data", str(data.cohort.lesion_dir), "--lesion-data", str(planted.folder)]
    assert evaluate_cli.main([*argv, "--out", str(out), "--device", "cpu"]) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert list(report["metrics"]) == list(DETECTION_METRICS)
    metrics = report["metrics"]
    assert report["subjects"] == report["lesion_subjects"] == LESION + 1
    # lesion subjects alone: lesion-free slices are the negatives, healthy-brain pixels the pixel negatives
    assert 0.5 < metrics["pixel_auroc"] <= 1 and 0 <= metrics["slice_auroc"] <= 1
    assert metrics["dice"] is not None and report["threshold"] is not None  # the val threshold in model.pt
    for name in report["figures"]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {"eval_roc.png", "eval_examples.png", "eval_histograms.png"} == set(report["figures"])
    assert "pixel_auroc" in capsys.readouterr().out
