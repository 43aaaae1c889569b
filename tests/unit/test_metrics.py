"""DetectionMetrics against sklearn, edge cases, streaming, and evaluate() over a loader."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from trainables.families import Scores, create_family
from trainables.metrics import DetectionMetrics, dice_at, evaluate, unpack_batch

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
