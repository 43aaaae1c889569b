"""python -m study.score: voxel-wise anomaly maps of new scans with a trained detector.

    python -m study.score --model CHECKPOINT_DIR --input scan.nii.gz --output map.nii.gz
    python -m study.score --model model.pt --input scans/ --output maps/
    python -m study.score --model RUN_ID --input scan.nii.gz --output map.nii.gz   # the run's model/model.pt

A map has the scan's shape and affine; slices the detector's preprocessing drops and voxels outside the
brain (image > 0, or the brain mask of a manifest) are 0. A folder is scored file by file when it holds
``*.nii``/``*.nii.gz`` files directly (each map keeps its scan's name), otherwise subject by subject in any
known layout (HCP, BraTS, CSV manifest; ``<subject>.nii.gz``). Bad input exits with code 2 and names the file.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

from trainables.data.errors import DataError
from trainables.data.layouts import NIFTI_SUFFIXES
from trainables.inference import ModelError, load_detector, resolve_device, score_folder, score_volume, write_map

DEFAULT_TRACKING_URI = "sqlite:///results/mlflow.db"
MODEL_ARTIFACT = "model/model.pt"  # where study.tracking logs each trial's chosen detector
RUN_ID = re.compile(r"[0-9a-f]{32}")  # MLflow run ids are uuid4 hex strings
SQLITE = "sqlite:///"


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--model, --tracking-uri and --device, shared with study.evaluate."""
    parser.add_argument(
        "--model", required=True, help="checkpoint folder, model.pt file, or MLflow run id of a trial (its model.pt)"
    )
    parser.add_argument(
        "--tracking-uri", default=DEFAULT_TRACKING_URI, help=f"MLflow store of run ids (default {DEFAULT_TRACKING_URI})"
    )
    parser.add_argument("--device", default="auto", help="torch device: auto (GPU if any), cpu, cuda, cuda:1, ...")


def resolve_model(model: str, tracking_uri: str, scratch: Path) -> Path:
    """A local model.pt or checkpoint folder for ``model``: the path itself, or an MLflow run's artifact."""
    path = Path(model).expanduser()
    if path.exists():
        return path
    if not RUN_ID.fullmatch(model):
        raise ModelError(f"{model}: no such checkpoint folder or model.pt file (nor an MLflow run id)")
    if tracking_uri.startswith(SQLITE) and not Path(tracking_uri[len(SQLITE) :]).is_file():
        # MLflow would create an empty store there and then report a missing run: say what is really wrong
        raise ModelError(f"MLflow run {model}: tracking store {tracking_uri[len(SQLITE) :]} not found (--tracking-uri)")
    from mlflow.artifacts import download_artifacts  # slow import, only for run ids

    try:
        local = download_artifacts(
            run_id=model, artifact_path=MODEL_ARTIFACT, dst_path=str(scratch), tracking_uri=tracking_uri
        )
    except Exception as err:  # MlflowException, OSError, HTTP errors: all mean the same to the user
        raise ModelError(f"MLflow run {model} at {tracking_uri}: cannot fetch {MODEL_ARTIFACT} ({err})") from err
    return Path(local)


def open_detector(args: argparse.Namespace, scratch: Path) -> tuple[Any, Any, dict[str, Any]]:
    """(family, nets, record) of ``--model`` on ``--device``."""
    return load_detector(resolve_model(args.model, args.tracking_uri, scratch), resolve_device(args.device))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line arguments of study.score; a scan's --output must be a NIfTI file name."""
    parser = argparse.ArgumentParser(prog="python -m study.score", description=__doc__.split("\n")[0])
    add_model_arguments(parser)
    parser.add_argument("--input", type=Path, required=True, help="a NIfTI scan, or a folder of scans")
    parser.add_argument("--output", type=Path, required=True, help="map file (.nii.gz) for a scan, folder for a folder")
    args = parser.parse_args(argv)
    if not args.input.is_dir() and not args.output.name.endswith(NIFTI_SUFFIXES):
        parser.error(f"--output {args.output}: a scan's map must be a .nii.gz or .nii file")
    return args


def main(argv: list[str] | None = None) -> int:
    """Score the scan(s); 0 on success, 2 with a message naming the file on bad input."""
    args = parse_args(argv)
    try:
        with tempfile.TemporaryDirectory(prefix="study-score-") as scratch:
            family, nets, record = open_detector(args, Path(scratch))
        print(f"detector: {record['family']} from {record['source']}", flush=True)
        if args.input.is_dir():
            written = score_folder(family, nets, record, args.input, args.output, progress=print)
            print(f"wrote {len(written)} maps into {args.output}")
            return 0
        data, affine = score_volume(family, nets, record, args.input)
        write_map(data, affine, args.output, like=args.input)
    except (DataError, ModelError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.output}: shape {data.shape}, values {data.min():.4g} .. {data.max():.4g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
