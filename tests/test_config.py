import pytest

from medsr.config import Config, config_from_dict, config_to_dict, load_config, save_config
from medsr.errors import MedsrError


def test_yaml_maps_onto_dataclasses_and_round_trips(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("model:\n  neighbours: 1\n  hidden: 16\ntrain:\n  steps: 10\n")
    config = load_config(path, ["loss.perceptual_weight=0", "data.profiles=[gaussian]"])
    assert config.model.neighbours == 1 and config.model.hidden == 16
    assert config.train.steps == 10 and config.loss.perceptual_weight == 0.0
    assert config.data.profiles == ("gaussian",)
    save_config(config, tmp_path / "resolved.yaml")
    assert load_config(tmp_path / "resolved.yaml") == config
    assert config_from_dict(config_to_dict(Config())) == Config()


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"model": {"neighbors": 3}}, "unknown config key.*model.neighbors"),
        ({"optimiser": {}}, "unknown config key.*optimiser"),
        ({"data": {"profiles": ["triangle"]}}, "not one of"),
        ({"data": {"validation_fraction": 1.5}}, "validation_fraction"),
        ({"model": {"neighbours": 2}}, "odd"),
        ({"train": {"steps": 0}}, "train.steps"),
        ({"train": {"steps": "many"}}, "cannot read"),
        ({"train": {"mixed_precision": "yes"}}, "true/false"),
        # a subset of the thin positions is not an image for VGG or the discriminator
        ({"data": {"query_positions": 16}}, "query_positions needs the pixel loss"),
        (
            {"data": {"query_positions": 16}, "loss": {"perceptual_weight": 0.0}},
            "query_positions needs the pixel loss",
        ),
    ],
)
def test_bad_config_values_are_errors(values, message):
    with pytest.raises(MedsrError, match=message):
        config_from_dict(values)


def test_a_query_budget_with_the_pixel_loss_alone_is_accepted():
    loss = {"perceptual_weight": 0.0, "adversarial_weight": 0.0}
    config = config_from_dict({"data": {"query_positions": 16}, "loss": loss})
    assert config.data.query_positions == 16
    assert config_from_dict({}).data.query_positions == 0  # every thin position by default


def test_bad_override_syntax():
    with pytest.raises(MedsrError, match="section.field=value"):
        load_config(None, ["steps=3"])


def test_the_profiles_config_accepts_are_the_acquisition_models():
    from typing import get_args, get_type_hints

    from medsr.config import DataConfig
    from medsr.degrade import SLICE_PROFILES

    (literal,) = get_args(get_type_hints(DataConfig)["profiles"])[:1]
    assert get_args(literal) == SLICE_PROFILES
    DataConfig(profiles=SLICE_PROFILES)  # every one is accepted
