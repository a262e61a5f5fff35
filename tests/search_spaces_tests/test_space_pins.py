"""``--set KEY=VALUE`` inside a space: a pinned name leaves the search (no suggest reaches
Optuna) and is in every config, coerced to the type the space uses for it."""

import optuna
import pytest

from search_spaces import ArmDefineByRun, PinError, SpaceContext, get_space

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _configs(space: str, arm: str, pins: dict[str, str], n: int = 8) -> list[tuple[dict, dict]]:
    """(config, the params Optuna sampled) of ``n`` trials of one arm."""
    define = ArmDefineByRun(get_space(space), arm, SpaceContext(pins=pins), {"seed": 0})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    trials = [study.ask() for _ in range(n)]
    return [(define(trial), trial.params) for trial in trials]


def test_a_pinned_number_outside_the_range_is_in_every_config_and_never_sampled():
    # The seed reports used lr 1e-4, below the focal space's range [1e-3, 0.3].
    for config, params in _configs("focal", "focal", {"lr": "1e-4"}):
        assert config["lr"] == 1e-4 and isinstance(config["lr"], float)
        assert "lr" not in params
        assert {"momentum", "batch_size", "freeze", "gamma"} <= set(params)  # still searched


def test_pins_take_the_type_of_the_suggest_or_constant_they_replace():
    pins = {"batch_size": "64", "gamma": "2", "optimizer": "adam", "momentum": "0.9"}
    for config, params in _configs("focal", "focal", pins):
        assert config["batch_size"] == 64 and isinstance(config["batch_size"], int)
        assert config["gamma"] == 2.0 and isinstance(config["gamma"], float)
        assert config["optimizer"] == "adam"  # a constant the arm returns
        assert not {"batch_size", "gamma", "momentum"} & set(params)
    config, _ = _configs("backbones", "resnet18-aug", {"augment": "false"})[0]
    assert config["augment"] is False


def test_a_pin_under_one_arm_only_leaves_the_other_alone():
    for config, _ in _configs("focal", "ce", {"gamma": "1.5"}):
        assert "gamma" not in config
    assert all(c["gamma"] == 1.5 for c, _ in _configs("focal", "focal", {"gamma": "1.5"}))


def test_a_pinned_choice_takes_its_branch_of_a_conditional_space():
    # The freeze space suggests momentum and an SGD range for lr only when it draws SGD.
    for config, params in _configs("freeze", "none", {"optimizer": "adam"}):
        assert config["optimizer"] == "adam" and "momentum" not in config
        assert 1e-4 <= params["lr"] <= 1e-2


@pytest.mark.parametrize(
    ("pins", "message"),
    [
        ({"lr": "fast"}, "lr=fast: lr takes a number"),
        ({"batch_size": "1.5"}, "batch_size=1.5: batch_size takes a whole number"),
        ({"lr": "nan"}, "lr=nan: lr takes a number"),
    ],
)
def test_a_value_of_the_wrong_type_is_refused(pins, message):
    with pytest.raises(PinError, match=message):
        _configs("focal", "focal", pins)


def test_the_survey_records_ranges_pins_and_constants():
    define = ArmDefineByRun(get_space("focal"), "focal", SpaceContext(pins={"lr": "1e-4"}), {})
    survey = define.survey()
    assert survey.pinned == {"lr": 1e-4}
    (lr,) = survey.suggests["lr"]
    assert (lr.kind, lr.low, lr.high, lr.contains(1e-4)) == ("float", 1e-3, 0.3, False)
    assert survey.constants == {"loss": {"focal"}, "optimizer": {"sgd"}}
    assert survey.keys == {"lr", "momentum", "batch_size", "freeze", "gamma", "loss", "optimizer"}


def test_rays_optuna_search_puts_the_pins_into_the_trial_config():
    # OptunaSearch merges the values it saw suggested with the dict the function returns:
    # a pinned name is never suggested, so only the returned dict carries it.
    from ray.tune.search.optuna import OptunaSearch

    define = ArmDefineByRun(get_space("focal"), "focal", SpaceContext(pins={"lr": "1e-4"}), {})
    storage = optuna.storages.InMemoryStorage()
    search = OptunaSearch(
        space=define, metric="val", mode="max", seed=0, study_name="s", storage=storage
    )
    configs = [search.suggest(f"t{i}") for i in range(4)]
    assert all(c["lr"] == 1e-4 and 0.5 <= c["gamma"] <= 3.0 for c in configs)
    trials = optuna.load_study(study_name="s", storage=storage).trials
    assert len(trials) == 4 and all("lr" not in t.params for t in trials)
