"""python -m study.score: voxel-wise anomaly maps of new scans with a trained detector.

    python -m study.score --model CHECKPOINT_DIR --input scan.nii.gz --output map.nii.gz
    python -m study.score --model model.pt --input scans/ --output maps/
    python -m study.score --model RUN_ID --input scan.nii.gz --output map.nii.gz   # runs:/RUN_ID/model
    python -m study.score --model models:/NAME@champion --tracking-uri http://127.0.0.1:5000 --input ... --output ...

``--model`` takes a checkpoint folder, a model.pt, an MLflow run id, ``runs:/ID/model`` or
``models:/<model_id>``, ``models:/NAME@ALIAS`` (``models:/NAME/VERSION``): the model.pt inside the MLflow model is
used. MLflow references are read from ``--tracking-uri``, else ``$MLFLOW_TRACKING_URI``, else
``sqlite:///results/mlflow.db``; the command says which store it reads.
A map has the scan's shape and affine; slices the detector's preprocessing drops and voxels outside the
brain (image > 0, or the brain mask of a manifest) are 0. A folder is scored file by file when it holds
``*.nii``/``*.nii.gz`` files directly (each map keeps its scan's name), otherwise subject by subject in any
known layout (HCP, BraTS, CSV manifest; ``<subject>.nii.gz``). Bad input exits with code 2 and names the file.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from trainables.data.errors import DataError
from trainables.data.layouts import NIFTI_SUFFIXES
from trainables.inference import ModelError, load_detector, resolve_device, score_folder, score_volume, write_map

DEFAULT_TRACKING_URI = "sqlite:///results/mlflow.db"
SQLITE = "sqlite:///"


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--model, --tracking-uri and --device, shared with study.evaluate."""
    parser.add_argument(
        "--model",
        required=True,
        help="checkpoint folder, model.pt file, MLflow run id of a trial, runs:/ID/model, models:/<model_id> or "
        "models:/NAME@ALIAS",
    )
    parser.add_argument(
        "--tracking-uri",
        help=f"MLflow store of run ids and models (default: $MLFLOW_TRACKING_URI, else {DEFAULT_TRACKING_URI})",
    )
    parser.add_argument("--device", default="auto", help="torch device: auto (GPU if any), cpu, cuda, cuda:1, ...")


def store_uri(given: str | None) -> tuple[str, str]:
    """(the MLflow store to read, where that choice came from): --tracking-uri, $MLFLOW_TRACKING_URI or the default."""
    if given:
        return given, "--tracking-uri"
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"], "MLFLOW_TRACKING_URI"
    return DEFAULT_TRACKING_URI, "default"


def resolve_model(model: str, tracking_uri: str | None, scratch: Path) -> Path:
    """A local model.pt or checkpoint folder for ``model``: the path itself, or the model.pt of an MLflow model."""
    from study.tracking.models import fetch_model_file, model_uri

    path = Path(model).expanduser()
    if path.exists():
        return path
    uri = model_uri(model)
    if uri is None:
        raise ModelError(f"{model}: no such checkpoint folder or model.pt file (nor a run id, runs:/ or models:/ URI)")
    tracking_uri, chosen_by = store_uri(tracking_uri)
    print(f"reading {model} from the MLflow store {tracking_uri} ({chosen_by})", file=sys.stderr, flush=True)
    if tracking_uri.startswith(SQLITE) and not Path(tracking_uri[len(SQLITE) :]).is_file():
        # MLflow would create an empty store there and then report a missing run: say what is really wrong
        raise ModelError(f"{model}: tracking store {tracking_uri[len(SQLITE) :]} not found ({chosen_by})")
    return fetch_model_file(uri, tracking_uri, scratch)


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
