"""Where the official background's cost sits (issue 29): train one first-paper run at background -3.5 and at 0, then
score the final model's test pixel AUROC on lesion subjects inside the whole brain mask, inside the mask eroded by
one pixel (the interior) and on the one-pixel rim alone, with the healthy pixels' mean residual on each and the
share of the squared residual that lies outside the brain:

    python -m trainables.reproduce.background_check --cache results/data/cache/<key> --run ae --epochs 50

If the -3.5 background cost pixel AUROC through brain-edge errors, the interior's AUROC would recover it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.utils.data import DataLoader

from trainables.data.cache import read_meta
from trainables.data.dataset import SliceDataset
from trainables.families import Family, create_family
from trainables.metrics import unpack_batch
from trainables.reproduce.runs import RUNS
from trainables.reproduce.train import OFFICIAL_BACKGROUND, Budget, fit, with_background


def _test_maps(family: Family, nets: nn.ModuleDict, cache: Path, background: float) -> tuple[torch.Tensor, ...]:
    """Residual maps, brain and lesion masks of the test split's lesion subjects; the squared residual outside the
    brain and in the whole slice (every test slice)."""
    dataset = SliceDataset(cache, "test")
    lesion_subject = torch.tensor(list(dataset.lesion_subject), dtype=torch.bool)
    maps, brains, lesions, outside, total = [], [], [], torch.zeros(()), torch.zeros(())
    for batch in DataLoader(dataset, batch_size=256):
        image, brain, lesion = unpack_batch(batch)
        with torch.no_grad():
            pixel_map = family.score(nets, with_background(image, brain, background)).pixel_map
        outside, total = outside + (pixel_map**2)[brain < 0.5].sum(), total + (pixel_map**2).sum()
        keep = lesion_subject[batch["subject"]]
        maps.append(pixel_map[keep])
        brains.append(brain[keep] > 0.5)
        lesions.append(lesion[keep] > 0.5)
    return torch.cat(maps), torch.cat(brains), torch.cat(lesions), outside / total


def regions(brain: torch.Tensor) -> dict[str, torch.Tensor]:
    """The brain mask, its interior (eroded by one pixel: a 3x3 min-filter) and its one-pixel rim."""
    interior = -F.max_pool2d(-brain.float(), 3, 1, 1) > 0.5
    return {"brain": brain, "interior": interior, "rim": brain & ~interior}


def check(key: str, cache: Path, epochs: int, background: float, seed: int = 0) -> dict[str, float]:
    """Train run ``key`` for ``epochs`` epochs at ``background``; the final model's figures (see the module)."""
    runs = {r.key: r for r in RUNS}
    if key not in runs:
        raise SystemExit(f"trainables.reproduce.background_check: --run {key!r} is not a run; one of {sorted(runs)}")
    run = runs[key]
    torch.manual_seed(seed)
    family = create_family(run.family, dict(run.hparams))
    nets = family.build(read_meta(cache)["preprocess"]["image_size"])
    budget = Budget(max_epochs=epochs, early_stop=False)
    _, final = fit(run, family, nets, cache, budget, seed, lambda line: None, background)
    if final is not None:  # fit leaves the val-chosen weights in nets
        nets.load_state_dict(final["weights"])
    maps, brain, lesion, outside_share = _test_maps(family, nets, cache, background)
    figures = {"outside_share": outside_share.item()}
    for name, mask in regions(brain).items():
        figures[f"auroc_{name}"] = float(roc_auc_score(lesion[mask].numpy(), maps[mask].numpy()))
        figures[f"healthy_mu_{name}"] = maps[mask & ~lesion].mean().item()
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainables.reproduce.background_check",
                                     description=__doc__.split("\n")[0])  # fmt: skip
    parser.add_argument("--cache", type=Path, required=True, help="slice cache entry (a folder with meta.json)")
    parser.add_argument("--run", default="ae", help="a first-paper run key (default ae: the fastest)")
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    for background in (OFFICIAL_BACKGROUND, 0.0):
        f = check(args.run, args.cache, args.epochs, background, args.seed)
        print(f"{args.run} seed {args.seed}, background {background:g}, {args.epochs} epochs: pixel AUROC brain "
              f"{f['auroc_brain']:.3f}, interior {f['auroc_interior']:.3f}, rim {f['auroc_rim']:.3f}; healthy mean "
              f"residual brain {f['healthy_mu_brain']:.3f}, interior {f['healthy_mu_interior']:.3f}, rim "
              f"{f['healthy_mu_rim']:.3f}; squared residual outside the brain {f['outside_share']:.0%} of the "
              "slices'", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
