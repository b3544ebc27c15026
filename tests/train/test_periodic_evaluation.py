"""`eval.every`: the trainer's periodic evaluation is plait.eval's, logged as eval_*, and agrees with
scoring the saved model afterwards."""

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from plait.eval.periodic import periodic_evaluation
from plait.train.data import iter_texts, load_documents
from plait.train.recipe import RecipeError, recipe_from_dict
from plait.train.trainer import run

from .test_training import tiny_recipe


def test_periodic_evaluation_logs_and_matches_the_saved_model(tmp_path):
    data = tiny_recipe(tmp_path / "run")
    data["eval"] = {"every": 2, "max_documents": 2, "tasks": ["copa"], "limit": 2, "batch_size": 4}
    recipe = recipe_from_dict(data)
    result = run(recipe)
    evaluations = [entry for entry in result.log_history if "eval_loss" in entry]
    assert [entry["step"] for entry in evaluations] == [2, 4]
    assert all({"eval_perplexity", "eval_copa/acc"} <= entry.keys() for entry in evaluations)
    model = AutoModelForCausalLM.from_pretrained(result.final_dir)
    tokenizer = AutoTokenizer.from_pretrained(result.final_dir)
    texts = list(iter_texts(load_documents(recipe.data, "validation"), 2))
    again = periodic_evaluation(model, tokenizer, texts, seq_len=32, tasks=["copa"], limit=2, batch_size=4)
    assert again["loss"] == pytest.approx(evaluations[-1]["eval_loss"], rel=1e-5)
    assert again["copa/acc"] == evaluations[-1]["eval_copa/acc"]


def test_the_final_model_is_evaluated_when_the_steps_are_not_a_multiple(tmp_path):
    data = tiny_recipe(tmp_path / "run")  # 4 steps
    data["eval"] = {"every": 3, "max_documents": 2}
    data["checkpoint"] = {"every": 0, "save_final": False}
    result = run(recipe_from_dict(data))
    assert [entry["step"] for entry in result.log_history if "eval_loss" in entry] == [3, 4]


def test_eval_recipe_is_validated(tmp_path):
    data = tiny_recipe(tmp_path)
    with pytest.raises(RecipeError, match=r"eval.tasks has unknown task\(s\) \['hellaswagg'\]"):
        recipe_from_dict({**data, "eval": {"tasks": ["hellaswagg"]}})
    with pytest.raises(RecipeError, match="eval.every=-1 is out of range"):
        recipe_from_dict({**data, "eval": {"every": -1}})
    files = {**data, "data": {"source": "files", "paths": [__file__]}, "eval": {"every": 5}}
    with pytest.raises(RecipeError, match="needs held-out text"):
        recipe_from_dict(files)
