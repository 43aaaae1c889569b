"""points_to_evaluate are whole settings: what a point leaves out is the family's default (its paper's value),
never a random draw; a value outside its space, or a key the space never draws, is refused by name."""

from __future__ import annotations

import pytest

from study.config import CONFIG_DIR, ConfigError, StudyConfig, load_config
from study.search import completed_points
from trainables.families import searchable_family_names


def _points(families: list[str], *points: dict) -> list[dict]:
    return completed_points(StudyConfig(name="points", families=families, points_to_evaluate=list(points)))


def test_the_default_study_tries_each_paper_setting_whole():
    caae, lran, dae = completed_points(load_config(CONFIG_DIR / "default.yaml"))
    # the first paper's official code: latent 128, lr 2e-5, 20 critic steps, batch 64; its best lambda
    assert caae == {"family": "caae", "latent_dim": 128, "lr": 2e-5, "batch_size": 64, "width": 16,
                    "critic_steps": 20, "gp_weight": 10.0, "adv_weight": 1.0, "latent_weight": 1.0}  # fmt: skip
    # the second paper: GANomaly's latent 100, lr 2e-3, the GAN term, both latent terms on
    assert lran["adversarial"] == "gan" and lran["use_zrec"] and lran["use_rank"] and lran["latent_dim"] == 100
    assert (lran["w_i"], lran["w_a"], lran["w_z"], lran["w_r"], lran["lr"]) == (1.0, 5.0, 1.0, 0.05, 2e-3)
    # CPU-sized, with the finer, weaker noise measured best at 32x32 (study/configs/default.yaml)
    assert (dae["noise_res"], dae["noise_std"], dae["depth"], dae["lr"], dae["batch_size"]) == (32, 0.7, 4, 1e-3, 32)


def test_branches_follow_the_point():
    (point,) = _points(["lran"], {"use_rank": False, "use_zrec": False})
    assert "w_r" not in point and "rank_target" not in point and "w_z" not in point
    assert "family" not in point  # a one-family study's space draws no family


@pytest.mark.parametrize("family", searchable_family_names())
def test_every_family_default_is_a_point_of_its_space(family):
    (point,) = _points([family, "dae" if family != "dae" else "vae"], {"family": family})
    assert point["family"] == family and point["batch_size"] == 64


def test_a_number_outside_the_searched_range_is_kept_as_given():
    """Optuna evaluates an enqueued point as given: a published value outside the range, or an lr chosen to
    diverge (tests/integration/test_faults.py), is tried as written."""
    (point,) = _points(["lran"], {"w_a": 100.0, "rank_target": 64})
    assert point["w_a"] == 100.0 and point["rank_target"] == 64


def test_a_value_of_the_wrong_kind_or_an_unknown_choice_is_refused_by_name():
    with pytest.raises(ConfigError, match=r"points_to_evaluate\[0\].*'latent_weight' value 'one' is outside"):
        _points(["caae"], {"latent_weight": "one"})
    with pytest.raises(ConfigError, match=r"'rank_target' value 8.5 is outside its space \(integers 1..16\)"):
        _points(["lran"], {"rank_target": 8.5})
    with pytest.raises(ConfigError, match=r"'adversarial' value 'wgan' is outside its space \(one of"):
        _points(["lran"], {"adversarial": "wgan"})


def test_a_key_the_space_never_draws_is_refused():
    with pytest.raises(ConfigError, match=r"\['w_r'\] not drawn by the space of 'lran'"):
        _points(["lran"], {"use_rank": False, "w_r": 0.1})


def test_a_searched_image_size_is_drawn_and_a_point_without_one_takes_the_first_listed():
    config = StudyConfig(name="points", families=["vae"], points_to_evaluate=[{"image_size": 64}, {}])
    config.data.image_size = [32, 64]
    given, left_out = completed_points(config)
    assert given["image_size"] == 64 and left_out["image_size"] == 32  # the reference size, as the baseline's
    one_size = StudyConfig(name="points", families=["vae"], points_to_evaluate=[{"image_size": 32}])
    (point,) = completed_points(one_size)  # one size: nothing drawn, the point's own size needs no key
    assert "image_size" not in point


def test_the_space_draws_a_size_only_where_the_study_lists_several():
    import optuna

    from search_spaces import define_by_run

    drawn = set()
    for seed in range(8):
        trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed)).ask()
        define_by_run(["vae"], [32, 64])(trial)
        drawn.add(trial.params["image_size"])
    assert drawn == {32, 64}
    trial = optuna.create_study().ask()
    define_by_run(["vae"], [32])(trial)
    assert "image_size" not in trial.params
