"""Recipes: shipped ones validate; unknown keys, bad values and missing data paths fail with clear errors."""

import pytest

from plait.train.cli import main
from plait.train.recipe import RECIPES_DIR, RecipeError, load_recipe, recipe_from_dict


@pytest.mark.parametrize("name", ["tiny", "small", "1b"])
def test_shipped_recipes_validate(name):
    recipe = load_recipe(name)
    assert recipe.model.arch == "plait-lm"
    assert (RECIPES_DIR / f"{name}.yaml").exists()


def test_overrides_are_parsed_as_yaml_and_typed():
    recipe = load_recipe(
        "tiny",
        [
            "optim.lr=2e-3",
            "train.max_steps=7",
            "data.document_masking=false",
            "checkpoint.keep_last=null",
            "model.config.num_hidden_layers=3",
        ],
    )
    assert recipe.optim.lr == 2e-3 and isinstance(recipe.optim.lr, float)
    assert recipe.train.max_steps == 7
    assert recipe.data.document_masking is False
    assert recipe.checkpoint.keep_last is None
    assert recipe.model.config["num_hidden_layers"] == 3


@pytest.mark.parametrize(
    "data, fragments",
    [
        ({"trian": {}}, ["unknown key trian", "valid keys: model, data, optim, train"]),
        ({"optim": {"learning_rate": 1e-3}}, ["unknown key optim.learning_rate", "valid keys: lr,"]),
        ({"train": {"precision": "fp8"}}, ["train.precision='fp8'", "'fp32', 'bf16', 'fp16'"]),
        (
            {"optim": {"schedule": "cosin"}},
            ["optim.schedule='cosin'", "'cosine', 'wsd', 'linear', 'constant'"],
        ),
        ({"train": {"max_steps": "ten"}}, ["train.max_steps='ten'", "expected an integer"]),
        ({"train": {"max_steps": 2.5}}, ["train.max_steps=2.5", "expected an integer"]),
        ({"optim": {"lr": -1.0}}, ["optim.lr=-1.0", "positive"]),
        ({"optim": {"beta2": 1.0}}, ["optim.beta2=1.0", "[0, 1)"]),
        ({"data": {"paths": "a.txt"}}, ["data.paths='a.txt'", "a list of a string"]),
        ({"data": {"source": "files"}}, ["data.paths is empty", "data.source='files'"]),
        (
            {"optim": {"warmup_steps": 100}, "train": {"max_steps": 10}},
            ["optim.warmup_steps=100", "max_steps=10"],
        ),
    ],
)
def test_bad_recipes_name_key_value_and_choices(data, fragments):
    with pytest.raises(RecipeError) as info:
        recipe_from_dict(data)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_missing_data_path_is_a_clear_cli_error(tmp_path, capsys):
    missing = tmp_path / "nope.txt"
    code = main(["tiny", "--set", "data.source=files", "--set", f"data.paths=[{missing}]"])
    assert code == 2
    err = capsys.readouterr().err
    assert f"data.paths[0]={str(missing)!r} does not exist" in err


def test_bad_override_and_unknown_recipe_are_cli_errors(capsys):
    assert main(["tiny", "--set", "train.precision=fp8"]) == 2
    assert "train.precision='fp8'" in capsys.readouterr().err
    assert main(["tiny", "--set", "train.max_steps"]) == 2
    assert "must look like section.key=value" in capsys.readouterr().err
    assert main(["no-such-recipe"]) == 2
    assert (
        "shipped: 1b, finetune-lm-kappatune, finetune-lm-nera, finetune-minilm-sst2, finetune-vit-digits"
        in capsys.readouterr().err
    )


def test_print_shows_the_validated_recipe(capsys):
    assert main(["tiny", "--set", "train.seed=5", "--print"]) == 0
    assert "seed: 5" in capsys.readouterr().out
