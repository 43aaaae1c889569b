"""The reproduction's own parts (trainables/reproduce/): bootstrap, budget and stop rule, conventions, tables."""

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from trainables.families import create_family
from trainables.families.losses import l2_recon, l2_squared_recon
from trainables.reproduce.bootstrap import _counts_by_subject, bootstrap_auroc, weighted_auroc
from trainables.reproduce.runs import RUNS
from trainables.reproduce.table import _paper1, gather, stop_label
from trainables.reproduce.train import Budget, Conventions, _stop_reason, with_background

COMMITTED = Path(__file__).resolve().parents[2] / "results" / "reproduce"


def _tied_data(seed: int = 0, n: int = 4000, subjects: int = 6):
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < 0.2
    scores = np.round(rng.normal(size=n) + labels * 0.8, 1)  # rounding makes many ties
    groups = rng.integers(0, subjects, n)
    return scores, labels, groups


def test_bootstrap_point_is_the_plain_auroc_and_weights_are_duplicated_subjects():
    scores, labels, groups = _tied_data()
    result = bootstrap_auroc(scores, labels, groups, resamples=200)
    assert result["auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert result["lo"] <= result["auroc"] <= result["hi"] and result["hi"] > result["lo"]
    assert result["subjects"] == 6 and result["resamples"] == 200
    # weight 2 on subject 3, 0 on subject 0 = the AUROC of the data with subject 3 twice and subject 0 dropped
    pos, neg = _counts_by_subject(scores, labels, groups)
    keep = np.concatenate([np.flatnonzero(groups != 0), np.flatnonzero(groups == 3)])
    weights = np.array([0, 1, 1, 2, 1, 1], dtype=float)
    assert weighted_auroc(pos, neg, weights) == pytest.approx(roc_auc_score(labels[keep], scores[keep]), abs=1e-12)


def test_bootstrap_interval_reflects_subject_spread():
    """Subjects whose lesions differ in contrast give a wide interval; alike subjects a narrow one."""
    rng = np.random.default_rng(1)
    n, subjects = 6000, 6
    groups = rng.integers(0, subjects, n)
    labels = rng.random(n) < 0.2
    alike = rng.normal(size=n) + labels * 1.0
    unlike = rng.normal(size=n) + labels * np.linspace(-0.5, 2.5, subjects)[groups]
    narrow, wide = (bootstrap_auroc(s, labels, groups, resamples=300) for s in (alike, unlike))
    # measured: narrow width 0.024, wide width 0.300
    assert wide["hi"] - wide["lo"] > 3 * (narrow["hi"] - narrow["lo"])


def test_stop_rule_fixed_budget_and_cap_label():
    plateau = Budget(max_epochs=50, min_epochs=10, patience=6)
    assert _stop_reason(plateau, 22, 16) == "plateau"
    assert _stop_reason(plateau, 21, 16) is None
    assert _stop_reason(plateau, 50, 40) == "max_epochs"  # the cap wins over the plateau rule
    fixed = Budget(max_epochs=300, early_stop=False)
    assert all(_stop_reason(fixed, epoch, 1) is None for epoch in range(1, 300))
    assert _stop_reason(fixed, 300, 1) == "max_epochs"
    # runs recorded before the fix: the plateau rule fired at the cap (long50's --min-epochs 50)
    assert stop_label({"stopped": "plateau", "epochs": 50}) == "max_epochs"
    assert stop_label({"stopped": "plateau", "epochs": 22}) == "plateau"
    assert stop_label({"stopped": "plateau", "epochs": 100, "budget": {"max_epochs": 300}}) == "plateau"


def test_conventions_background_and_recon_norm():
    brain = torch.zeros(1, 1, 4, 4)
    brain[..., 1:3, 1:3] = 1
    image = torch.randn(1, 1, 4, 4) * brain
    out = with_background(image, brain, -3.5)
    assert torch.equal(out[brain > 0.5], image[brain > 0.5]) and (out[brain < 0.5] == -3.5).all()
    assert with_background(image, brain, 0.0) is image  # the study's and older runs' convention: untouched
    conv = Conventions(recon_norm="squared")
    by_key = {run.key: run for run in RUNS}
    assert conv.hparams(by_key["caae_0.5"]) == {"latent_weight": 0.5, "recon_norm": "squared"}
    assert conv.hparams(by_key["vae"]) == {} and conv.hparams(by_key["lran"]) == {}
    assert conv.background_of(by_key["aae"]) == -3.5 and conv.background_of(by_key["dae"]) == 0.0
    assert Conventions().hparams(by_key["caae_1.0"]) == {"latent_weight": 1.0}  # default: the family's own


def test_recon_norm_default_is_the_official_unsquared_norm():
    x, xr = torch.randn(3, 1, 8, 8), torch.randn(3, 1, 8, 8)
    assert create_family("caae", {}).hp.recon_norm == "l2"
    one = (x[:1], xr[:1])
    assert l2_squared_recon(*one).item() == pytest.approx(l2_recon(*one).item() ** 2, rel=1e-5)
    with pytest.raises(ValueError, match="recon_norm"):
        create_family("aae", {"recon_norm": "l1"})


def test_committed_table_has_the_papers_table2_bright_column_and_budgets():
    rows = "\n".join(_paper1(gather(COMMITTED)))
    assert "| vae | 0.424 / " in rows  # Table 2's paper mu beside ours
    assert "bright only" in rows
    for key in ("vae", "aae", "caae_0.5", "caae_1.0"):  # the committed first-paper runs record the bright subjects
        row = next(line for line in rows.splitlines() if line.startswith(f"| {key} | "))
        bright = row.split(" | ")[4]
        assert bright.endswith("(n=3)") and "not recorded" not in row, row
    assert "ep, " in rows and " st, " in rows
