"""DetectionMetrics against sklearn, known values (perfect, constant, overlap, dice), streaming, evaluate()."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from trainables.families import Scores, create_family
from trainables.metrics import DetectionMetrics, dice_at, evaluate, overlap_pct, unpack_batch

B, S = 6, 8


def _scores(pixel_map: torch.Tensor, slice_score: torch.Tensor | None = None) -> Scores:
    if slice_score is None:
        slice_score = pixel_map.flatten(1).mean(1)
    return Scores(recon=torch.zeros_like(pixel_map), pixel_map=pixel_map, slice_score=slice_score)


def _random_batch(seed: int, n: int = B):
    g = torch.Generator().manual_seed(seed)
    pixel_map = torch.rand(n, 1, S, S, generator=g)
    brain = torch.rand(n, 1, S, S, generator=g) < 0.7
    lesion = (torch.rand(n, 1, S, S, generator=g) < 0.1) & brain
    lesion[0] = False  # at least one healthy slice
    lesion[1, 0, 2, 2] = brain[1, 0, 2, 2] = True  # at least one lesion slice
    return _scores(pixel_map), brain.float(), lesion.float()


def test_matches_sklearn():
    scores, brain, lesion = _random_batch(0)
    m = DetectionMetrics()
    m.update(scores, brain, lesion)
    out = m.compute()
    p, b, les = scores.pixel_map.numpy().ravel(), brain.numpy().ravel() > 0, lesion.numpy().ravel() > 0
    slice_labels = lesion.flatten(1).amax(1).numpy() > 0
    assert out["slice_auroc"] == pytest.approx(roc_auc_score(slice_labels, scores.slice_score.numpy()))
    assert out["slice_auprc"] == pytest.approx(average_precision_score(slice_labels, scores.slice_score.numpy()))
    assert out["pixel_auroc"] == pytest.approx(roc_auc_score(les[b], p[b]))
    assert out["pixel_auprc"] == pytest.approx(average_precision_score(les[b], p[b]))
    assert out["pixel_auroc_all"] == pytest.approx(roc_auc_score(les, p))
    assert out["healthy_mu"] == pytest.approx(p[b & ~les].mean(), rel=1e-5)
    assert out["healthy_sigma"] == pytest.approx(p[b & ~les].std(), rel=1e-5)
    assert out["lesion_mu"] == pytest.approx(p[les].mean(), rel=1e-5)
    assert out["lesion_sigma"] == pytest.approx(p[les].std(), rel=1e-5)
    lo, hi = np.quantile(p[b & ~les], [0.025, 0.975])
    assert out["overlap_pct"] == pytest.approx(100 * np.mean((p[les] >= lo) & (p[les] <= hi)))
    assert out["best_dice"] == pytest.approx(dice_at(les[b], p[b], out["best_threshold"]))
    assert out["best_dice"] == pytest.approx(max(dice_at(les[b], p[b], t) for t in np.unique(p[b])))
    assert math.isnan(out["dice"])


def test_perfect_and_constant_maps():
    _, brain, lesion = _random_batch(1)
    for pixel_map, expected in ((lesion.clone(), 1.0), (torch.full_like(lesion, 0.3), 0.5)):
        m = DetectionMetrics()
        m.update(_scores(pixel_map), brain, lesion)
        out = m.compute()
        assert out["pixel_auroc"] == pytest.approx(expected)
        assert out["pixel_auroc_all"] == pytest.approx(expected)
    m = DetectionMetrics()
    m.update(_scores(lesion.clone()), brain, lesion)
    out = m.compute(threshold=0.5)
    assert out["best_dice"] == pytest.approx(1.0) and out["dice"] == pytest.approx(1.0)
    assert out["overlap_pct"] == 0.0


def test_slice_labels_come_from_lesion_masks():
    lesion = torch.zeros(4, 1, S, S, dtype=torch.bool)
    lesion[1, 0, 3, 3] = lesion[3, 0, 0:2, 0:2] = True
    brain = torch.ones_like(lesion)
    # slice scores rank exactly the lesion slices first; the pixel map is uninformative
    slice_score = torch.tensor([0.1, 0.9, 0.2, 0.8])
    m = DetectionMetrics()
    m.update(_scores(torch.zeros(4, 1, S, S), slice_score), brain, lesion)
    out = m.compute()
    assert out["slice_auroc"] == 1.0 and out["slice_auprc"] == 1.0
    assert out["pixel_auroc"] == 0.5


def test_single_class_gives_nan_without_crash():
    healthy = torch.zeros(3, 1, S, S)
    m = DetectionMetrics()
    m.update(_scores(torch.rand(3, 1, S, S)), torch.ones(3, 1, S, S), healthy)
    out = m.compute(threshold=0.5)
    for key in ("slice_auroc", "slice_auprc", "pixel_auroc", "pixel_auprc", "pixel_auroc_all"):
        assert math.isnan(out[key]), key
    for key in ("lesion_mu", "lesion_sigma", "overlap_pct", "best_dice"):
        assert math.isnan(out[key]), key
    assert out["dice"] == 0.0  # predicted lesion pixels but none exist
    assert math.isfinite(out["healthy_mu"]) and math.isfinite(out["healthy_sigma"])
    assert all(math.isnan(v) for v in DetectionMetrics().compute().values())  # no data at all


def test_streaming_equals_one_batch():
    batches = [_random_batch(seed) for seed in (2, 3, 4)]
    streamed = DetectionMetrics()
    for b in batches:
        streamed.update(*b)
    whole = DetectionMetrics()
    pixel_map = torch.cat([b[0].pixel_map for b in batches])
    slice_score = torch.cat([b[0].slice_score for b in batches])
    brain, lesion = (torch.cat([b[i] for b in batches]) for i in (1, 2))
    whole.update(_scores(pixel_map, slice_score), brain, lesion)
    a, b = streamed.compute(), whole.compute()
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == pytest.approx(b[key], nan_ok=True), key


def test_unpack_batch_dict_and_tuple():
    x, brain, lesion = torch.zeros(1), torch.ones(1), torch.full((1,), 2.0)
    for batch in ({"image": x, "brain": brain, "lesion": lesion, "subject": ["s"]}, (x, brain, lesion)):
        assert [t.item() for t in unpack_batch(batch)] == [0.0, 1.0, 2.0]
    with pytest.raises(TypeError):
        unpack_batch(x)


def test_evaluate_runs_a_family_over_a_loader():
    torch.manual_seed(0)
    family = create_family("vae", {"latent_dim": 8})
    nets = family.build(32)
    loader = []
    for i in range(3):
        _, brain, lesion = _random_batch(i, n=4)
        brain, lesion = (torch.nn.functional.interpolate(t, size=32) for t in (brain, lesion))
        loader.append({"image": torch.randn(4, 1, 32, 32), "brain": brain, "lesion": lesion})
    out = evaluate(family, nets, loader, torch.device("cpu"))
    assert 0.0 <= out["pixel_auroc"] <= 1.0 and 0.0 <= out["slice_auroc"] <= 1.0
    assert nets.training  # evaluate leaves the nets' mode as it found it


def _row(values: np.ndarray) -> torch.Tensor:
    """Values as a (1,1,1,n) map: one slice holding every pixel."""
    return torch.as_tensor(np.asarray(values, dtype=np.float32)).reshape(1, 1, 1, -1)


def test_matches_sklearn_with_many_ties():
    # quantised scores: ties are where hand-written ROC/PR code usually departs from sklearn
    g = torch.Generator().manual_seed(5)
    pixel_map = torch.randint(0, 6, (B, 1, S, S), generator=g).float() / 5
    brain = torch.rand(B, 1, S, S, generator=g) < 0.8
    lesion = (torch.rand(B, 1, S, S, generator=g) < 0.2) & brain
    m = DetectionMetrics()
    m.update(_scores(pixel_map), brain, lesion)
    out = m.compute()
    p, b, les = pixel_map.numpy().ravel(), brain.numpy().ravel(), lesion.numpy().ravel()
    assert out["pixel_auroc"] == pytest.approx(roc_auc_score(les[b], p[b]))
    assert out["pixel_auprc"] == pytest.approx(average_precision_score(les[b], p[b]))
    assert out["best_dice"] == pytest.approx(max(dice_at(les[b], p[b], t) for t in np.unique(p[b])))


def test_constant_map_and_slice_score_give_one_half():
    _, brain, lesion = _random_batch(6)
    m = DetectionMetrics()
    m.update(_scores(torch.full_like(lesion, 0.7), torch.full((B,), 0.7)), brain, lesion)
    out = m.compute()
    for key in ("slice_auroc", "pixel_auroc", "pixel_auroc_all"):
        assert out[key] == pytest.approx(0.5), key


def test_perfect_map_gives_one_everywhere():
    _, brain, lesion = _random_batch(7)
    slice_score = lesion.flatten(1).amax(1)
    m = DetectionMetrics()
    m.update(_scores(lesion * 3.0, slice_score), brain, lesion)
    out = m.compute(threshold=3.0)
    for key in ("slice_auroc", "slice_auprc", "pixel_auroc", "pixel_auprc", "pixel_auroc_all", "best_dice", "dice"):
        assert out[key] == pytest.approx(1.0), key
    assert out["best_threshold"] == pytest.approx(3.0)


def test_overlap_pct_on_constructed_distributions():
    # healthy 0, 0.001, ..., 1: its 2.5th and 97.5th percentiles are exactly 0.025 and 0.975
    healthy = np.linspace(0.0, 1.0, 1001)
    lesion = np.array([0.0, 0.02, 0.025, 0.5, 0.9, 0.975, 0.98, 2.0])  # 4 of 8 inside [0.025, 0.975]
    assert overlap_pct(healthy, lesion) == pytest.approx(50.0)
    assert overlap_pct(healthy, lesion + 10) == 0.0
    assert math.isnan(overlap_pct(healthy, np.zeros(0)))
    # the same through the accumulator: healthy and lesion pixels of one slice, plus background that must not count
    values = np.concatenate([healthy, lesion, np.full(5, 0.5)])
    lesion_mask = np.r_[np.zeros(healthy.size), np.ones(lesion.size), np.zeros(5)]
    brain_mask = np.r_[np.ones(healthy.size + lesion.size), np.zeros(5)]
    m = DetectionMetrics()
    m.update(_scores(_row(values)), _row(brain_mask), _row(lesion_mask))
    out = m.compute()
    assert out["overlap_pct"] == pytest.approx(50.0)
    assert out["healthy_mu"] == pytest.approx(0.5) and out["lesion_mu"] == pytest.approx(lesion.mean())


def test_dice_uses_exactly_the_given_threshold():
    scores = np.array([0.1, 0.5, 0.5, 0.9, 0.3], dtype=np.float32)
    labels = np.array([0, 1, 0, 1, 1], dtype=bool)
    # >= 0.5: predicted {0.5, 0.5, 0.9}, true positives 2 -> 2*2 / (3 + 3)
    assert dice_at(labels, scores, 0.5) == pytest.approx(4 / 6)
    # just above 0.5: predicted {0.9} -> 2*1 / (1 + 3)
    assert dice_at(labels, scores, np.nextafter(np.float32(0.5), np.float32(1))) == pytest.approx(2 / 4)
    m = DetectionMetrics()
    m.update(_scores(_row(scores)), _row(np.ones(5)), _row(labels))
    assert m.compute(threshold=0.5)["dice"] == pytest.approx(4 / 6)
    assert m.compute(threshold=0.95)["dice"] == pytest.approx(0.0)


def test_roc_curves_and_pixel_values_read_the_accumulator():
    batches = [_random_batch(seed) for seed in (8, 9)]
    m = DetectionMetrics()
    for b in batches:
        m.update(*b)
    p = torch.cat([b[0].pixel_map for b in batches]).numpy().ravel()
    br = torch.cat([b[1] for b in batches]).numpy().ravel() > 0
    les = torch.cat([b[2] for b in batches]).numpy().ravel() > 0
    fpr, tpr = m.roc_curves()["pixel"]
    ref_fpr, ref_tpr, _ = roc_curve(les[br], p[br])
    np.testing.assert_allclose(fpr, ref_fpr)
    np.testing.assert_allclose(tpr, ref_tpr)
    assert np.trapezoid(tpr, fpr) == pytest.approx(m.compute()["pixel_auroc"])
    healthy, lesion = m.pixel_values()
    np.testing.assert_array_equal(np.sort(healthy), np.sort(p[br & ~les]))
    np.testing.assert_array_equal(np.sort(lesion), np.sort(p[br & les]))
    assert m.n_slices == 2 * B
    one_class = DetectionMetrics()
    one_class.update(_scores(torch.rand(2, 1, S, S)), torch.ones(2, 1, S, S), torch.zeros(2, 1, S, S))
    assert one_class.roc_curves() == {"slice": None, "pixel": None}


def test_per_appearance_metrics_on_a_constructed_case():
    """Three healthy-subject slices, two 'bright' and two 'dark' lesion slices, one of unknown appearance.

    The map sees bright lesions perfectly (1 on their lesion pixels, 0.5 elsewhere) and dark ones not at all
    (their lesion pixels score 0): per appearance the numbers follow by hand; overall they mix.
    """
    n = 8
    brain = torch.ones(n, 1, S, S)
    lesion = torch.zeros(n, 1, S, S)
    lesion[3:8, 0, 2:4, 2:4] = 1.0  # 4 lesion pixels in each of slices 3..7
    pixel_map = torch.full((n, 1, S, S), 0.5)
    pixel_map[3:5, 0, 2:4, 2:4] = 1.0  # bright lesions: above every healthy pixel
    pixel_map[5:7, 0, 2:4, 2:4] = 0.0  # dark lesions: below every healthy pixel
    pixel_map[7, 0, 2:4, 2:4] = 0.75  # the unknown-appearance subject
    codes = torch.tensor([0, 0, 0, 1, 1, 2, 2, -1])
    m = DetectionMetrics(appearances=["bright", "dark"])
    m.update(_scores(pixel_map), brain, lesion, codes)
    out = m.compute(threshold=0.9)
    assert out["pixel_auroc_bright"] == 1.0 and out["pixel_auprc_bright"] == 1.0
    assert out["pixel_auroc_dark"] == 0.0
    assert out["dice_bright"] == 1.0 and out["dice_dark"] == 0.0  # threshold 0.9: exactly the bright lesions
    assert out["lesion_mu_bright"] == 1.0 and out["lesion_mu_dark"] == 0.0
    assert out["overlap_pct_bright"] == 0.0 and out["overlap_pct_dark"] == 0.0  # all outside [0.5, 0.5]
    # the dark subset: 3 healthy-subject slices + 2 dark slices, the unknown one excluded
    healthy = 3 * S * S + 2 * (S * S - 4)
    assert out["healthy_mu_dark"] == pytest.approx(0.5) and out["healthy_sigma_dark"] == 0.0
    labels = np.r_[np.zeros(healthy, bool), np.ones(8, bool)]
    scores = np.r_[np.full(healthy, 0.5), np.zeros(8)]
    assert out["pixel_auprc_dark"] == pytest.approx(average_precision_score(labels, scores))
    # overall: 8 bright pixels above all, 8 dark below all, 4 unknown in between
    les = lesion.numpy().ravel() > 0
    assert out["pixel_auroc"] == pytest.approx(roc_auc_score(les, pixel_map.numpy().ravel()))
    assert 0.3 < out["pixel_auroc"] < 0.7


def test_no_appearances_means_no_extra_metrics():
    scores, brain, lesion = _random_batch(3)
    m = DetectionMetrics()
    m.update(scores, brain, lesion)
    assert not any(k.endswith(("_bright", "_dark")) for k in m.compute())


def test_appearance_metric_names():
    from trainables.metric_names import is_appearance_metric, is_reported_metric

    assert is_appearance_metric("test_pixel_auroc_dark") and is_reported_metric("val_dice_multifocal")
    assert is_appearance_metric("test_pixel_auroc_all_iso")
    assert not is_appearance_metric("test_pixel_auroc_all")  # a metric of its own, not appearance "all"
    assert not is_appearance_metric("test_slice_auroc_dark") and not is_appearance_metric("train_loss_dark")
