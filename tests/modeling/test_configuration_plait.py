import json

import pytest
from transformers.testing_utils import set_config_for_less_flaky_test

from plait.modeling import PlaitConfig, PlaitViTConfig
from plait.modeling.registry import MLP_ACTIVATIONS


@pytest.mark.parametrize(
    "kwargs, field, value",
    [
        ({"residual": "dense"}, "residual", "'dense'"),
        ({"mlp_act": "tanh"}, "mlp_act", "'tanh'"),
        ({"attention": "linear"}, "attention", "'linear'"),
        ({"num_hidden_layers": 2, "layer_types": ["attention", "conv"]}, "layer_types[1]", "'conv'"),
        # an alias transformers renames ("mamba" -> "linear_attention") is reported as the user wrote it
        ({"num_hidden_layers": 2, "layer_types": ["attention", "mamba"]}, "layer_types[1]", "'mamba'"),
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


VIT = dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, image_size=8, patch_size=4)


@pytest.mark.parametrize("config_class, kwargs", [(PlaitConfig, {}), (PlaitViTConfig, VIT)])
def test_fields_transformers_sets_are_accepted_and_round_trip(config_class, kwargs, tmp_path):
    config = config_class(num_hidden_layers=1, tie_word_embeddings=False, **kwargs)
    set_config_for_less_flaky_test(config)  # what transformers' SDPA-vs-eager tests do to every config
    config.save_pretrained(tmp_path)
    restored = config_class.from_pretrained(tmp_path)
    assert restored.batch_norm_eps == restored.layer_norm_eps == restored.rms_norm_eps == 1.0
    assert restored.tie_word_embeddings is False
    assert restored.to_dict() == config.to_dict()


@pytest.mark.parametrize("config_class, kwargs", [(PlaitConfig, {}), (PlaitViTConfig, VIT)])
@pytest.mark.parametrize(
    "key, message",
    [
        ("residul", "no field 'residul'; did you mean 'residual'?"),
        ("rms_norm_epsilon", "no field 'rms_norm_epsilon'; did you mean 'rms_norm_eps'?"),
        ("num_layers", "no field 'num_layers'; did you mean 'num_hidden_layers'?"),
        ("n_layer", "has no field 'n_layer'"),
    ],
)
def test_typos_of_plait_fields_are_refused_as_keyword_and_in_config_json(
    config_class, kwargs, key, message, tmp_path
):
    with pytest.raises(ValueError, match=message):
        config_class(**kwargs, **{key: 2})
    config_class(**kwargs).save_pretrained(tmp_path)  # a hand-edited config.json
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), key: 2}))
    with pytest.raises(ValueError, match=message):
        config_class.from_pretrained(tmp_path)
