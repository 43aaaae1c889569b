"""study.bench: the arithmetic, the JSON and the table on given numbers; of the measurements, only the gpu
section's skip and the metrics section on a few slices run here."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from study.bench import cli as bench
from study.bench.data import parse_smaps
from study.bench.report import (
    Target,
    budget_share,
    format_table,
    median,
    median_share,
    rates,
    ratio,
    steady,
    table_rows,
    write_bench_json,
)

REQUIRED_KEYS = (
    "data_ratio",
    "rss_mb_1_trial",
    "rss_mb_4_trials",
    "study_overhead",
    "trial_start_s",
    "staging_ratio",
    "restage_bytes",
    "search_budget_share",
    "best_test_pixel_auroc",
    "threshold_test_pixel_auroc",
)


def test_ratio_median_rates_and_steady() -> None:
    assert ratio(9.0, 10.0) == pytest.approx(0.9)
    assert math.isnan(ratio(1.0, 0.0)) and math.isnan(ratio(None, 2.0)) and math.isnan(ratio(1.0, float("nan")))
    assert median([3.0, None, 1.0, float("nan"), 2.0]) == 2.0
    assert math.isnan(median([]))
    assert rates([100, 300], [2.0, 3.0]) == [50.0, 100.0]
    assert steady([1.0, 2.0, 3.0]) == [2.0, 3.0]  # the first repeat is warm-up
    assert steady([5.0]) == [5.0]  # nothing to drop


def test_budget_share_is_the_first_point_reaching_the_goal() -> None:
    curve = [(2, 0.70), (4, 0.81), (6, 0.79), (8, 0.85)]
    assert budget_share(curve, 0.80, budget=16) == pytest.approx(4 / 16)
    assert budget_share(curve, 0.85, budget=16) == pytest.approx(0.5)
    assert budget_share(curve, 0.90, budget=16) is None
    assert budget_share([(1, float("nan")), (3, 0.9)], 0.8, budget=4) == pytest.approx(0.75)


def test_median_share_counts_a_seed_that_never_reached_as_infinite() -> None:
    assert median_share([0.25, 0.5, 0.75]) == 0.5
    assert median_share([0.25, None, None]) == math.inf
    assert median_share([0.25, 0.5, None]) == 0.5
    assert math.isnan(median_share([]))


def test_targets_compare_as_stated() -> None:
    assert Target("x", ">=", 0.9).met(0.9) is True
    assert Target("x", ">=", 0.9).met(0.89) is False
    assert Target("x", "<=", 1.3).met(1.31) is False
    assert Target("x", "==", 0).met(0) is True
    assert Target("x", ">=", 0.9).met(float("nan")) is None
    assert Target("x", ">=", 0.9).met(None) is None


def test_table_lists_targets_with_verdicts() -> None:
    figures = {"train_ratio_vae": 0.95, "train_ratio_aae": 0.5, "study_overhead": 2.0, "restage_bytes": 0}
    figures["rss_mb_1_trial"] = 230.0
    rows = {r[0]: r for r in table_rows(figures)}
    assert rows["train_ratio_vae"][2:] == (">= 0.9", "yes")
    assert rows["train_ratio_aae"][3] == "NO"
    assert rows["study_overhead"][1:] == ("2", "<= 1.3", "NO")
    assert rows["restage_bytes"][3] == "yes"
    assert rows["rss_mb_1_trial"][2:] == ("-", "-")
    text = format_table(table_rows(figures))
    assert text.splitlines()[0].split() == ["figure", "value", "target", "met?"]


def test_bench_json_is_flat_with_commit_device_and_quick(tmp_path: Path) -> None:
    figures = {key: 1.0 for key in REQUIRED_KEYS} | {"train_ratio_vae": 0.97, "search_budget_share": math.inf}
    figures["best_test_pixel_auroc"] = float("nan")  # the default study has not run
    path = tmp_path / "results" / "bench.json"
    write_bench_json(figures, path, quick=True, device="cpu", commit="abc123")
    data = json.loads(path.read_text())  # strict JSON: no NaN or Infinity tokens
    assert set(REQUIRED_KEYS) | {"train_ratio_vae", "device", "commit", "quick"} <= set(data)
    assert data["quick"] is True and data["device"] == "cpu" and data["commit"] == "abc123"
    assert data["search_budget_share"] is None and data["best_test_pixel_auroc"] is None
    assert all(not isinstance(v, dict | list) for v in data.values())


def test_bench_json_merge_keeps_earlier_figures(tmp_path: Path) -> None:
    path = tmp_path / "bench.json"
    write_bench_json({"data_ratio": 0.5, "staging_ratio": 0.8}, path, quick=False, device="cpu", commit="a")
    write_bench_json({"data_ratio": 0.7}, path, quick=True, device="cpu", commit="b", merge=True)
    data = json.loads(path.read_text())
    assert (data["data_ratio"], data["staging_ratio"], data["commit"]) == (0.7, 0.8, "b")
    write_bench_json({"data_ratio": 0.9}, path, quick=True, device="cpu", commit="c")
    assert "staging_ratio" not in json.loads(path.read_text())  # a full run replaces the file


def test_bench_json_refuses_nested_values(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="flat"):
        write_bench_json({"rows": [1, 2]}, tmp_path / "b.json", quick=True, device="cpu", commit="x")


def test_derived_data_train_ratio_adds_times_per_slice() -> None:
    # 100 slices/s of training; loading at 1,000 vs 10,000 slices/s: 1/(0.01+0.001) over 1/(0.01+0.0001)
    figures = {"train_plain_slices_per_s_vae": 100.0, "data_loader_slices_per_s": 1000.0}
    figures["data_memory_slices_per_s"] = 10000.0
    assert bench.derived(figures)["data_train_ratio"] == pytest.approx(0.0101 / 0.011)
    assert bench.derived({}) == {}


def test_missed_lists_only_figures_with_a_missed_target() -> None:
    figures = {"train_ratio_vae": 0.5, "data_ratio": 0.99, "rss_mb_1_trial": 1e9, "trial_start_s": float("nan")}
    assert bench.missed(figures) == ["train_ratio_vae"]


def test_only_accepts_known_sections() -> None:
    assert bench.parse_args(["--only", "data, stage"]).only == ["data", "stage"]
    with pytest.raises(SystemExit):
        bench.parse_args(["--only", "data,nope"])


def test_default_out_and_data_root_are_under_the_repository_root() -> None:
    from study.bench.common import REPO, study_config

    assert (REPO / "pyproject.toml").is_file()
    assert bench.DEFAULT_OUT == REPO / "results" / "bench.json"
    assert Path(study_config().data.root).is_relative_to(REPO / "results")


def test_help_runs() -> None:
    out = subprocess.run([sys.executable, "-m", "study.bench", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    assert "--quick" in out.stdout and "--only" in out.stdout


def test_data_rounds_run_every_path_once_per_round_in_varying_seeded_orders() -> None:
    from study.bench.data import rotations

    names = ["a", "b", "c", "d"]
    order = rotations(names, 40)
    rounds = [order[i : i + 4] for i in range(0, len(order), 4)]
    assert len(rounds) == 40 and all(sorted(r) == names for r in rounds)
    before = {(order[i - 1], order[i]) for i in range(1, len(order))}
    assert all((x, y) in before for x in names for y in names if x != y)  # each path follows each other one
    assert rotations(names, 40) == order


def test_parse_smaps_totals_and_file_filter() -> None:
    text = """\
