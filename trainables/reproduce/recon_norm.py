"""The recon_norm comparison (issue 29): the cAAE at lambda 0.5 and 1.0 with the AAE family's reconstruction term
unsquared (``l2``, the official code) and squared (``squared``, the paper's text), trained by
``python -m trainables.reproduce --out ROOT/<norm> --recon-norm <norm> ...``; gathered from ROOT/<norm>/runs/*.json
into one markdown table:

    python -m trainables.reproduce.recon_norm results/reproduce/recon_norm --out results/reproduce/recon_norm.md

Per lambda and norm: test pixel AUROC on lesion subjects (the first paper's measure) of the val-chosen and of the
final model, mean ± sd over seeds; the balance of the two terms at the last epoch, ``lambda * latent / recon``
in percent (the epoch means of the terms the family's train_step returns); the same two AUROCs on the bright-lesion
subjects only (the first paper's BraTS-T2-like appearance); the budget each seed trained. Then per seed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from trainables.reproduce.runs import LESION
from trainables.reproduce.table import NOT_RECORDED, cell, gather

NORMS = ("l2", "squared")
RUN_KEYS = ("caae_0.5", "caae_1.0")


def final_auroc(record: dict, metric: str = "pixel_auroc") -> float | None:
    """Test ``metric`` of the last epoch's model (``test`` where the last epoch is the val-chosen one); None where
    the run did not record it (runs before per-appearance metrics lack ``pixel_auroc_bright``)."""
    final = record.get("test_final") if record["best_epoch"] != record["epochs"] else record["test"]
    return final[LESION].get(metric)


def _bright_cell(values: list[float | None]) -> str:
    """``cell`` of the bright-lesion subjects' AUROC, or "not recorded" unless every seed has it."""
    return NOT_RECORDED if any(v is None for v in values) else cell(values)  # type: ignore[arg-type]


def term_ratio(record: dict) -> float:
    """``lambda * latent / recon`` of the last epoch's mean terms, in percent: the weight of lambda's term."""
    last = record["losses"][-1]
    return 100 * record["hparams"]["latent_weight"] * last["latent"] / last["recon"]


def _rows(root: Path) -> list[tuple[str, str, str, dict]]:
    """(run, norm, seed, record) of every finished run under ``root``."""
    rows = []
    for norm in NORMS:
        results = gather(root / norm)
        for key in RUN_KEYS:
            for seed, record in sorted(results.get(key, {}).items()):
                if "error" not in record:
                    rows.append((key, norm, seed, record))
    return rows


def _budget(records: list[dict]) -> str:
    budgets = sorted({(r["steps"], r["epochs"], r["budget"].get("max_steps")) for r in records})
    return "; ".join(f"{steps} steps ({epochs} ep)" for steps, epochs, _ in budgets)


def summary(root: Path) -> list[str]:
    """The table per lambda and norm, then per seed (markdown lines)."""
    rows = _rows(root)
    lines = ["| run | recon_norm | test pixel AUROC, val-chosen | test pixel AUROC, final | bright only, val-chosen | "
             "bright only, final | lambda·latent / recon %, last epoch | budget |", "|---" * 8 + "|"]  # fmt: skip
    for key in RUN_KEYS:
        for norm in NORMS:
            records = [r for k, n, _, r in rows if (k, n) == (key, norm)]
            if not records:
                continue
            chosen = [r["test"][LESION]["pixel_auroc"] for r in records]
            bright = [r["test"][LESION].get("pixel_auroc_bright") for r in records]
            bright_final = [final_auroc(r, "pixel_auroc_bright") for r in records]
            lines.append(f"| {key} | {norm} | {cell(chosen)} | {cell([final_auroc(r) for r in records])} | "
                         f"{_bright_cell(bright)} | {_bright_cell(bright_final)} | "
                         f"{cell([term_ratio(r) for r in records], 2)} | {_budget(records)} |")  # fmt: skip
    lines += ["", "| run | recon_norm | seed | val-chosen (epoch) | final | lambda·latent / recon % | recon | latent |",
              "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for key, norm, seed, r in rows:
        last, chosen = r["losses"][-1], r["test"][LESION]["pixel_auroc"]
        lines.append(f"| {key} | {norm} | {seed} | {chosen:.3f} ({r['best_epoch']}) | {final_auroc(r):.3f} | "
                     f"{term_ratio(r):.2f} | {last['recon']:.2f} | {last['latent']:.3f} |")  # fmt: skip
    return lines


def main(argv: list[str] | None = None) -> int:
    prog, about = "python -m trainables.reproduce.recon_norm", __doc__.split("\n")[0]
    parser = argparse.ArgumentParser(prog=prog, description=about)
    parser.add_argument("root", type=Path, help="folder holding l2/runs/ and squared/runs/")
    parser.add_argument("--out", type=Path, help="markdown file to write (default: print)")
    args = parser.parse_args(argv)
    missing = [str(args.root / norm / "runs") for norm in NORMS if not (args.root / norm / "runs").is_dir()]
    if missing:
        raise SystemExit(f"trainables.reproduce.recon_norm: no runs folder at {', '.join(missing)}")
    text = "\n".join(summary(args.root)) + "\n"
    if args.out:
        args.out.write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
