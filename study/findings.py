"""python -m study.findings: the README's "What the default study finds" from a finished study.

Reads results/<study>/trials.csv (default: the embedded default study) and writes docs/<study>-study/table.md
(a markdown table: the threshold row, then every trial by run name and image size; test figures overall and per
lesion appearance; then, per appearance, the trial chosen on val for it beside the overall winner) and
copies its pareto.png beside it. Regenerate both with ``python -m study.run && python -m study.findings``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

from study.config import load_config
from study.results import (
    APPEARANCE_CHOICE,
    APPEARANCE_SHOWN,
    TRIALS_CSV,
    appearance_champions,
    best_trial,
    read_trials_csv,
)
from study.tracking.names import row_run_name
from trainables.numbers import is_finite

REPO = Path(__file__).resolve().parent.parent
COLUMNS = (
    ("val_pixel_auroc", "val pix AUROC"),
    ("val_slice_auroc", "val slice AUROC"),
    ("test_pixel_auroc", "test pix AUROC"),
    ("test_pixel_auprc", "test pix AUPRC"),
    ("test_dice", "test Dice"),
    ("test_slice_auroc", "test slice AUROC"),
)
APPEARANCE_COLUMN = "test_pixel_auroc_{}"


def table(rows: list[dict[str, Any]], appearances: list[str], front: set[str]) -> str:
    """Markdown table of the rows (by run name, with the image size); ``*`` marks the overall Pareto front."""
    head = ["run", "size", *(title for _, title in COLUMNS), *(f"AUROC {a}" for a in appearances)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        keys = [k for k, _ in COLUMNS] + [APPEARANCE_COLUMN.format(a) for a in appearances]
        cells = [f"{row_run_name(row)}{' *' if row['trial_id'] in front else ''}", _size(row)]
        cells += [_cell(row.get(k)) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def champions_table(rows: list[dict[str, Any]], winner: dict[str, Any] | None) -> str:
    """Per appearance: the trial best on its val pixel AUROC, its test AUROC there, the overall winner's and the
    threshold's test AUROC there: where the families fail on different lesions, the rows name different runs."""
    head = ["appearance", "champion (val)", "its val AUROC", "its test AUROC", "winner's test AUROC", "threshold"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, entry in appearance_champions(rows, winner).items():
        best, shown = entry["best"], APPEARANCE_SHOWN.format(name)
        cells = [name, f"{row_run_name(best)}{' (winner)' if entry['is_winner'] else ''}"]
        cells += [_cell(best.get(APPEARANCE_CHOICE.format(name))), _cell(best.get(shown))]
        cells += [_cell(winner.get(shown) if winner else None), _cell(entry["baseline"].get("threshold"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    return f"{value:.3f}" if is_finite(value) else "-"


def _size(row: dict[str, Any]) -> str:
    size = row.get("param_image_size")
    return f"{int(size)}" if is_finite(size) else "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m study.findings", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None, help="study YAML (default: study/configs/default.yaml)")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    study_dir = REPO / config.results_dir / config.name
    if not (study_dir / TRIALS_CSV).is_file():
        print(f"error: {study_dir / TRIALS_CSV} not found: run python -m study.run first", file=sys.stderr)
        return 2
    rows = read_trials_csv(study_dir / TRIALS_CSV)
    rows.sort(key=lambda r: (r["status"] != "baseline", row_run_name(r)))  # the threshold, then trials in order
    appearances = sorted({k.rsplit("_", 1)[1] for r in rows for k in r if k.startswith("test_pixel_auroc_")} - {"all"})
    pareto = read_trials_csv(study_dir / "pareto.csv") if (study_dir / "pareto.csv").is_file() else []
    front = {str(r["trial_id"]) for r in pareto if r["front"] == "overall"}
    out = REPO / "docs" / f"{config.name}-study"
    out.mkdir(parents=True, exist_ok=True)
    winner = best_trial(rows, config.primary_objective)
    chosen = f"\nPer appearance, chosen on val (overall winner by {config.primary_objective.metric}: "
    chosen += f"{row_run_name(winner) if winner else 'none'}):\n\n{champions_table(rows, winner)}"
    (out / "table.md").write_text(table(rows, appearances, front) + chosen)
    if (study_dir / "pareto.png").is_file():
        shutil.copyfile(study_dir / "pareto.png", out / "pareto.png")
    print(f"wrote {out / 'table.md'} and {out / 'pareto.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
