"""Per-appearance champions (issue 28, item 2): per lesion appearance, the trial best on val for it (never on
test), named in best.json and the parent run's summary beside the overall winner and the threshold row."""

from __future__ import annotations

import json

from study.config import StudyConfig
from study.results import appearances, best_by_appearance, trial_row, write_best_json
from study.tracking.report import study_summary, summary_metrics
from trainables.objective import Objective

OBJECTIVES = [Objective("val_pixel_auroc", "max"), Objective("train_seconds", "min")]
NAN = float("nan")
URI = "sqlite:///results/mlflow.db"


def _row(name: str, family: str, status: str, overall: float, per_appearance: dict[str, tuple[float, float]]) -> dict:
    """A trials.csv row as study.results builds it: overall val, and (val, test) pixel AUROC per appearance."""
    last = {"val_pixel_auroc": overall, "test_pixel_auroc": overall, "train_seconds": 10.0}
    for appearance, (val, test) in per_appearance.items():
        last |= {f"val_pixel_auroc_{appearance}": val, f"test_pixel_auroc_{appearance}": test}
        last[f"val_pixel_auroc_all_{appearance}"] = val  # pixel_auroc_all per appearance: not an appearance "all_x"
    config = {"family": family} if status == "baseline" else {"family": family, "lr": 0.001}
    row = trial_row(name if status == "baseline" else name[:2], config, last, status)
    return {**row, "run_name": name, "mlflow_run_id": ""}


def _rows() -> list[dict]:
    """The issue's picture: dae wins overall but fails on multifocal lesions, where lran is best on val."""
    return [
        # NaN first: a plain max() would keep it; the baseline scores best on iso val but is never a champion
        _row("00 vae β=1.00 lr=0.001", "vae", "completed", 0.7, {"bright": (NAN, NAN), "iso": (NAN, 0.99)}),
        _row("baseline-threshold", "threshold", "baseline", 0.8, {"bright": (0.95, 0.96), "iso": (0.99, 0.6)}),
        _row("01 dae σ=1.40 res=16", "dae", "completed", 0.93, {"bright": (0.98, 0.988), "iso": (0.88, 0.883)}),
        _row("02 lran w_a=5.00 w_r=0.05", "lran", "completed", 0.90, {"bright": (0.9, 0.9), "iso": (0.7, 0.733)}),
        _row("03 caae λ=1.00 lr=0.001", "caae", "completed", 0.85, {"bright": (0.5, 0.5), "iso": (0.6, 0.6)}),
        _row("04 lran w_a=1.00 w_r=0.05", "lran", "failed", NAN, {"bright": (NAN, NAN), "iso": (NAN, NAN)}),
    ]


def _with_multifocal(rows: list[dict]) -> list[dict]:
    """Multifocal where val and test disagree: 02 is best on val (0.94, test 0.80), 03 on test (val 0.90, 0.95)."""
    scores = {"00": (NAN, NAN), "ba": (0.85, 0.872), "01": (0.70, 0.676), "02": (0.94, 0.80), "03": (0.90, 0.95)}
    scores["04"] = (NAN, NAN)
    out = []
    for row in rows:
        val, test = scores[row["trial_id"][:2]]
        out.append({**row, "val_pixel_auroc_multifocal": val, "test_pixel_auroc_multifocal": test})
    return out


def test_champion_per_appearance_is_the_best_on_val_not_on_test() -> None:
    rows = _with_multifocal(_rows())
    assert appearances(rows) == ["bright", "iso", "multifocal"]  # neither "all" nor "all_bright"
    champions = {a: row["run_name"] for a, row in best_by_appearance(rows).items()}
    assert champions == {
        "bright": "01 dae σ=1.40 res=16",
        "iso": "01 dae σ=1.40 res=16",  # not the baseline (0.99 on val), not 00 (NaN on val, 0.99 on test)
        "multifocal": "02 lran w_a=5.00 w_r=0.05",  # best on val (0.94), though 03 scores 0.95 on test
    }


def test_best_json_names_each_champion_beside_the_winner_and_the_threshold(tmp_path) -> None:
    best = write_best_json(_with_multifocal(_rows()), OBJECTIVES, tmp_path / "best.json")
    assert json.loads((tmp_path / "best.json").read_text()).keys() == {
        "val_pixel_auroc",
        "train_seconds",
        "by_appearance",
    }
    multifocal = best["by_appearance"]["multifocal"]
    assert multifocal["chosen_on"] == "val_pixel_auroc_multifocal" and multifocal["best"]["family"] == "lran"
    assert multifocal["best"]["test_pixel_auroc_multifocal"] == 0.80 and multifocal["is_winner"] is False
    assert multifocal["baseline"] == {"threshold": 0.872}
    assert best["by_appearance"]["bright"]["is_winner"] is True
    assert best["val_pixel_auroc"]["overall"]["family"] == "dae"


def test_summary_and_metrics_show_the_champions_and_where_they_differ_from_the_winner() -> None:
    config = StudyConfig(name="demo", families=["vae", "dae", "lran", "caae"], objectives=OBJECTIVES, num_samples=5)
    rows = _with_multifocal(_rows())
    text = study_summary(config, rows, URI)
    assert "## Best per lesion appearance (chosen on val_pixel_auroc_<appearance>, never on test)" in text
    assert "| multifocal | 02 lran w_a=5.00 w_r=0.05 | 0.94 | 0.8 | 0.676 | 0.872 |" in text
    assert "| iso | 01 dae σ=1.40 res=16 | 0.88 | 0.883 | 0.883 | 0.6 |" in text
    line = (
        "The winner **01 dae σ=1.40 res=16** is not the champion on multifocal: the families fail on different lesions."
    )
    assert line in text.splitlines()
    metrics = {m.key: m.value for m in summary_metrics(config, rows)}
    assert metrics["best_multifocal/test_pixel_auroc"] == 0.80 and metrics["best_multifocal/val_pixel_auroc"] == 0.94
    assert metrics["best_bright/test_pixel_auroc"] == 0.988 and metrics["best_iso/test_pixel_auroc"] == 0.883


def test_no_line_where_the_winner_is_every_champion() -> None:
    config = StudyConfig(name="demo", families=["vae", "dae", "lran", "caae"], objectives=OBJECTIVES, num_samples=5)
    text = study_summary(config, _rows(), URI)  # without multifocal, 01 dae is best on val for both appearances
    assert "## Best per lesion appearance" in text and "not the champion" not in text


def test_a_cohort_without_appearances_writes_no_section(tmp_path) -> None:
    rows = [{k: v for k, v in row.items() if "_pixel_auroc_" not in k or k.endswith("_all")} for row in _rows()]
    assert appearances(rows) == [] and best_by_appearance(rows) == {}
    config = StudyConfig(name="demo", families=["vae", "dae", "lran", "caae"], objectives=OBJECTIVES, num_samples=5)
    assert "per lesion appearance" not in study_summary(config, rows, URI)
    assert not [m.key for m in summary_metrics(config, rows) if m.key.startswith(("best_bright", "best_iso"))]
    best = write_best_json(rows, OBJECTIVES, tmp_path / "best.json")
    assert best.keys() == {"val_pixel_auroc", "train_seconds"}
