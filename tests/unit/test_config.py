"""Study config validation: every mistake is refused before Ray starts, naming the file and key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from study.config import ConfigError, load_config
from study.run import main


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(text)
    return path


def test_default_and_smoke_configs_load() -> None:
    config = load_config()
    assert config.families == ["caae", "lran", "dae"] and config.training.workers_per_trial == 2
    assert config.objective_names == ["val_pixel_auroc", "val_slice_auroc"]
    assert set(config.data.synthetic.mix) == {"bright", "dark", "iso", "multifocal"}
    smoke = load_config(Path(__file__).parents[2] / "study/configs/smoke.yaml")
    assert smoke.name == "smoke" and smoke.num_samples == 2


def test_gpu_settings(tmp_path: Path) -> None:
    """bf16 is the default where a GPU is used (precision auto); a fraction of a GPU is fine for one worker."""
    assert load_config().training.precision == "auto"
    one = load_config(_write(tmp_path, "training: {gpus_per_worker: 0.5, workers_per_trial: 1, precision: fp32}\n"))
    assert (one.training.gpus_per_worker, one.training.precision) == (0.5, "fp32")


def test_values_are_typed(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, "objectives: val_slice_auroc\ntraining: {cpus_per_worker: 1}\n"))
    assert config.objectives[0].metric == "val_slice_auroc" and config.objectives[0].mode == "max"
    assert isinstance(config.training.cpus_per_worker, float)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("famlies: [vae]\n", "unknown key 'famlies'"),
        ("training: {epochz: 3}\n", "unknown key 'training.epochz'"),
        ("families: [gan9000]\n", "unknown family 'gan9000'"),
        ("objectives: [{metric: val_pixel_aurok}]\n", "key 'objectives[0].metric': unknown metric 'val_pixel_aurok'"),
        ("objectives: [test_pixel_auroc]\n", "unknown metric 'test_pixel_auroc'"),
        ("objectives: [{metric: val_pixel_auroc, mode: up}]\n", "key 'objectives[0].mode'"),
        ("sampler: grid\n", "unknown sampler 'grid'"),
        (
            "scheduler: asha\nobjectives: [val_slice_auroc, val_pixel_auroc]\n",
            "key 'scheduler': ASHA needs a single objective",
        ),
        ("num_samples: zero\n", "key 'num_samples': expected int, got 'zero'"),
        ("training: {epochs: 0}\n", "key 'training.epochs': expected an integer >= 1"),
        ("data: {image_size: 48}\n", "key 'data.image_size': expected 32, 64 or 128"),
        ("data: {image_size: [32, 48]}\n", "key 'data.image_size': expected 32, 64 or 128, got 48"),
        ("data: {image_size: [64, 64]}\n", "key 'data.image_size': expected one size or a list of distinct"),
        (
            "data: {image_size: [32, 64]}\npoints_to_evaluate: [{image_size: 128}]\n",
            "key 'points_to_evaluate[0].image_size': expected one of data.image_size [32, 64]",
        ),
        ("data: {synthetic: {mix: {glowing: 1}}}\n", "key 'data.synthetic.mix': unknown lesion appearance 'glowing'"),
        ("data: {synthetic: {mix: {dark: -1}}}\n", "key 'data.synthetic.mix': lesion appearance 'dark'"),
        ("data: {healthy: /nope/hcp, lesion: /nope/brats}\n", "data folder '/nope/hcp' does not exist"),
        ("- just\n- a list\n", "expected a mapping"),
        ("name: [unclosed\n", "not valid YAML"),
        ("training: {precision: fp16}\n", "key 'training.precision': expected one of ('auto', 'bf16', 'fp32')"),
        ("training: {gpus_per_worker: 0.5}\n", "key 'training.gpus_per_worker': a fraction of a GPU (0.5) with 2 DDP"),
        ("training: {gpus_per_worker: -1}\n", "key 'training.gpus_per_worker': expected >= 0"),
    ],
)
def test_bad_config_names_file_and_key(tmp_path: Path, text: str, expected: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert expected in str(info.value)


def test_cli_reports_config_error_and_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, yaml.safe_dump({"families": ["nope"], "results_dir": str(tmp_path / "results")}))
    assert main(["--config", str(path)]) == 2
    assert "unknown family 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()  # refused before anything was written


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="study config not found"):
        load_config(tmp_path / "absent.yaml")


def test_gpu_ddp_is_the_gpu_study_with_2_nccl_workers() -> None:
    """study/configs/gpu-ddp.yaml differs from gpu.yaml only in its name and training block: 2 whole-GPU workers."""
    import yaml

    configs = Path(__file__).parents[2] / "study" / "configs"
    one, ddp = (yaml.safe_load((configs / name).read_text()) for name in ("gpu.yaml", "gpu-ddp.yaml"))
    for raw in (one, ddp):
        raw.pop("name"), raw.pop("training")
    assert one == ddp
    single, multi = load_config(configs / "gpu.yaml").training, load_config(configs / "gpu-ddp.yaml").training
    assert single.workers_per_trial == 1 and multi.workers_per_trial == 2
    assert multi.gpus_per_worker == 1  # whole GPUs: NCCL (study/trial.py picks it whenever GPUs are asked)
    said = (configs / "gpu.yaml").read_text().split("  workers_per_trial: 1")[0].rsplit("training:", 1)[1]
    assert "default" in said and "gpu-ddp.yaml" in said  # the comment above it says why 1, and where DDP is
