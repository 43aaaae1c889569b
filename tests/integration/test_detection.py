"""Training buys detection: a VAE trained for a short seeded budget through the real study path (Tune trial,
2-worker Ray Train DDP, checkpoint chosen on val, test scored once) finds the planted lesions clearly better than
the same network with the same seed and hyperparameters before any training step; the threshold baseline the
study reports stands beside both.

The cohort's lesions are all hyperintense on T2 (the papers' BraTS setting). With dark lesions in the mix an
untrained network is already a strong detector (its residual is about |standardised intensity|, and dark and
bright outliers both stand out), so a short budget cannot show what learning buys. Margins come from measured
runs (see MARGINS); the untrained network is scored with the study's own metric code on the study's test split.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from study.config import DEFAULT_CONFIG, load_config
from study.data import prepare_data
from study.results import read_trials_csv
from trainables.data.dataset import SliceDataset
from trainables.data.lesions import APPEARANCES
from trainables.families import create_family
from trainables.metrics import evaluate

# Near the first paper's VAE (latent 128 there), with a learning rate that learns within a few epochs; batch 32
# gives each of the 2 DDP workers 16 slices a step, 10 steps an epoch on the smoke cohort.
VAE = {"family": "vae", "lr": 1e-3, "latent_dim": 64, "kl_weight": 0.01, "width": 8, "batch_size": 32}
EPOCHS = 6
MIX = {"bright": 1.0}  # lesion appearances of the synthetic cohort
# Measured through this test (issue 24: seeds 0-4, DETECTION_SEED, the 2-core machine, 2026-12-07): test pixel AUROC
# untrained -> trained 0.837->0.864, 0.833->0.899, 0.817->0.867, 0.859->0.946, 0.805->0.867 (gains 0.027-0.087);
# pixel AUPRC 0.069->0.087, 0.067->0.127, 0.060->0.138, 0.077->0.305, 0.055->0.112 (x1.26-x3.96); threshold 0.920 /
# 0.096. (The two seeds measured before, x2.2 and x1.9, had set the ratio at 1.4: seed 0 now gives x1.26.) Each
# margin keeps half of the smallest measured gain.
MARGINS = {"over_untrained": 0.013, "auprc_ratio": 1.13}
SEED = int(os.environ.get("DETECTION_SEED", 0))  # the suite runs seed 0 (about 50 s); measure: DETECTION_SEED=1 ...


def _untrained(config_path: Path, hparams: dict, seed: int) -> dict[str, float]:
    """The test split scored by the VAE the trial started from: same seed, same hyperparameters, no step taken."""
    config = load_config(config_path)
    cache_dir, _ = prepare_data(config)  # the cache the study built
    torch.manual_seed(seed)  # as the training loop does before building the nets
    family = create_family("vae", hparams)
    nets = family.build(config.data.reference_size).eval()
    loader = DataLoader(SliceDataset(Path(cache_dir), "test"), batch_size=256, shuffle=False)
    with torch.no_grad():
        return evaluate(family, nets, loader, torch.device("cpu"))


def test_trained_vae_beats_the_same_vae_untrained(
    write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str], study_on_local_ray: Callable
) -> None:
    config_path = write_config(
        num_samples=1,
        seed=SEED,
        points_to_evaluate=[VAE],
        training={"epochs": EPOCHS},
        data={"synthetic": {"healthy": 8, "lesion": 4, "seed": 0, "mix": MIX}},
    )
    config = load_config(config_path)
    outcome = study_on_local_ray(config)
    rows = read_trials_csv(outcome.study_dir / "trials.csv")
    (baseline,) = [r for r in rows if r["status"] == "baseline"]
    (trial,) = [r for r in rows if r["status"] != "baseline"]
    assert trial["status"] == "completed", trial
    hparams = {k: v for k, v in VAE.items() if k not in ("family", "batch_size")}
    assert {k: trial[f"param_{k}"] for k in hparams} == hparams  # the trial trained what we score untrained
    untrained = _untrained(config_path, hparams, config.seed)

    table = [("threshold baseline", baseline), ("vae untrained", {f"test_{k}": v for k, v in untrained.items()})]
    table.append((f"vae trained {EPOCHS} epochs", trial))
    with capsys.disabled():
        print(
            f"\ndetection, seed {SEED}: "
            + "; ".join(
                f"{name} pixel AUROC {row['test_pixel_auroc']:.3f} AUPRC {row['test_pixel_auprc']:.3f}"
                for name, row in table
            )
        )
    assert trial["test_pixel_auroc"] >= untrained["pixel_auroc"] + MARGINS["over_untrained"]
    assert trial["test_pixel_auprc"] >= untrained["pixel_auprc"] * MARGINS["auprc_ratio"]


# The embedded default study's dae point (study/configs/default.yaml), trained through the product path on the
# embedded cohort (24 healthy, 12 lesion subjects, every appearance) for the default's epochs: it must beat the
# threshold row the study reports. Measured (seed 0, 10 epochs, the point as in the default since issue 28): test
# pixel AUROC 0.970 / AUPRC 0.846 against the threshold's 0.343 / 0.024; before it (6 epochs, noise_res 16, std 1.4,
# depth 3) 0.943 / 0.715. One seed only (a run costs minutes), so the margins keep less than half of the smaller
# gap (0.60 / 0.69): the threshold's value plus 0.25 AUROC and plus 0.3 AUPRC.
DAE_MARGINS = {"auroc_over_threshold": 0.25, "auprc_over_threshold": 0.3}


def published_dae_study(results: Path, data_root: Path, seed: int, run: Callable) -> tuple[dict, dict]:
    """(threshold row, dae trial row) of the default study cut to its published dae point, one trial."""
    config = load_config(DEFAULT_CONFIG)
    config.results_dir, config.data.root, config.seed = str(results / "results"), str(data_root), seed
    config.mlflow.tracking_uri = f"sqlite:///{results / 'mlflow.db'}"
    config.points_to_evaluate = [p for p in config.points_to_evaluate if p["family"] == "dae"]
    config.num_samples = 1
    outcome = run(config)
    rows = read_trials_csv(outcome.study_dir / "trials.csv")
    (baseline,) = [r for r in rows if r["status"] == "baseline"]
    (trial,) = [r for r in rows if r["status"] != "baseline"]
    return baseline, trial


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_published_dae_beats_the_threshold_row_on_every_appearance_reported(
    tmp_path: Path, data_root: Path, capsys: pytest.CaptureFixture[str], study_on_local_ray: Callable
) -> None:
    baseline, trial = published_dae_study(tmp_path, data_root, 0, study_on_local_ray)
    assert trial["status"] == "completed" and trial["family"] == "dae", trial
    with capsys.disabled():
        for name, row in (("threshold", baseline), ("dae", trial)):
            per = " ".join(f"{a} {row[f'test_pixel_auroc_{a}']:.3f}" for a in APPEARANCES)
            overall = f"test pixel AUROC {row['test_pixel_auroc']:.3f} AUPRC {row['test_pixel_auprc']:.3f}"
            print(f"\n{name}: {overall}; {per}")
    assert trial["test_pixel_auroc"] >= baseline["test_pixel_auroc"] + DAE_MARGINS["auroc_over_threshold"]
    assert trial["test_pixel_auprc"] >= baseline["test_pixel_auprc"] + DAE_MARGINS["auprc_over_threshold"]
    for row in (baseline, trial):  # every appearance reported, as a value in [0, 1]
        assert all(0.0 <= row[f"test_pixel_auroc_{a}"] <= 1.0 for a in APPEARANCES), row
