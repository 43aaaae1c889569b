"""python -m study.evaluate: every detection metric and the figures of a trained detector on a labelled folder.

    python -m study.evaluate --model CHECKPOINT_DIR --data /data/brats2019
    python -m study.evaluate --model RUN_ID --data /data/hcp_holdout --lesion-data /data/brats2019 --out DIR
    python -m study.evaluate --model models:/NAME@champion --tracking-uri http://127.0.0.1:5000 --data /data/brats2019

Folders may be in any supported layout (HCP, BraTS, CSV manifest); subjects with a lesion mask are lesion
subjects, the others healthy. Scans are preprocessed with the detector's own recorded settings. Slices are
labelled by their lesion masks, so lesion subjects' lesion-free slices are the negatives of the slice metrics
and a folder of lesion subjects alone is enough. ``dice`` uses the threshold chosen on val during training
(``--threshold`` overrides it). Writes ``metrics.json`` and the figures into ``--out`` (default
``results/evaluate/<model>-<data>``) and prints the metrics. Bad input exits with code 2 and names the file.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

from study.score import add_model_arguments, open_detector
from study.tracking.models import RUN_ID, reference_name
from trainables.data.errors import DataError
from trainables.inference import FolderEvaluation, ModelError, evaluate_folder
from trainables.metric_names import DETECTION_METRICS

DEFAULT_ROOT = Path("results") / "evaluate"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line arguments of study.evaluate."""
    parser = argparse.ArgumentParser(prog="python -m study.evaluate", description=__doc__.split("\n")[0])
    add_model_arguments(parser)
    parser.add_argument("--data", type=Path, required=True, help="labelled folder (HCP, BraTS or manifest layout)")
    parser.add_argument("--lesion-data", type=Path, help="a second labelled folder, e.g. lesion cases beside --data")
    parser.add_argument("--out", type=Path, help=f"output folder (default {DEFAULT_ROOT}/<model>-<data>)")
    parser.add_argument("--threshold", type=float, help="pixel threshold for dice (default: the one chosen on val)")
    return parser.parse_args(argv)


def model_name(model: str) -> str:
    """A short name for output folders: the run id or registered NAME@ALIAS, or the checkpoint folder's name."""
    if RUN_ID.fullmatch(model) or model.startswith(("runs:/", "models:/")):
        return reference_name(model)
    path = Path(model).expanduser().absolute()
    return path.parent.name if path.is_file() else path.name


def report(result: FolderEvaluation, args: argparse.Namespace, record: dict[str, Any]) -> dict[str, Any]:
    """The content of metrics.json (NaN, an undefined metric, is written as null)."""
    return {
        "model": args.model,
        "model_file": record["source"],
        "family": record["family"],
        "data": [str(p) for p in (args.data, args.lesion_data) if p is not None],
        "subjects": result.subjects,
        "lesion_subjects": result.lesion_subjects,
        "slices": result.slices,
        "threshold": result.threshold,
        "metrics": {name: _finite_or_none(result.metrics[name]) for name in DETECTION_METRICS},
        "figures": [p.name for p in result.figures],
    }


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def print_table(metrics: dict[str, float]) -> None:
    """The metrics, one per line, in the order of DETECTION_METRICS."""
    width = max(map(len, DETECTION_METRICS))
    print(f"{'metric':<{width}}  value")
    for name in DETECTION_METRICS:
        value = metrics[name]
        print(f"{name:<{width}}  {value:.4f}" if math.isfinite(value) else f"{name:<{width}}  n/a")


def main(argv: list[str] | None = None) -> int:
    """Evaluate; 0 on success, 2 with a message naming the file on bad input."""
    args = parse_args(argv)
    out = args.out or DEFAULT_ROOT / f"{model_name(args.model)}-{args.data.expanduser().absolute().name}"
    folders = [p for p in (args.data, args.lesion_data) if p is not None]
    try:
        with tempfile.TemporaryDirectory(prefix="study-evaluate-") as scratch:
            family, nets, record = open_detector(args, Path(scratch))
        print(f"detector: {record['family']} from {record['source']}", flush=True)
        result = evaluate_folder(family, nets, record, folders, out, args.threshold, progress=print)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(report(result, args, record), indent=1) + "\n")
    except (DataError, ModelError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{result.subjects} subjects ({result.lesion_subjects} with lesions), {result.slices} slices")
    print_table(result.metrics)
    print(f"wrote {out / 'metrics.json'} and {len(result.figures)} figures")
    return 0


if __name__ == "__main__":
    sys.exit(main())
