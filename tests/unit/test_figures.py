"""trainables.figures: the PNGs of a split, one pass giving the same metrics as evaluate(), bounded examples."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trainables.families import Scores, create_family
from trainables.figures import ExampleSlices, collect, render
from trainables.metrics import evaluate
from trainables.stream_metrics import differences

PNG = b"\x89PNG\r\n\x1a\n"
CPU = torch.device("cpu")


def _loader(n_batches: int = 3, lesions: bool = True) -> list[dict[str, torch.Tensor]]:
    """Batches of 4 random 32x32 slices with a disc of brain, square lesions in some slices, subject ids."""
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    brain = (((yy - 16) ** 2 + (xx - 16) ** 2) < 13**2).float().expand(4, 1, 32, 32)
    batches = []
    for b in range(n_batches):
        lesion = torch.zeros(4, 1, 32, 32)
        if lesions:
            lesion[1, 0, 10 : 12 + b, 12:16] = 1  # lesion sizes differ between batches
            lesion[3, 0, 18:20, 18:20] = 1
        image = torch.randn(4, 1, 32, 32, generator=g) * brain + 2 * lesion
        subject = torch.tensor([b, b, b, b])
        batches.append({"image": image, "brain": brain.clone(), "lesion": lesion, "subject": subject})
    return batches


def _figures(detector, loader, out_dir: Path, split: str, threshold: float | None = None):
    """Metrics and figures of one split from a single pass, as the training loop draws them."""
    family, nets = detector
    record = collect(family, nets, loader, CPU)
    metrics = record.metrics.compute(threshold)
    return metrics, render(record, metrics, out_dir, split, threshold)


@pytest.fixture(scope="module")
def detector():
    torch.manual_seed(0)
    family = create_family("vae", {"latent_dim": 4, "width": 4})
    return family, family.build(32)


def test_write_figures_writes_three_pngs(detector, tmp_path: Path) -> None:
    _, paths = _figures(detector, _loader(), tmp_path / "figures", "test", threshold=1.0)
    assert [p.name for p in paths] == ["test_roc.png", "test_examples.png", "test_histograms.png"]
    for path in paths:
        assert path.parent == tmp_path / "figures" and path.read_bytes()[:8] == PNG and path.stat().st_size > 5000


def test_one_pass_gives_the_metrics_of_evaluate(detector, tmp_path: Path) -> None:
    family, nets = detector
    metrics, paths = _figures(detector, _loader(), tmp_path, "val", threshold=0.8)
    reference = evaluate(family, nets, _loader(), CPU, threshold=0.8)
    assert metrics.keys() == reference.keys()
    for key, value in reference.items():
        assert metrics[key] == pytest.approx(value, nan_ok=True), key
    assert len(paths) == 3
    streamed = collect(
        family, nets, _loader(), CPU, threshold=0.8, stream=True
    ).streamed.compute()  # the trial's test numbers
    gaps = differences(reference, streamed)
    del gaps["best_threshold"]  # an argmax (tests/unit/test_stream_metrics.py)
    assert max(gaps.values()) <= 1e-3, max(gaps, key=gaps.get)  # measured: 5.2e-4 (pixel_auprc, 60 lesion px)


def test_split_without_lesions_or_slices(detector, tmp_path: Path) -> None:
    _, paths = _figures(detector, _loader(lesions=False), tmp_path / "healthy", "val")
    assert len(paths) == 3 and all(p.read_bytes()[:8] == PNG for p in paths)  # ROC says "undefined"
    assert _figures(detector, [], tmp_path / "empty", "test")[1] == []
    assert not (tmp_path / "empty").exists()


def _scores(x: torch.Tensor, slice_score: torch.Tensor) -> Scores:
    return Scores(recon=torch.zeros_like(x), pixel_map=x.abs(), slice_score=slice_score)


def test_examples_keep_the_largest_lesions_one_per_subject() -> None:
    examples = ExampleSlices(n=2)
    image, brain = torch.ones(3, 1, 4, 4), torch.ones(3, 1, 4, 4)
    for subject, sizes in enumerate(([1, 5, 0], [9, 2, 0], [3, 0, 0], [7, 8, 0])):
        lesion = torch.zeros(3, 1, 4, 4)
        for i, size in enumerate(sizes):
            lesion[i].view(-1)[:size] = 1
        examples.update(image, _scores(image, torch.zeros(3)), brain, lesion, torch.full((3,), subject))
    assert [area for area, _, _ in examples.slices()] == [9, 8]  # subjects 1 and 3, not 3's two slices
    assert len(examples._kept) == 2  # never more than n slices held
    by_score = ExampleSlices(n=2)  # without lesions and subjects: the highest slice scores
    by_score.update(image, _scores(image, torch.tensor([0.1, 0.9, 0.5])), brain, torch.zeros(3, 1, 4, 4))
    assert [score for _, score, _ in by_score.slices()] == pytest.approx([0.9, 0.5])