55d0c0000000-55d0c0001000 r--p 00000000 fd:01 42   /usr/bin/python3
Rss:                 100 kB
Pss:                  50 kB
7f0000000000-7f0000100000 r--s 00000000 fd:01 77   /cache/abc/train/images.npy
Rss:                 400 kB
Pss:                 100 kB
7f0000200000-7f0000300000 rw-p 00000000 00:00 0
Rss:                  20 kB
Pss:                  20 kB
"""
    assert parse_smaps(text) == {"Rss": 520.0, "Pss": 170.0}
    assert parse_smaps(text, under="/cache/abc") == {"Rss": 400.0, "Pss": 100.0}


def test_study_clock_arithmetic() -> None:
    from study.bench.study import TrialClock, gaps, in_trial_overhead, inner_seconds, start_costs, tail_costs

    clock = TrialClock()
    clock.started, clock.ended = {"a": 100.0, "b": 160.0}, {"a": 150.0, "b": 210.0}
    clock.results = {
        "a": [
            {
                "epoch": 1,
                "time_train_s": 5.0,
                "time_eval_s": 1.0,
                "first_step_at": 112.0,
                "loop_start_at": 109.0,
                "at": 119.0,
            },
            {"epoch": 2, "time_train_s": 4.0, "time_eval_s": 1.0, "at": 126.0},
            {"final": True, "at": 140.0},
        ],
        "b": [{"epoch": 1, "time_train_s": 6.0, "time_eval_s": 2.0, "first_step_at": 170.0, "at": 180.0}],
    }
    assert inner_seconds(clock.results) == pytest.approx(19.0)
    assert start_costs(clock) == [12.0, 10.0]
    assert start_costs(clock, "loop_start_at") == [9.0]  # b reported no loop start
    assert start_costs(clock, "first_step_at", since="loop_start_at") == [3.0]
    assert tail_costs(clock) == [24.0, 30.0]
    assert gaps(clock) == [10.0]
    assert in_trial_overhead(clock) == [pytest.approx(126 - 112 - 11), pytest.approx(180 - 170 - 8)]


class FakeTraining:
    """Stands in for bench_search.Training: a trial's value grows with its learning rate and its epochs."""

    def epochs(self, params: dict, seed: int):
        epoch = 0
        while True:
            epoch += 1
            yield params["lr"] * 1000 + 0.01 * epoch


