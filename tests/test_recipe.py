import dataclasses

import pytest

from vehicle_ray.errors import InputError
from vehicle_ray.recipe import BUNDLED, Recipe, Stage, load_recipe, recipe_from_dict


def test_seed_recipe_config_matches_seed_notebook():
    seed = load_recipe("emergency_vehicles")
    assert seed == Recipe()
    assert (seed.arch, seed.size, seed.bs, seed.valid_pct, seed.pretrained) == ("resnet50", 299, 64, 0.2, True)
    assert (seed.do_flip, seed.flip_vert, seed.max_rotate, seed.max_lighting, seed.max_warp) == (True, True, 50, 0.1, 0)
    assert [(s.epochs, s.frozen) for s in seed.stages] == [(5, True), (8, False), (10, False)]
    assert seed.stages[2].lr_max() == slice(1e-5, 1e-4)
    assert (seed.tta_n, seed.tta_beta) == (4, 0.25)


def test_toml_round_trip(tmp_path):
    recipe = load_recipe("tiny_cpu").with_overrides(arch="resnet34", lr=0.02, max_rotate=0.0)
    path = tmp_path / "r.toml"
    path.write_text(recipe.to_toml())
    assert load_recipe(path) == recipe
    assert load_recipe(str(BUNDLED / "emergency_vehicles.toml")).to_toml() == Recipe().to_toml()


def test_epochs_flag_builds_frozen_then_unfrozen_stage():
    r = Recipe().with_overrides(epochs=3)
    assert r.stages == (Stage(epochs=1, frozen=True), Stage(epochs=3))
    r = Recipe().with_overrides(epochs=4, freeze_epochs=2, lr=0.01)
    assert r.stages == (Stage(epochs=2, lr=0.01, frozen=True), Stage(epochs=4, lr=0.01))


def test_from_scratch_has_no_frozen_stage():
    r = Recipe().with_overrides(pretrained=False)
    assert all(not s.frozen for s in r.effective_stages())
    assert len(r.effective_stages()) == 2


def test_lr_override_keeps_discriminative_ratio():
    r = Recipe().with_overrides(lr=2e-4)
    assert r.stages[2].lr_max() == slice(pytest.approx(2e-5), 2e-4)
    assert r.stages[0].lr == 2e-4


def test_flag_overrides_any_field_and_none_means_unset():
    r = Recipe().with_overrides(size=64, do_flip=False, bs=None)
    assert (r.size, r.do_flip, r.bs) == (64, False, 64)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"size": 4}, "size must be"),
        ({"stages": ({"epochs": 0},)}, "stage 1 needs"),
        ({"metrics": ["accuracy", "auc"]}, "unknown metrics"),
        ({"colour": "red"}, "unknown recipe keys"),
        ({"stages": ({"epochs": 2, "lr": 1e-4, "lr_min": 1e-3},)}, "stage 1 needs"),
    ],
)
def test_invalid_recipes_are_input_errors(change, message):
    d = {**Recipe().to_dict(), **change}
    with pytest.raises(InputError, match=message):
        recipe_from_dict(d)


def test_bad_toml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("arch = ")
    with pytest.raises(InputError, match="invalid TOML"):
        load_recipe(bad)
    with pytest.raises(InputError, match="recipe file not found"):
        load_recipe(tmp_path / "none.toml")


def test_recipe_is_immutable():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Recipe().size = 5


def test_epochs_with_no_frozen_epochs_is_one_unfrozen_stage():
    assert Recipe().with_overrides(epochs=3, freeze_epochs=0).stages == (Stage(epochs=3),)


def test_freeze_epochs_alone_keeps_the_recipes_unfrozen_epochs():
    """--freeze-epochs 2 without --epochs: the seed's 8 + 10 unfrozen epochs become one 18-epoch stage."""
    assert Recipe().with_overrides(freeze_epochs=2).stages == (Stage(epochs=2, frozen=True), Stage(epochs=18))


def test_epochs_from_scratch_runs_no_frozen_epoch():
    r = Recipe().with_overrides(epochs=3, pretrained=False)
    assert r.effective_stages() == (Stage(epochs=3),)


@pytest.mark.parametrize("overrides", [{"epochs": 0}, {"epochs": -2}, {"epochs": 3, "freeze_epochs": -1}])
def test_non_positive_epoch_flags_are_input_errors(overrides):
    with pytest.raises(InputError, match="stage"):
        Recipe().with_overrides(**overrides)


@pytest.mark.parametrize(
    "name",
    [
        "accuracy",
        "error_rate",
        "f1_macro",
    ],
)
def test_each_metric_in_the_table_is_reported_under_its_recipe_name(name):
    """METRICS (recipe.py) is the one table: what learner.recipe_metrics builds for a name must be a fastai
    metric that the Recorder reports under that same name (the metrics.csv / model.json key)."""
    from fastai.learner import mk_metric

    from vehicle_ray.recipe import METRICS
    from vehicle_ray.train.learner import recipe_metrics

    assert name in METRICS
    (metric,) = recipe_metrics(Recipe(metrics=(name,)))
    assert mk_metric(metric).name == name


def test_recipe_metrics_builds_one_metric_per_name_in_order():
    from vehicle_ray.recipe import METRICS
    from vehicle_ray.train.learner import recipe_metrics

    assert len(recipe_metrics(Recipe(metrics=tuple(METRICS)))) == len(METRICS)
