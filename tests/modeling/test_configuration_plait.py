import pytest

from plait.modeling import PlaitConfig
from plait.modeling.registry import MLP_ACTIVATIONS


@pytest.mark.parametrize(
    "kwargs, field, value",
    [
        ({"residual": "dense"}, "residual", "'dense'"),
        ({"mlp_act": "tanh"}, "mlp_act", "'tanh'"),
        ({"attention": "linear"}, "attention", "'linear'"),
        ({"num_hidden_layers": 2, "layer_types": ["attention", "conv"]}, "layer_types[1]", "'conv'"),
    ],
)
def test_unknown_switch_value_names_field_value_and_choices(kwargs, field, value):
    with pytest.raises(ValueError) as error:
        PlaitConfig(**kwargs)
    message = str(error.value)
    assert f"{field}={value}" in message
    assert "valid choices" in message


def test_valid_choices_are_listed():
    with pytest.raises(ValueError) as error:
        PlaitConfig(mlp_act="tanh")
    assert str(MLP_ACTIVATIONS.choices()) in str(error.value)
    assert {"swiglu", "gelu", "relu", "relu2"} <= set(MLP_ACTIVATIONS.choices())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_attention_heads": 8, "num_key_value_heads": 3}, "num_key_value_heads=3"),
        ({"num_hidden_layers": 3, "layer_types": ["attention"] * 2}, "num_hidden_layers=3"),
        ({"hidden_size": 0}, "hidden_size=0"),
        ({"rms_norm_eps": 0.0}, "rms_norm_eps=0.0"),
        ({"attention_dropout": 1.5}, "attention_dropout=1.5"),
        ({"head_dim": 7}, "head_dim=7"),
        ({"loss_chunk_size": 0}, "loss_chunk_size=0"),
        ({"loss_chunk_size": 2.5}, "loss_chunk_size"),
        ({"z_loss": -1e-4}, "z_loss=-0.0001"),
        ({"z_loss": float("nan")}, "z_loss=nan"),
    ],
)
def test_bad_dimensions_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PlaitConfig(**kwargs)


def test_defaults_and_legacy_attention_name():
    config = PlaitConfig(num_hidden_layers=3, num_attention_heads=8, num_key_value_heads=None)
    assert config.layer_types == ["full_attention"] * 3
    assert config.num_key_value_heads == 8
    assert config.head_dim == config.hidden_size // 8
    # transformers spells the attention mixer "full_attention"; the legacy "attention" maps onto it.
    assert (
        PlaitConfig(num_hidden_layers=2, layer_types=["attention"] * 2).layer_types == ["full_attention"] * 2
    )


def test_config_round_trips_through_json(tmp_path):
    config = PlaitConfig(hidden_size=96, num_attention_heads=4, mlp_act="relu2", num_hidden_layers=2)
    config.save_pretrained(tmp_path)
    restored = PlaitConfig.from_pretrained(tmp_path)
    assert restored.to_dict() == config.to_dict()