def test_search_arms_spend_the_budget_as_documented() -> None:
    from study.bench.search import run_arm, shares

    random_fifo = run_arm(FakeTraining(), "random", pruned=False, seed=0, budget=10, max_epochs=3)
    assert [spent for spent, _ in random_fifo.completed] == [3, 6, 9]  # whole trials only: 10 // 3
    tpe_asha = run_arm(FakeTraining(), "tpe", pruned=True, seed=0, budget=10, max_epochs=3)
    assert tpe_asha.epochs[-1][0] == 10 and tpe_asha.started >= len(tpe_asha.completed)
    strict, lenient = shares(random_fifo, tpe_asha, budget=10)
    assert lenient is not None and (strict is None or strict >= lenient)


def test_family_figures_ratio_of_medians_and_eval_share() -> None:
    from study.bench.train import family_figures

    plain = [(320, 2.0), (320, 4.0), (320, 3.2)]  # measured epochs: 160, 80, 100 slices/s -> median 100
    ray = [
        {"train_slices": 320, "time_train_s": 10.0, "time_eval_s": 1.0},  # warm-up, dropped
        {"train_slices": 320, "time_train_s": 3.2, "time_eval_s": 0.8},  # 100 slices/s, eval 20%
        {"train_slices": 320, "time_train_s": 4.0, "time_eval_s": 1.0},  # 80 slices/s, eval 20%
    ]
    found = family_figures(plain, ray)
    assert found["plain"] == pytest.approx(100.0)
    assert found["ray"] == pytest.approx(90.0)
    assert found["ratio"] == pytest.approx(0.9)
    assert found["eval_share"] == pytest.approx(0.2)


def test_gpu_section_is_skipped_without_cuda(tmp_path: Path) -> None:
    """Without a CUDA device the gpu section measures nothing and says why, in bench.json too."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is here: the gpu section measures instead")
    out = tmp_path / "bench.json"
    assert bench.main(["--only", "gpu", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["gpu_skipped"] == "no CUDA device" and data["sections"] == "gpu"
    assert not [key for key in data if key.startswith("gpu_") and key != "gpu_skipped"]


def test_scale_extrapolation_is_the_per_subject_figures_times_the_cohorts() -> None:
    from study.bench.report import target_for
    from study.bench.scale import CPUS_PER_NODE, extrapolate

    figures = {"scale_preprocess_speedup": 1.6}
    for name, seconds, raw, cache in (("hcp", 2.0, 20e6, 1e6), ("brats", 1.0, 30e6, 0.5e6)):
        figures |= {f"scale_{name}_preprocess_s": seconds, f"scale_{name}_raw_bytes": raw}
        figures[f"scale_{name}_cache_bytes_64"] = cache
    out = extrapolate(figures)
    assert out["scale_full_raw_gb"] == pytest.approx((1113 * 20e6 + 1251 * 30e6) / 1e9)
    assert out["scale_full_cache_gb_64"] == pytest.approx((1113 * 1e6 + 1251 * 0.5e6) / 1e9)
    cpu_min = (1113 * 2.0 + 1251 * 1.0) / 60
    assert out["scale_full_build_min_4_nodes"] == pytest.approx(cpu_min / (4 * CPUS_PER_NODE * 0.8))
    assert target_for("scale_node_bytes_ratio").met(0.1) and not target_for("scale_preprocess_speedup").met(1.2)


def test_metrics_section_on_a_few_slices() -> None:
    """The metrics section's figures, on 64 slices (the bench measures 5,120): streamed close to exact."""
    from study.bench import metrics
    from study.bench.common import BenchPlan

    figures = metrics.run(BenchPlan.quick_plan(), n_slices=64)
    assert figures["val_metrics_mpixels"] == pytest.approx(64 * 64 * 64 / 1e6)
    assert 0 < figures["val_metrics_s_per_mpixel"] and 0 < figures["val_metrics_exact_s_per_mpixel"]
    assert figures["val_metrics_max_abs_diff"] <= 1e-3, figures["val_metrics_max_diff_metric"]  # measured: 5.1e-4
    assert bench.target_for("val_metrics_s_per_mpixel") is not None and "metrics" in bench.SECTIONS
