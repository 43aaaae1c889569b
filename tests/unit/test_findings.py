"""README's findings tables: every run by name and size, and per appearance the trial chosen on val for it."""

from __future__ import annotations

from study.findings import champions_table, table
from study.results import best_trial
from trainables.objective import Objective


def _row(trial_id: str, name: str, status: str, size: int, **values: float) -> dict:
    row = {"trial_id": trial_id, "run_name": name, "family": name.split()[1], "status": status}
    return {**row, "param_image_size": size, **values}


ROWS = [
    _row("baseline-threshold", "00 threshold", "baseline", 32, test_pixel_auroc_iso=0.61, test_pixel_auroc_multi=0.87),
    # the dae wins overall on val and is best on iso; the lran is best on multifocal, on val and on test
    _row(
        "a",
        "01 dae 64px σ=1.40",
        "completed",
        64,
        val_pixel_auroc=0.80,
        val_pixel_auroc_iso=0.9,
        val_pixel_auroc_multi=0.6,
        test_pixel_auroc_iso=0.93,
        test_pixel_auroc_multi=0.68,
    ),
    _row(
        "b",
        "02 lran 32px w_a=5.00",
        "completed",
        32,
        val_pixel_auroc=0.70,
        val_pixel_auroc_iso=0.7,
        val_pixel_auroc_multi=0.9,
        test_pixel_auroc_iso=0.73,
        test_pixel_auroc_multi=0.94,
    ),
]


def test_each_appearance_names_its_champion_beside_the_winner_and_the_threshold():
    winner = best_trial(ROWS, Objective("val_pixel_auroc"))
    lines = champions_table(ROWS, winner).splitlines()[2:]
    assert lines == [
        "| iso | 01 dae 64px σ=1.40 (winner) | 0.900 | 0.930 | 0.930 | 0.610 |",
        "| multi | 02 lran 32px w_a=5.00 | 0.900 | 0.940 | 0.680 | 0.870 |",
    ]


def test_the_run_table_names_runs_and_sizes_and_marks_the_front():
    lines = table(ROWS, ["iso"], front={"a"}).splitlines()
    assert lines[0].startswith("| run | size | val pix AUROC")
    assert lines[3].startswith("| 01 dae 64px σ=1.40 * | 64 | 0.800 |") and lines[3].endswith("| 0.930 |")
    assert lines[2].startswith("| baseline-threshold | 32 | - |")
